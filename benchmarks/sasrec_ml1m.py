"""The compact SASRec baseline (hanorec_trl.sasrec) on real ML-1M: fit time and HR@K / NDCG@K / AUC on the
pipeline's frozen validation and test rows (the split with seed 0), beside popularity and item-kNN on the same rows.

    python benchmarks/sasrec_ml1m.py --data_dir ../shared/data/ml-1m

Writes ``benchmarks/results/sasrec_ml1m.json`` (metrics and per-row ranks) and prints a Markdown table. Any
``SASRec`` keyword can be changed from the command line, e.g. ``--epochs 5 --num_negatives 0`` (0 = full softmax).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hanorec_trl.baselines import LABELS, TrainingInteractions, evaluate_baseline, fit_baseline  # noqa: E402
from hanorec_trl.data import ProtocolConfig, build_split, load_movielens_1m  # noqa: E402
from hanorec_trl.sasrec import SASRec  # noqa: E402

COLUMNS = ("hr@1", "hr@3", "ndcg@3", "ndcg@10", "auc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seed", type=int, default=0, help="split seed (the pipeline's default is 0)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sasrec_ml1m.json"))
    for name, value in (("epochs", 10), ("batch_size", 32), ("lr", 2e-3), ("hidden", 64), ("max_len", 50),
                        ("dropout", 0.2), ("num_negatives", 256), ("num_threads", 1), ("model_seed", 0)):
        parser.add_argument(f"--{name}", type=type(value), default=value)
    args = parser.parse_args()

    data = load_movielens_1m(args.data_dir, images=False)
    split = build_split(data, ProtocolConfig(seed=args.seed))
    training = TrainingInteractions.from_split(data, split)
    print(f"{len(training.sequences)} users, {training.num_interactions} training interactions, "
          f"{len(training.item_ids)} items; rows {split.counts()}")
    kwargs = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, hidden=args.hidden,
                  max_len=args.max_len, dropout=args.dropout, num_negatives=args.num_negatives or None,
                  num_threads=args.num_threads, seed=args.model_seed)
    model = SASRec(**kwargs).fit(training)
    print(f"SASRec fit: {model.fit_seconds:.1f} s; loss per epoch {[round(v, 3) for v in model.loss_history]}")
    results: dict = {"sasrec": {"kwargs": kwargs, "fit_seconds": model.fit_seconds,
                                "loss_history": model.loss_history}}
    rows = []
    for part in ("validation", "test"):
        examples = getattr(split, part)
        started = time.perf_counter()
        result = evaluate_baseline(model, examples)
        results["sasrec"][part] = {"metrics": result["metrics"], "score_seconds": time.perf_counter() - started,
                                   "ranks": result["per_row"]["ranking"]["ranks"]}
        rows.append((f"{LABELS['sasrec']} ({part}, {len(examples)} rows)", result["metrics"]))
        for name in ("popularity", "item_knn"):
            metrics = evaluate_baseline(fit_baseline(name, training), examples)["metrics"]
            results.setdefault(name, {})[part] = {"metrics": metrics}
            rows.append((f"{LABELS[name]} ({part})", metrics))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print("\n| model | " + " | ".join(c.upper() for c in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for label, metrics in rows:
        print(f"| {label} | " + " | ".join(f"{metrics[c]:.3f}" for c in COLUMNS) + " |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
