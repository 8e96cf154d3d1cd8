"""RecBole's SASRec / GRU4Rec on the pipeline's split, scored on our frozen test rows (driven by
``scripts/recbole_baselines.sh``; see ``docs/evaluation.md``, "RecBole").

Three steps, in two Python environments (RecBole 1.2.1 needs numpy<2, the project numpy 2):

* ``export`` (project ``.venv``): the split (``build_split``, seed ``--seed``) frozen to ``<out>/split`` (JSONL) and
  exported as RecBole atomic files (``export_recbole``) to ``<out>/data-split/hanorec``; a second copy,
  ``<out>/data-interactions/hanorec``, whose ``train.inter`` instead holds every (previous items, next item) pair of
  ``TrainingInteractions.from_split`` (what the classical baselines and ``hanorec_trl.sasrec`` learn from).
* ``train`` (``.venv-recbole``): ``run_recbole`` trains the model (``--train split|interactions``), validates on the
  split's validation rows, saves the best checkpoint and reports RecBole's own full-ranking test result; the best
  checkpoint is then reloaded and every test row's 10 stored candidates and AUC item are scored with
  ``full_sort_predict`` -> ``<out>/<model>-<train>/scores.json``.
* ``metrics`` (project ``.venv``): those scores through ``evaluate_baseline`` (the metric code of every baseline) ->
  ``<out>/<model>-<train>/metrics.json`` = ``{"metrics": ..., "per_row": {"ranking": {"ranks", "scores"}, "auc"}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

DATASET = "hanorec"
REPO = Path(__file__).resolve().parents[1]


def export(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from hanorec_trl.baselines import TrainingInteractions
    from hanorec_trl.data import ProtocolConfig, build_split, export_recbole, freeze_split, load_movielens_1m

    out = Path(args.out)
    data = load_movielens_1m(args.data_dir, images=False)
    split = build_split(data, ProtocolConfig(seed=args.seed))
    freeze_split(split, out / "split", overwrite=True)
    folder = export_recbole(split, data, out / "data-split" / DATASET, dataset_name=DATASET, overwrite=True)
    full = out / "data-interactions" / DATASET
    if full.exists():
        shutil.rmtree(full)
    shutil.copytree(folder, full)
    history = split.config.sequence_length - 1
    training = TrainingInteractions.from_split(data, split)
    token = lambda item: " ".join(item.split())  # noqa: E731 -- export_recbole's token rule
    lines = ["user_id:token\titem_id_list:token_seq\titem_id:token\n"]
    for user, seq in training.sequences.items():
        for t in range(1, len(seq)):
            lines.append(f"{token(user)}\t{' '.join(token(i) for i in seq[max(0, t - history): t])}\t{token(seq[t])}\n")
    (full / f"{DATASET}.train.inter").write_text("".join(lines), encoding="utf-8")
    print(f"recbole_run export: {split.counts()} rows; {len(lines) - 1} training pairs from the interactions -> {out}")


def train(args: argparse.Namespace) -> None:
    # RecBole's checkpoint holds its Config object; torch >= 2.6 loads only weights by default. The checkpoint is the
    # one this run just wrote.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas 2.2 on RecBole 1.2.1's inplace fillna
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.data.interaction import Interaction
    from recbole.quick_start import run_recbole
    from recbole.utils import get_model, init_seed

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    folder = out / f"{args.model}-{args.train}"
    checkpoints = folder / "checkpoints"
    if checkpoints.exists():
        shutil.rmtree(checkpoints)
    folder.mkdir(parents=True, exist_ok=True)
    data_path = out / f"data-{args.train}"
    settings = dict(
        data_path=str(data_path), checkpoint_dir=str(checkpoints), use_gpu=False, seed=args.seed, reproducibility=True,
        epochs=args.epochs, train_batch_size=args.batch_size, eval_batch_size=512, learning_rate=args.lr,
        loss_type="CE", train_neg_sample_args=None, stopping_step=args.stopping_step, metrics=["Recall", "NDCG"],
        topk=[10], valid_metric="NDCG@10", show_progress=False, worker=0,
    )
    os.chdir(folder)  # RecBole writes log/ and log_tensorboard/ into the working directory
    started = time.perf_counter()
    result = run_recbole(model=args.model, dataset=DATASET,
                         config_file_list=[str(data_path / DATASET / f"{DATASET}.yaml")], config_dict=settings)
    fit_seconds = time.perf_counter() - started
    saved = sorted(checkpoints.glob("*.pth"))
    if not saved:
        raise SystemExit(f"recbole_run train: run_recbole wrote no checkpoint into {checkpoints}")
    checkpoint = torch.load(saved[-1], map_location="cpu", weights_only=False)

    config = Config(model=args.model, dataset=DATASET,
                    config_file_list=[str(data_path / DATASET / f"{DATASET}.yaml")], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    model = get_model(config["model"])(config, dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()

    rows = [json.loads(line) for line in (out / "split" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    length = config["MAX_ITEM_LIST_LENGTH"]
    iid = dataset.iid_field

    def ids(items):
        return [int(i) for i in dataset.token2id(iid, [" ".join(t.split()) for t in items])]

    histories = [ids(row["history"])[-length:] for row in rows]
    seq = np.zeros((len(rows), length), dtype=np.int64)
    for r, h in enumerate(histories):
        seq[r, : len(h)] = h
    interaction = Interaction({config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]: torch.from_numpy(seq),
                               config["ITEM_LIST_LENGTH_FIELD"]: torch.tensor([len(h) for h in histories])})
    with torch.no_grad():
        scores = model.full_sort_predict(interaction).numpy()
    scored = [{"sequence_id": row["sequence_id"], "history": row["history"],
               "candidates": row["candidates"], "candidate_scores": scores[r, ids(row["candidates"])].tolist(),
               "auc_item": row["auc_item"], "auc_item_score": float(scores[r, ids([row["auc_item"]])[0]])}
              for r, row in enumerate(rows)]
    report = {"model": args.model, "train": args.train, "settings": settings, "fit_seconds": fit_seconds,
              "checkpoint": str(saved[-1]), "recbole_result": result, "rows": scored}
    (folder / "scores.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"recbole_run train: {args.model} ({args.train}) {fit_seconds:.0f} s; RecBole's own test result "
          f"{dict(result['test_result'])}; scores -> {folder / 'scores.json'}")


class _StoredScores:
    """The scores RecBole gave, looked up by (history, item): a baseline for evaluate_baseline."""

    def __init__(self, rows: list[dict]) -> None:
        self.table = {}
        for row in rows:
            history = tuple(row["history"])
            self.table.update({(history, c): s for c, s in zip(row["candidates"], row["candidate_scores"])})
            self.table[(history, row["auc_item"])] = row["auc_item_score"]

    def score(self, history, candidates):
        import numpy as np

        return np.asarray([self.table[(tuple(history), c)] for c in candidates], dtype=np.float64)


def metrics(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from hanorec_trl.baselines import evaluate_baseline
    from hanorec_trl.data import load_split

    out = Path(args.out)
    folder = out / f"{args.model}-{args.train}"
    report = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
    examples = load_split(out / "split").test
    if [ex.sequence_id for ex in examples] != [row["sequence_id"] for row in report["rows"]]:
        raise SystemExit(f"recbole_run metrics: {folder / 'scores.json'} does not score the rows of {out / 'split'}")
    result = evaluate_baseline(_StoredScores(report["rows"]), examples)
    result.update(baseline=f"recbole-{args.model}", train=args.train, fit_seconds=report["fit_seconds"],
                  recbole_result=report["recbole_result"])
    (folder / "metrics.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    m = result["metrics"]
    print(f"| RecBole {args.model} (train: {args.train}) | {m['hr@1']:.3f} | {m['hr@3']:.3f} | {m['ndcg@3']:.3f} | "
          f"{m['ndcg@10']:.3f} | {m.get('auc', float('nan')):.3f} | fit {report['fit_seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("export")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0, help="the split's seed")
    parsers = {}
    for name in ("train", "metrics"):
        p = parsers[name] = steps.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--model", required=True, help="a RecBole sequential model: SASRec, GRU4Rec, ...")
        p.add_argument("--train", choices=["split", "interactions"], default="interactions",
                       help="training rows: the split's train rows, or every pair of the training interactions")
    p = parsers["train"]
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--stopping_step", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="RecBole's seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    {"export": export, "train": train, "metrics": metrics}[args.step](args)


if __name__ == "__main__":
    main()
