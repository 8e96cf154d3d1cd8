"""Issue 29, item 5, the SFT part: does an LLM with collaborative item tokens rank the next item as well as item-kNN,
on real MovieLens-1M (users 1-2999) under the leave-last-out protocol (one test row per user, 2,999 rows)?

Arms, each trained with TRL's ``SFTTrainer`` (LoRA r=8, alpha 32, dropout 0.05 on the language model's attention and
MLP projections, lr 3e-4, batch 8, the pipeline's CPU settings) on the same seeded sample of training windows, and
scored on every test row with its 10 stored candidates:

* ``trainable``: items named ``"Title" <item_12>``, item-token answers, one vocabulary row per item initialised from
  the projected CF vector and trained through PEFT (:class:`~hanorec_trl.item_tokens.TrainableItemTokens`);
* ``soft``: the same prompts, LLaRA's soft tokens and curriculum (:class:`~hanorec_trl.item_tokens.SoftItemTokens`);
* ``title``: the pipeline's title-only next-item prompt, title answers, scored by the answer's log-likelihood.

CF vectors: the SVD (dim 64) of the training interactions only (``cf_for_split``). The classical baselines
(popularity, Markov, item-kNN, SASRec; full data and data-matched) come from ``baselines_data_gap.py``'s JSON for the
same split; this script checks that popularity refitted here gives the same per-row ranks (the same rows and
candidates). Every LLM arm is paired over the rows against each baseline and against each other arm, with 95%
user-level bootstrap intervals and the rows a paired comparison needs for 80% power.

Resumable: each arm's SFT checkpoints every ``--save_steps`` and resumes from the newest; an arm whose
``result.json`` exists is not run again. Run one arm at a time in chunks under 2 hours (``--arms trainable``), or
all in order; ``--report`` only writes the table, the JSON and the plot from what is there.

    .venv/bin/python benchmarks/baselines_data_gap.py --data-dir ../shared/data/ml-1m \\
        --split-by leave_last_out --windows-per-user 4
    .venv/bin/python benchmarks/item_tokens_ml1m.py --data-dir ../shared/data/ml-1m --run-dir ../runs/item-tokens

Writes ``<run-dir>/<arm>/`` (adapter, checkpoints, ``result.json`` with per-row ranks),
``benchmarks/results/item_tokens_ml1m.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ml1m_split import add_split_arguments, load_data_and_split  # noqa: E402

ARMS = ("trainable", "soft", "title")
LABELS = {"trainable": "SFT, trainable item tokens", "soft": "SFT, soft item tokens (LLaRA)",
          "title": "SFT, titles only"}
METRICS = ("hr@1", "ndcg@10")
BASELINE_ORDER = ("popularity", "markov", "item_knn", "sasrec")


def per_row(ranks: np.ndarray, metric: str) -> np.ndarray:
    from hanorec_trl.evaluation.metrics import ndcg_gains

    k = int(metric.split("@")[1])
    return (ranks <= k).astype(np.float64) if metric.startswith("hr@") else ndcg_gains(ranks, k)


def templates_for(arm: str):
    from hanorec_trl.data import PromptTemplates
    from hanorec_trl.data.prompts import item_templates

    no_system = PromptTemplates(system="")  # the pipeline's text-LLM setting
    return no_system if arm == "title" else item_templates("both", answer="token", base=no_system)


def newest_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint (one cut short by a kill is skipped, with a line saying so)."""
    from hanorec_trl.checkpoints import last_complete_checkpoint

    found, skipped = last_complete_checkpoint(folder)
    for path, why in skipped:
        print(f"# {path} is incomplete ({why}): resuming from {found or 'the start'}", flush=True)
    return found


