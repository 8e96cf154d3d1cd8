"""One command per dataset: ``run_pipeline`` (SFT -> hardness -> HaNo DPO -> evaluation -> report) and ``main``.

The example scripts are thin wrappers::

    from hanorec_trl.pipeline import main
    raise SystemExit(main(dataset="movielens"))

``accelerate launch examples/train_movielens.py ...`` and ``python examples/train_movielens.py ...`` both work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arguments import SECTIONS, PipelineConfigError
from .command_line import parse_args
from .pipeline_config import PipelineConfig
from .variants import ABLATION_VARIANTS, Variant
from .modeling import check_device_support, resolve_model
from .rundir import RunDir, RunDirError, default_run_dir, on_main_process


SFT_LABEL = "SFT"


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data import DataFormatError, SplitMismatchError
    from ..trainer import NonFiniteTrainingError

    return (PipelineConfigError, RunDirError, DataFormatError, SplitMismatchError, FileNotFoundError,
            NonFiniteTrainingError)


class PipelineInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the pipeline; ``root`` is the run directory, ``checkpoint`` the one saved on the way out."""

    def __init__(self, message: str, root: Path, checkpoint: str | None = None):
        super().__init__(message)
        self.root, self.checkpoint = root, checkpoint


_PATH_SUFFIXES = ("_dir", "_path", "_file", "_cache")
_CACHE_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")


def input_paths(config: PipelineConfig, recipe: str | None = None) -> dict[str, str]:
    """Every path the run reads from, by argument name: ``--data.data_dir``, the custom tables, the model (a local
    path), ``--config``, any ``*_dir`` / ``*_path`` / ``*_file`` / ``*_cache`` field of any section (vision cache...)
    and the Hugging Face cache variables."""
    paths: dict[str, str] = {}
    if recipe:
        paths["--config"] = recipe
    name = config.model.model_name_or_path
    if name and Path(name).expanduser().exists():
        paths["--model.model_name_or_path"] = name
    for section in SECTIONS:
        group = config.groups()[section]
        values = dataclasses.asdict(group) if section in ("run", "data", "protocol", "hardness", "evaluation") else \
            config.explicit.get(section, {})
        for key, value in values.items():
            if key in ("output_dir", "logging_dir", "run_dir") or not isinstance(value, str) or not value:
                continue
            if key.endswith(_PATH_SUFFIXES) or (section == "data" and key in ("interactions", "items")):
                paths[f"--{section}.{key}"] = value
    if config.run.reuse_from:
        paths["--run.reuse_from"] = config.run.reuse_from
    for variable in _CACHE_VARIABLES:
        if os.environ.get(variable):
            paths[f"${variable}"] = os.environ[variable]
    return paths


