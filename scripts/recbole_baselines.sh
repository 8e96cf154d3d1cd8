#!/usr/bin/env bash
# RecBole's SASRec and GRU4Rec on the pipeline's split, scored on our frozen test rows (docs/evaluation.md, "RecBole").
#
#   bash scripts/recbole_baselines.sh --data_dir ../shared/data/ml-1m [--out runs/recbole] [--models SASRec GRU4Rec]
#                                     [--train interactions|split] [--epochs 10] [--batch_size 512] [--lr 1e-3]
#                                     [--threads 1] [--seed 0]   (--seed: the split's and RecBole's seed)
#
# --train interactions (default): every (up to 5 previous items, next item) pair of the interactions the classical
# baselines learn from (484k rows on ML-1M); --train split: only the split's train rows (export_recbole's train.inter).
#
# Optional and not part of CI. RecBole 1.2.1 needs numpy<2 (np.bool8) and pkg_resources (setuptools<81), so it lives
# in its own virtual environment, .venv-recbole (git-ignored; HANOREC_RECBOLE_VENV names another), built here on first
# use. torch is installed by name (HANOREC_TORCH_VERSION, default 2.13.0) through pip's own configuration.
#
# Steps: (1) the project's .venv exports the split (hanorec_trl.data.export_recbole) and the frozen test rows;
# (2) .venv-recbole trains each model with RecBole and scores the 10 stored candidates and the AUC item of every test
# row (scripts/recbole_run.py); (3) the project's .venv turns those scores into metrics with the same code as every
# other baseline (evaluate_baseline): <out>/<model>-<train>/metrics.json =
# {"metrics": ..., "per_row": {"ranking": {"ranks", "scores"}, "auc": ...}}.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT_PY=${HANOREC_PYTHON:-.venv/bin/python}
VENV=${HANOREC_RECBOLE_VENV:-.venv-recbole}
[ -x "$PROJECT_PY" ] || { echo "recbole_baselines.sh: no $PROJECT_PY (bash scripts/install.sh first)" >&2; exit 2; }

if ! "$VENV/bin/python" -c "from recbole.quick_start import run_recbole" >/dev/null 2>&1; then
  echo "recbole_baselines.sh: building $VENV (RecBole 1.2.1, numpy<2, torch ${HANOREC_TORCH_VERSION:-2.13.0})"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==${HANOREC_TORCH_VERSION:-2.13.0}"
  "$VENV/bin/python" -m pip install -q "recbole==1.2.1" "numpy<2" "pandas<2.3" "scipy<1.14" "setuptools<81"
  "$VENV/bin/python" -c "from recbole.quick_start import run_recbole; import recbole, numpy, torch; \
print(f'recbole_baselines.sh: recbole {recbole.__version__}, numpy {numpy.__version__}, torch {torch.__version__}')"
fi

DATA_DIR="" OUT="runs/recbole" MODELS=(SASRec GRU4Rec) TRAIN=interactions PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data_dir) DATA_DIR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --models) shift; MODELS=(); while [ $# -gt 0 ] && [[ $1 != --* ]]; do MODELS+=("$1"); shift; done ;;
    --seed) PASS+=(--seed "$2"); SPLIT_SEED=$2; shift 2 ;;
    --train) TRAIN=$2; shift 2 ;;
    --epochs|--batch_size|--lr|--threads) PASS+=("$1" "$2"); shift 2 ;;
    *) echo "recbole_baselines.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$DATA_DIR" ] || { echo "recbole_baselines.sh: --data_dir is required" >&2; exit 2; }

"$PROJECT_PY" scripts/recbole_run.py export --data_dir "$DATA_DIR" --out "$OUT" --seed "${SPLIT_SEED:-0}"
for model in "${MODELS[@]}"; do
  "$VENV/bin/python" scripts/recbole_run.py train --out "$OUT" --model "$model" --train "$TRAIN" "${PASS[@]}"
  "$PROJECT_PY" scripts/recbole_run.py metrics --out "$OUT" --model "$model" --train "$TRAIN"
done