def train_and_score(arm: str, world: dict, args: argparse.Namespace) -> dict:
    """SFT one arm (resuming its newest checkpoint), save its adapter, score every test row; the arm's result."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from hanorec_trl.data import build_ranking_eval_dataset, build_sft_dataset
    from hanorec_trl.evaluation import RecEvalConfig
    from hanorec_trl.evaluation.evaluate import evaluate_ranking
    from hanorec_trl.fast.cpu_lm_head import compact_lm_head_on_cpu
    from hanorec_trl.item_tokens import VARIANTS, ItemTokenCurriculum
    from hanorec_trl.model_utils import language_model_lora_regex
    from hanorec_trl.pretrained import smollm2_135m_instruct

    data, cf, vocab = world["data"], world["cf"], world["vocab"]
    folder = args.run_dir / arm
    folder.mkdir(parents=True, exist_ok=True)
    model, tokenizer = smollm2_135m_instruct()
    items = None if arm == "title" else VARIANTS[arm].for_data(data, cf)
    if items is not None:
        items.install(model, tokenizer)
    templates, tokens = templates_for(arm), (vocab if items is not None else None)
    train = build_sft_dataset(world["train_windows"], data, task="next_item", with_images=False,
                              templates=templates, item_tokens=tokens)
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=language_model_lora_regex(model))
    config = SFTConfig(output_dir=str(folder), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=args.lr, use_cpu=True, bf16=False, report_to="none", save_steps=args.save_steps,
                       save_total_limit=2, logging_steps=10, seed=0, gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                         peft_config=items.lora_config(lora) if items is not None else lora,
                         callbacks=[ItemTokenCurriculum()] if arm == "soft" else None)
    started = time.perf_counter()
    with compact_lm_head_on_cpu():
        trainer.train(resume_from_checkpoint=newest_checkpoint(folder))
    train_seconds = time.perf_counter() - started
    trainer.save_model(str(folder / "adapter"))
    if items is not None:
        items.save(folder / "adapter")
    rows = build_ranking_eval_dataset(world["test"], data, with_images=False, templates=templates, item_tokens=tokens,
                                      prompt="next_item")
    started = time.perf_counter()
    metrics, details = evaluate_ranking(
        trainer.model, tokenizer, list(rows),
        RecEvalConfig(candidate_score="sequence" if items is None else "first_token", batch_size=args.score_batch_size))
    return {"arm": arm, "label": LABELS[arm], "metrics": metrics, "ranks": details["ranks"],
            "train_rows": len(train), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "train_seconds_this_run": train_seconds, "score_seconds": time.perf_counter() - started,
            "log_history": trainer.state.log_history}


def check_baselines(world: dict, baselines: dict) -> None:
    """The baselines' JSON was scored on these rows and candidates: popularity refitted here ranks them alike."""
    from hanorec_trl.baselines import TrainingInteractions, evaluate_baseline, fit_baseline

    fitted = fit_baseline("popularity", TrainingInteractions.from_split(world["data"], world["split"]))
    ranks = evaluate_baseline(fitted, world["test"])["per_row"]["ranking"]["ranks"]
    stored = baselines["baselines"]["popularity"]["full data"]["ranks"][: len(ranks)]
    if list(map(int, ranks)) != list(stored):
        sys.exit("the baselines' JSON was scored on other rows or candidates: rerun baselines_data_gap.py with this "
                 "script's --split-by / --windows-per-user / --seed")


