"""One command per dataset: ``run_pipeline`` (SFT -> hardness -> HaNo DPO -> evaluation -> report) and ``main``.

The example scripts are thin wrappers::

    from hanorec_trl.pipeline import main
    raise SystemExit(main(dataset="movielens"))

``accelerate launch examples/train_movielens.py ...`` and ``python examples/train_movielens.py ...`` both work.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arguments import ABLATION_VARIANTS, PipelineConfig, PipelineConfigError, Variant, parse_args
from .modeling import check_device_support, resolve_model
from .rundir import RunDir, RunDirError, default_run_dir


SFT_LABEL = "SFT"


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data import DataFormatError, SplitMismatchError

    return (PipelineConfigError, RunDirError, DataFormatError, SplitMismatchError, FileNotFoundError)


def _disclaimer(ctx) -> str | None:
    parts = []
    if ctx.spec.random_weights:
        parts.append(f"a model with random weights ({ctx.spec.description})")
    if ctx.synthetic:
        parts.append("synthetic data (hanorec_trl.data.synthetic)")
    if not parts:
        return None
    return ("These numbers come from " + " trained on ".join(parts) + ": they show that every stage ran, not how "
            "well HaNoRec recommends.")


def _resolve_run_dir(config: PipelineConfig, state, default_name: str) -> Path:
    """``--output_dir`` or a new ``runs/<name>-<timestamp>``, identical on every process."""
    if config.run.output_dir is not None:
        return Path(config.run.output_dir)
    from accelerate.utils import broadcast_object_list

    chosen = [str(default_run_dir(default_name)) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return Path(chosen[0])


def run_pipeline(config: PipelineConfig, variants: Sequence[Variant] | None = None, *,
                 run_name: str | None = None) -> dict[str, Any]:
    """Run every stage of ``config`` (skipping finished ones on ``--resume``) and return the results.

    ``variants``: the preference-optimization variants to train from the one SFT model (default: ``--variants``, else
    the one that ``--method``/``--ablation``/the switches describe; none for ``--method sft``). Returns the results
    dict also written to ``<run>/report/results.json``, with the Markdown table under ``"table"``.
    """
    from accelerate import PartialState

    from .report import write_report
    from .stages import (
        RunContext,
        load_data,
        load_dpo_model,
        load_sft_model,
        stage_data,
        stage_dpo,
        stage_evaluate,
        stage_hardness,
        stage_model,
        stage_sft,
    )

    started = time.perf_counter()
    config.validate()
    if variants is None:
        variants = config.variants_to_train()
    # preflight: everything that can be refused is refused before the run directory is touched
    check_device_support(config.model)
    spec = resolve_model(config.model)
    state = PartialState()
    data = None
    if config.data.data_dir is not None:
        data = load_data(config, Path(config.data.data_dir), spec.with_images)
    root = _resolve_run_dir(config, state, run_name or config.data.dataset)
    rundir = RunDir(root)
    if state.is_main_process:
        rundir.prepare(resume=config.run.resume, overwrite=config.run.overwrite)
    state.wait_for_everyone()

    ctx = RunContext(config=config, rundir=rundir, spec=spec, state=state, data=data)
    run_file = {"variants": [v.name for v in variants], "model": spec.description, "argv": sys.argv}
    if ctx.is_main and not config.run.resume:  # a resumed run records its arguments once it has finished
        rundir.write_run_file(config.to_dict(), run_file)
    ctx.say(f"HaNoRec pipeline: {config.data.dataset} with {spec.description}; run directory {root}")
    ctx.say(f"        method {config.run.method}; variants: {', '.join(v.name for v in variants) or 'none (SFT only)'}")

    stage_data(ctx)
    stage_model(ctx)
    stage_sft(ctx)
    if any(v.switches(config.dpo)["use_hardness"] for v in variants):
        stage_hardness(ctx)
    for variant in variants:
        stage_dpo(ctx, variant)
    stage_evaluate(ctx, "sft", lambda: load_sft_model(ctx))
    for variant in variants:
        stage_evaluate(ctx, variant.name, lambda v=variant: load_dpo_model(ctx, v))

    results: dict[str, Any] = {}
    if ctx.is_main:
        models = [("sft", SFT_LABEL)] + [(v.name, v.label) for v in variants]
        header = {
            "run_dir": str(root), "dataset": ctx.data.name, "model": spec.description,
            "test_sequences": len(ctx.test_examples), "train_sequences": len(ctx.train_examples),
            "method": config.run.method, "stage_seconds": ctx.stage_seconds, "skipped_stages": ctx.skipped,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        results = write_report(root, models, beta0=config.dpo.beta, header=header, disclaimer=_disclaimer(ctx))
        rundir.write_run_file(config.to_dict(), run_file)
        print_summary(results, root)
    state.wait_for_everyone()
    return results


def print_summary(results: dict[str, Any], root: Path) -> None:
    print()
    if results.get("disclaimer"):
        print("NOTE: " + results["disclaimer"])
    print(f"Test split: {results['test_sequences']} sequences of {results['dataset']}; model {results['model']}.")
    print(results["table"])
    if results.get("differences_table"):
        print("\nPaired differences on the same test rows (95% bootstrap interval; one containing 0 shows no "
              "difference):")
        print(results["differences_table"])
    for name, path in results["plots"].items():
        print(f"plot {name}: {path}")
    print(f"results: {root / 'report' / 'results.md'} and results.json ({results['wall_seconds']:.0f} s)")


@contextlib.contextmanager
def _quiet_libraries():
    """Keep the output to progress bars and the pipeline's lines (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def main(argv: Sequence[str] | None = None, *, dataset: str | None = "movielens", ablations: bool = False) -> int:
    """Parse arguments (``--config recipe.yaml`` + overrides), run the pipeline, return the exit code.

    ``dataset``: the example script's dataset (``None``: take ``--dataset`` from the arguments). ``ablations``: train
    every variant of paper Sec. 4.3 (:data:`ABLATION_VARIANTS`, or those ``--variants`` names) from the one SFT model
    instead of the one that ``--method``/``--ablation`` describe. Errors a user can fix (bad arguments, data files, run
    directory) are printed as one ``error:`` line (exit code 2); anything else propagates with its traceback.
    """
    try:
        config = parse_args(argv, dataset=dataset)
        with _quiet_libraries():
            if ablations:
                run_pipeline(config, config.variants_to_train(ABLATION_VARIANTS),
                             run_name=f"{config.data.dataset}-ablations")
            else:
                run_pipeline(config)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Destroy the ``torch.distributed`` group (if ``accelerate launch`` made one) before the interpreter exits: a gloo
    or NCCL group still alive at teardown can abort a rank after training finished (pytorch/pytorch#190489)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main_ablations(argv: Sequence[str] | None = None) -> int:
    """All variants of paper Sec. 4.3 (HaNoRec, w/o HaRS, w/o SAM, w/o NoDO, w/o ALL) plus SFT-only, on one SFT
    model; the dataset comes from ``--dataset`` (default movielens)."""
    return main(argv, dataset=None, ablations=True)


__all__ = ["main", "main_ablations", "print_summary", "run_pipeline"]
