"""The data gap: every classical baseline fitted on the full training interactions and on the LLM's training windows
only ("data-matched"), scored on the same test rows and candidates as the LLM, on real MovieLens-1M (users 1-2999).

Each cell carries a 95% user-level bootstrap interval; each "full - data-matched" difference is paired over the
same rows, with the rows a paired comparison needs for 80% power (two-sided, alpha 0.05) at that difference and at
0.01 (:func:`hanorec_trl.evaluation.metrics.rows_for_power`).

    .venv/bin/python benchmarks/baselines_data_gap.py --data-dir ../shared/data/ml-1m \\
        --split-by leave_last_out --windows-per-user 4

Writes ``benchmarks/results/baselines_data_gap_<split-by>.json`` (metrics, per-row ranks, fit seconds) and prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ml1m_split import add_split_arguments, load_data_and_split  # noqa: E402

METRICS = ("hr@1", "ndcg@10")


def _per_row(ranks: np.ndarray, metric: str) -> np.ndarray:
    from hanorec_trl.evaluation.metrics import ndcg_gains

    k = int(metric.split("@")[1])
    return (ranks <= k).astype(np.float64) if metric.startswith("hr@") else ndcg_gains(ranks, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, split_by="leave_last_out", windows_per_user=4)
    parser.add_argument("--rows", type=int, default=None, help="score the first N test rows (default: all)")
    parser.add_argument("--baselines", default="popularity,markov,item_knn,sasrec")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from hanorec_trl.baselines import TrainingInteractions, baseline_label, evaluate_baseline, fit_baseline
    from hanorec_trl.evaluation.metrics import mean_interval, paired_bootstrap, rows_for_power

    data, split = load_data_and_split(args)
    test = split.test[: args.rows] if args.rows else split.test
    users = [ex.user for ex in test]
    trainings = [TrainingInteractions.from_split(data, split), TrainingInteractions.from_examples(split.train,
                                                                                                 data.item_ids)]
    print(f"# split {split.counts()}, {len(test)} test rows; " + "; ".join(
        f"{t.source}: {t.summary()['sequences']:,} sequences, {t.num_interactions:,} interactions" for t in trainings),
        flush=True)

    results: dict = {"command": "python " + " ".join(["benchmarks/baselines_data_gap.py"] + sys.argv[1:]),
                     "split": split.counts(), "test_rows": len(test),
                     "training": {t.source: t.summary() for t in trainings}, "baselines": {}}
    table = []
    for name in args.baselines.split(","):
        per_training = {}
        for training in trainings:
            started = time.perf_counter()
            model = fit_baseline(name, training, progress=False) if name == "sasrec" else fit_baseline(name, training)
            fit_seconds = time.perf_counter() - started
            result = evaluate_baseline(model, test)
            ranks = np.asarray(result["per_row"]["ranking"]["ranks"], dtype=np.float64)
            cells = {m: (result["metrics"][m], *mean_interval(_per_row(ranks, m), users=users)) for m in METRICS}
            per_training[training.source] = ranks
            results["baselines"].setdefault(name, {})[training.source] = {
                "metrics": result["metrics"], "intervals": {m: cells[m][1:] for m in METRICS},
                "fit_seconds": fit_seconds, "ranks": ranks.astype(int).tolist()}
            table.append((baseline_label(name, training), cells, fit_seconds))
            print(f"{baseline_label(name, training)}: fit {fit_seconds:.1f} s", flush=True)
        full, matched = (per_training[t.source] for t in trainings)
        gap = {}
        for m in METRICS:
            a, b = _per_row(full, m), _per_row(matched, m)
            paired = paired_bootstrap(a, b, users=users)
            gap[m] = {**paired, "rows_for_80pct_power": rows_for_power(a - b, paired["difference"])
                      if paired["difference"] else None,
                      "rows_for_80pct_power_at_0.01": rows_for_power(a - b, 0.01), "sd": float(np.std(a - b, ddof=1))}
        results["baselines"][name]["full_minus_data_matched"] = gap

    print(f"\n{len(test)} test rows ({args.split_by}); 95% user-level bootstrap intervals\n")
    print("| baseline (training data) | " + " | ".join(m.upper() for m in METRICS) + " | fit s |")
    print("|---|" + "---:|" * (len(METRICS) + 1))
    for label, cells, seconds in table:
        print(f"| {label} | " + " | ".join(f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in cells.values())
              + f" | {seconds:.1f} |")
    print("\n| full - data-matched | " + " | ".join(f"{m.upper()} [95%] (rows for 80% power: at it / at 0.01)"
                                                  for m in METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for name, entry in results["baselines"].items():
        gap = entry["full_minus_data_matched"]
        print(f"| {name} | " + " | ".join(
            f"{g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] ({g['rows_for_80pct_power'] or '-'} / "
            f"{g['rows_for_80pct_power_at_0.01']})" for g in (gap[m] for m in METRICS)) + " |")
    out = args.out or HERE / "results" / f"baselines_data_gap_{args.split_by}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