def report(world: dict, baselines: dict, arms: dict, args: argparse.Namespace) -> None:
    """Table (every model on the same rows, 95% user-level intervals), paired differences, JSON and plot."""
    from hanorec_trl.baselines import LABELS as BASELINE_LABELS
    from hanorec_trl.evaluation.metrics import mean_interval, paired_bootstrap, rows_for_power

    users = [ex.user for ex in world["test"]]
    models: dict[str, np.ndarray] = {}
    for name in BASELINE_ORDER:
        for source, entry in baselines["baselines"][name].items():
            if source != "full_minus_data_matched":
                models[f"{BASELINE_LABELS[name]} ({source})"] = np.asarray(
                    entry["ranks"][: len(users)], dtype=np.float64)
    for arm, result in arms.items():
        models[LABELS[arm]] = np.asarray([np.inf if r is None else r for r in result["ranks"]], dtype=np.float64)
    cells = {label: {m: (float(per_row(r, m).mean()), *mean_interval(per_row(r, m), users=users)) for m in METRICS}
             for label, r in models.items()}
    full_data = [k for k in models if k.endswith("(full data)")]
    differences = []
    for i, arm in enumerate(arms):
        for reference in full_data + [LABELS[a] for a in list(arms)[i + 1:]]:  # each pair of arms once
            entry = {"model": LABELS[arm], "reference": reference}
            for m in METRICS:
                a, b = per_row(models[LABELS[arm]], m), per_row(models[reference], m)
                paired = paired_bootstrap(a, b, users=users)
                entry[m] = {**paired, "rows_for_80pct_power": rows_for_power(a - b, paired["difference"])
                            if paired["difference"] else None}
            differences.append(entry)
    lines = [f"{len(users)} test rows (leave-last-out, 10 candidates each); 95% user-level bootstrap intervals", "",
             "| model | " + " | ".join(m.upper() for m in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    lines += [f"| {label} | " + " | ".join(f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in c.values()) + " |"
              for label, c in cells.items()]
    lines += ["", "| model - reference | " + " | ".join(f"{m.upper()} [95%] (rows for 80% power)" for m in METRICS)
              + " |", "|---|" + "---:|" * len(METRICS)]
    lines += [f"| {d['model']} - {d['reference']} | " + " | ".join(
        f"{d[m]['difference']:+.3f} [{d[m]['low']:+.3f}, {d[m]['high']:+.3f}] ({d[m]['rows_for_80pct_power'] or '-'})"
        for m in METRICS) + " |" for d in differences]
    table = "\n".join(lines)
    print(table)
    out = args.output
    out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({
        "command": "python " + " ".join(["benchmarks/item_tokens_ml1m.py"] + sys.argv[1:]),
        "test_rows": len(users), "split": world["split"].counts(), "train_windows": len(world["train_windows"]),
        "cf": world["cf"].source, "models": {k: {m: list(v) for m, v in c.items()} for k, c in cells.items()},
        "differences": differences,
        "arms": {a: {k: v for k, v in r.items() if k not in ("ranks", "log_history")} for a, r in arms.items()},
    }, indent=1) + "\n", encoding="utf-8")
    plot(cells, out.with_suffix(".png"))
    print(f"wrote {out}.{{md,json,png}}")


def plot(cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(cells)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 0.45 * len(labels) + 1.5), sharey=True)
    for ax, m in zip(axes, METRICS):
        values = np.array([cells[k][m] for k in labels])
        colours = ["tab:blue" if k.startswith("SFT") else "tab:grey" for k in labels]
        ax.barh(range(len(labels)), values[:, 0], color=colours,
                xerr=[values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]], capsize=3)
        ax.set_xlabel(f"{m.upper()} (95% user bootstrap)")
        ax.set_xlim(max(0.0, values[:, 1].min() - 0.05), min(1.0, values[:, 2].max() + 0.02))
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.suptitle("Real ML-1M, leave-last-out, same test rows and candidates for every model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, split_by="leave_last_out", windows_per_user=4)
    parser.add_argument("--run-dir", type=Path, default=HERE.parent.parent / "runs" / "item-tokens-ml1m")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, in order, from {ARMS}")
    parser.add_argument("--steps", type=int, default=600, help="SFT optimizer steps per arm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--save-steps", type=int, default=100)
    parser.add_argument("--score-batch-size", type=int, default=8)
    parser.add_argument("--cf-dim", type=int, default=64)
    parser.add_argument("--baselines", type=Path, default=HERE / "results" / "baselines_data_gap_leave_last_out.json")
    parser.add_argument("--test-rows", type=int, default=None, help="score only the first N test rows (a smoke run)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "item_tokens_ml1m",
                        help="the report's path without suffix (.md, .json, .png are written)")
    parser.add_argument("--report", action="store_true", help="only write the report from the finished arms")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {ARMS}")
    from hanorec_trl.item_tokens import ItemVocabulary, cf_for_split

    data, split = load_data_and_split(args)
    baselines = json.loads(args.baselines.read_text(encoding="utf-8"))
    world = {"data": data, "split": split, "vocab": ItemVocabulary(data.item_ids),
             "test": split.test[: args.test_rows] if args.test_rows else split.test,
             "cf": cf_for_split(data, split, method="svd", dim=args.cf_dim),
             "train_windows": random.Random(0).sample(list(split.train), min(len(split.train),
                                                                             args.steps * args.batch_size))}
    check_baselines(world, baselines)
    finished = {}
    for arm in arms + [a for a in ARMS if a not in arms]:  # run in the order given; report every finished arm
        result_path = args.run_dir / arm / "result.json"
        if not result_path.exists() and arm in arms and not args.report:
            print(f"# arm {arm}: {LABELS[arm]}", flush=True)
            result = train_and_score(arm, world, args)
            result_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print(f"# arm {arm}: {result['metrics']}", flush=True)
        if result_path.exists():
            finished[arm] = json.loads(result_path.read_text(encoding="utf-8"))
    report(world, baselines, finished, args)


if __name__ == "__main__":
    main()