def _recipe(argv: Sequence[str] | None) -> str | None:
    """The ``--config`` file named on the command line, if any."""
    args = list(sys.argv[1:] if argv is None else argv)
    for k, arg in enumerate(args):
        if arg == "--config" and k + 1 < len(args):
            return args[k + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def check_against_data(config: PipelineConfig, variants: Sequence[Variant], data) -> None:
    """The arguments that depend on the catalogue, checked as soon as ``--data_dir`` is loaded (before any stage)."""
    items = data.num_items
    bad = []
    protocol, k = config.protocol, config.hardness.hardness_k
    if (any(v.use_hardness for v in variants) or protocol.rejected == "hard") and k >= items:
        bad.append(f"--hardness.hardness_k {k} (the catalogue has {items} items, so K can be at most {items - 1})")
    if protocol.num_candidates + protocol.auc_num_unwatched >= items:
        bad.append(f"--protocol.num_candidates {protocol.num_candidates} with --protocol.auc_num_unwatched "
                   f"{protocol.auc_num_unwatched} (the catalogue has only {items} items)")
    if bad:
        raise PipelineConfigError(f"invalid arguments for {data.name}: " + "; ".join(bad))


def resume_command(argv: Sequence[str] | None, root: Path) -> str:
    """The command line that continues the run in ``root`` (the same arguments, ``--run.resume``, no overwrite)."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--output_dir", "--run.run_dir"):
            skip = True
            continue
        if arg.startswith(("--output_dir=", "--run.run_dir=")) or arg in (
                "--overwrite", "--resume", "--run.overwrite", "--run.resume"):
            continue
        kept.append(arg)
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "examples/train_<dataset>.py"
    return shlex.join(["python", script, *kept, "--run.run_dir", str(root), "--run.resume"])


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
    if config.run.run_dir is not None:
        return Path(config.run.run_dir)
    from accelerate.utils import broadcast_object_list

    chosen = [str(default_run_dir(default_name)) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return Path(chosen[0])


def run_pipeline(config: PipelineConfig, variants: Sequence[Variant] | None = None, *,
                 run_name: str | None = None, recipe: str | None = None, data=None) -> dict[str, Any]:
    """Run every stage of ``config`` (skipping finished ones on ``--resume``) and return the results.

    ``data``: a dataset in memory (a :class:`~hanorec_trl.data.RecData`, e.g. from
    :func:`~hanorec_trl.data.load_interactions` on DataFrames or ``datasets.Dataset`` objects) instead of the files
    that the ``data:`` section names; ``data.dataset`` must then be ``custom`` (its fingerprint is recorded, so a
    resume with other data is refused).

    ``variants``: the preference-optimization variants to train from the one SFT model (default: ``--variants``, else
    the one that ``--method``/``--ablation``/the switches describe; none for ``--method sft``). ``recipe``: the
    ``--config`` file (refused inside a folder that ``--overwrite`` deletes). Returns the results dict also written
    to ``<run>/report/results.json``, with the Markdown table under ``"table"``. The run directory is locked
    (``run.lock``) for the life of the run.
    """
    from accelerate import PartialState

    from .stages import load_data

    started = time.perf_counter()
    if data is not None and config.data.dataset != "custom":
        raise PipelineConfigError("run_pipeline(data=...) needs data.dataset custom (the data comes in memory)")
    config.validate(data_given=data is not None)
    if variants is None:
        variants = config.variants_to_train()
    # preflight: everything that can be refused is refused before the run directory is touched
    state = PartialState()
    root = _resolve_run_dir(config, state, run_name or config.data.dataset)
    rundir = RunDir(root)
    resume, overwrite = config.run.resume, config.run.overwrite
    reuse = RunDir(Path(config.run.reuse_from).expanduser()) if config.run.reuse_from else None

    def check() -> None:  # nothing touched, nothing read yet
        rundir.check(resume=resume, overwrite=overwrite)
        rundir.check_paths_outside(input_paths(config, recipe), resume=resume, overwrite=overwrite)
        if reuse is not None:
            reuse_problem(reuse, rundir)

    on_main_process(state, check)
    check_device_support(config)
    spec = resolve_model(config)
    if data is not None:
        if config.data.max_users is not None:
            from .stages import subsample_users

            data = subsample_users(data, config.data.max_users, config.seed)
        check_against_data(config, variants, data)
    elif config.data.data_dir is not None or config.data.dataset == "custom":
        data = load_data(config, Path(config.data.data_dir or "."), spec.with_images)
        check_against_data(config, variants, data)
    lock = None

    def take() -> None:
        nonlocal lock
        lock = rundir.lock()  # under accelerate launch, the main process holds it for all
        try:
            if lock.took_over:
                print(f"note: took over the lock of a run that is gone (pid {lock.took_over.get('pid')})", flush=True)
            rundir.check_paths_outside(input_paths(config, recipe), resume=resume, overwrite=overwrite)
            rundir.prepare(resume=resume, overwrite=overwrite)
        except BaseException:
            lock.release()
            raise

    on_main_process(state, take)
    try:
        return _run_stages(config, variants, root, rundir, spec, state, data, started, reuse)
    except KeyboardInterrupt as interrupt:
        raise PipelineInterrupted(str(interrupt) or "interrupted (Ctrl-C)", root,
                                  getattr(interrupt, "checkpoint", None)) from None
    finally:
        if lock is not None:
            lock.release()


def reuse_problem(source: RunDir, rundir: RunDir) -> None:
    """Refuse a ``--run.reuse_from`` that is not another run directory of this pipeline."""
    if not source.root.is_dir():
        raise RunDirError(f"--run.reuse_from {source.root}: no such folder")
    if source.root.resolve() == rundir.root.resolve():
        raise RunDirError(f"--run.reuse_from {source.root} is this run's own directory; name another run directory "
                          "(or pass --run.resume to continue this one)")
    problem = source.ownership_problem(whole_layout=False)
    if problem:
        raise RunDirError(f"--run.reuse_from {source.root} is not a run directory of this pipeline: {problem}")


def _run_stages(config: PipelineConfig, variants: Sequence[Variant], root: Path, rundir: RunDir, spec, state, data,
                started: float, reuse: RunDir | None = None) -> dict[str, Any]:
    from .report import write_report
    from .stages import (
        RunContext,
        load_dpo_model,
        load_sft_model,
        stage_baselines,
        stage_data,
        stage_dpo,
        stage_evaluate,
        stage_hardness,
        stage_model,
        stage_sft,
    )

    ctx = RunContext(config=config, rundir=rundir, spec=spec, state=state, data=data, reuse=reuse)
    run_file = {"variants": [v.name for v in variants], "model": spec.description, "argv": sys.argv}
    if ctx.is_main and not config.run.resume:  # a resumed run records its arguments once it has finished
        rundir.write_run_file(config.to_dict(), run_file)
    ctx.say(f"HaNoRec pipeline: {config.data.dataset} with {spec.description}; run directory {root}")
    ctx.say(f"        method {config.run.method}; variants: {', '.join(v.name for v in variants) or 'none (SFT only)'}")

    stage_data(ctx)
    baselines = stage_baselines(ctx)
    stage_model(ctx)
    stage_sft(ctx)
    hard_rejected = bool(variants) and config.protocol.rejected == "hard"
    if any(v.switches(config.dpo)["use_hardness"] for v in variants) or hard_rejected:
        stage_hardness(ctx)
    for variant in variants:
        stage_dpo(ctx, variant)
    stage_evaluate(ctx, "sft", lambda: load_sft_model(ctx))
    for variant in variants:
        stage_evaluate(ctx, variant.name, lambda v=variant: load_dpo_model(ctx, v))

    results: dict[str, Any] = {}
    if ctx.is_main:
        models = baselines + [("sft", SFT_LABEL)] + [(v.name, v.label) for v in variants]
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
    if results.get("position_table"):
        print("\nPosition diagnostic (top = first listed near 1/num_candidates and Spearman near 0: no list-position "
              "preference):")
        print(results["position_table"])
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
    directory, a non-finite loss) are printed as one ``error:`` line (exit code 2); Ctrl-C prints how to resume (exit
    code 130; during training a checkpoint is saved first, docs/reliability.md); anything else propagates with its
    traceback.
    """
    recipe = _recipe(argv)
    try:
        config = parse_args(argv, dataset=dataset)
        with _quiet_libraries():
            if ablations:
                run_pipeline(config, config.variants_to_train(ABLATION_VARIANTS),
                             run_name=f"{config.data.dataset}-ablations", recipe=recipe)
            else:
                run_pipeline(config, recipe=recipe)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted: {interrupt}" if str(interrupt) else "\ninterrupted (Ctrl-C)", file=sys.stderr)
        root = getattr(interrupt, "root", None)
        if root is not None:
            checkpoint = getattr(interrupt, "checkpoint", None)
            if checkpoint:
                print(f"checkpoint saved: {checkpoint}", file=sys.stderr)
            print(f"finished stages are kept in {root}; continue with:\n  {resume_command(argv, root)}",
                  file=sys.stderr)
        return 130
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


__all__ = ["PipelineInterrupted", "input_paths", "main", "main_ablations", "print_summary", "resume_command",
           "run_pipeline"]
