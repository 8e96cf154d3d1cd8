r"""Stage 6, report: the table, paired differences and plots over one or several evaluation results.

    python -m hanorec_trl.scripts.report --results runs/ml1m/eval-baselines runs/ml1m/eval-sft runs/ml1m/eval-hano \
        --output_dir runs/ml1m/report

``results``: evaluation stage folders or ``results.json`` files (other reports too: runs in separate run directories
merge when they share the test rows; a model they share must rank every row alike, or the report names it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.reporting import (
    differences_table,
    merge_results,
    paired_differences,
    plot_differences,
    plot_learning_curve,
    plot_similarity,
    plot_training_dynamics,
    position_table,
    ranking_cutoffs,
    read_results,
    results_file,
    results_table,
    seed_groups,
)
from ..pipeline.parsing import parse_stage_args
from ..pipeline.running import run_stage, script_main
from ..pipeline.stage import Stage, describe, input_fingerprint

BAR = "baseline-popularity"  # under uniform negatives the bar to beat (docs/evaluation.md)
OUTPUTS = ("results.json", "results.md", "paired_differences.png", "training_dynamics.png", "learning_curve.png",
           "title_image_similarity.png")


@dataclass
class ReportArguments:
    results: list[str] = field(default_factory=list, metadata={
        "help": "Evaluation stage folders or results.json files (evaluations or earlier reports)."})
    output_dir: str | None = field(default=None, metadata={"help": "The stage folder to write (must be new)."})
    title: str | None = field(default=None, metadata={"help": "The report's heading (default: the output folder)."})

    def __post_init__(self) -> None:
        if not self.results or not self.output_dir:
            raise ValueError("the report needs --results (one or more) and --output_dir")


# ------------------------------------------------------------------------------------------------ the stage
def report(merged: dict[str, Any], folder: Path, title: str) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plots of merged results into ``folder``."""
    models = merged["models"]
    pairs = [(name, m["label"]) for name, m in models.items()]
    labels = dict(pairs) | {base: label for base, (label, _) in seed_groups(pairs).items()}
    ks = ranking_cutoffs(list(models.values()))
    trained = [(n, label) for n, label in pairs if not n.startswith("baseline-")]
    ranks = merged["per_row_ranks"]
    differences = paired_differences(ranks, trained, ks, bar=BAR if BAR in ranks else None,
                                     users=merged.get("test_users")) if ks and len(ranks) > 1 else []
    plots: dict[str, str] = {}
    if differences:
        plots["paired_differences"] = plot_differences(differences, labels, folder / "paired_differences.png").name
    histories = {n: h for n, h in merged["training"].items() if n != "sft"}
    if histories:
        plots["training_dynamics"] = plot_training_dynamics(histories, labels, folder / "training_dynamics.png").name
    if (merged.get("learning_curve") or {}).get("points"):
        plots["learning_curve"] = plot_learning_curve(merged["learning_curve"], folder / "learning_curve.png").name
    similarity = merged["similarity"]
    if "sft" in similarity and len(similarity) > 1:
        before = np.asarray(similarity["sft"]["cosine"])
        after = {n: np.asarray(s["cosine"]) for n, s in similarity.items() if n != "sft"}
        plots["title_image_similarity"] = plot_similarity(before, after, labels,
                                                          folder / "title_image_similarity.png").name
    disclaimer = ("These numbers come from synthetic data or a model with random weights: they show that every stage "
                  "ran, not how well HaNoRec recommends." if merged.get("illustrative") else None)
    results = {**merged, "title": title, "paired_differences": differences, "plots": plots, "disclaimer": disclaimer}
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    rows = len(merged.get("test_rows") or next(iter(ranks.values()), []))
    lines = [f"# {title}", ""] + ([f"> **{disclaimer}**", ""] if disclaimer else [])
    lines += [f"Dataset: {merged.get('dataset')}; every row is scored on the same {rows} test rows. In brackets: the "
              "95% percentile-bootstrap interval over those rows. Under uniform negatives popularity is the bar to "
              "beat, not random.", "", results_table(models), ""]
    positions = position_table(models)
    if positions:
        lines += ["Position diagnostic (top = first listed near 1/candidates, Spearman near 0: no list-position "
                  "preference; the ranking above averages over every candidate order):", "", positions, ""]
    if differences:
        lines += ["Paired differences on the same test rows (95% paired bootstrap; an interval containing 0 shows no "
                  "difference):", "", differences_table(differences, labels), ""]
    lines += [f"![{name}]({file})" for name, file in plots.items()]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return results


def main(args: ReportArguments, *, reuse_from: Path | None = None, rebuild: bool = False) -> dict[str, Any]:
    """Run the report stage into ``args.output_dir``; returns the stage record."""
    sources = [(str(results_file(p)), read_results(p)) for p in args.results]
    merged = merge_results(sources)
    root = Path(args.output_dir).resolve().parent
    inputs = {f"results[{k}]": input_fingerprint(path) for k, path in enumerate(args.results)}
    stage = Stage("report", args.output_dir, describe(args, root=root), inputs, OUTPUTS)

    def work(folder: Path) -> dict[str, Any]:
        results = report(merged, folder, args.title or Path(args.output_dir).name)
        print("\n" + (folder / "results.md").read_text(encoding="utf-8"))
        return {"models": list(results["models"]), "plots": results["plots"]}

    return run_stage(stage, work, reuse_from=reuse_from, rebuild=rebuild)


def parse(argv=None) -> tuple:
    return parse_stage_args((ReportArguments,), argv)


if __name__ == "__main__":
    raise SystemExit(script_main(parse, main))
