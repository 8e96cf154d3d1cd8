r"""Stage 6, report: the table, paired differences and plots over one or several evaluation results.

    python -m hanorec_trl.scripts.report --results runs/ml1m/eval-baselines runs/ml1m/eval-sft runs/ml1m/eval-hano \
        --output_dir runs/ml1m/report

``results``: evaluation stage folders or ``results.json`` files (other reports too: runs in separate run directories
merge when they share the test rows; a model they share must rank every row alike, or the report names it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.reporting import merge_results, read_results, results_file, write_report
from ..pipeline.parsing import parse_stage_args
from ..pipeline.running import run_stage, script_main
from ..pipeline.stage import Stage, describe, input_fingerprint

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


def main(args: ReportArguments, *, reuse_from: Path | None = None, rebuild: bool = False) -> dict[str, Any]:
    """Run the report stage into ``args.output_dir``; returns the stage record."""
    sources = [(str(results_file(p)), read_results(p)) for p in args.results]
    merged = merge_results(sources)
    root = Path(args.output_dir).resolve().parent
    inputs = {f"results[{k}]": input_fingerprint(path) for k, path in enumerate(args.results)}
    stage = Stage("report", args.output_dir, describe(args, root=root), inputs, OUTPUTS)

    def work(folder: Path) -> dict[str, Any]:
        results = write_report(merged, folder, args.title or Path(args.output_dir).name)
        print("\n" + (folder / "results.md").read_text(encoding="utf-8"))
        return {"models": list(results["models"]), "plots": results["plots"]}

    return run_stage(stage, work, reuse_from=reuse_from, rebuild=rebuild)


def parse(argv=None) -> tuple:
    return parse_stage_args((ReportArguments,), argv)


if __name__ == "__main__":
    raise SystemExit(script_main(parse, main))
