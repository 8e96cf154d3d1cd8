"""What every stage shares: the :class:`RunContext` and :func:`run_stage`, which runs a stage in its folder of the
run directory (skipped when finished, after checking the arguments it recorded), records its inputs
(``STAGE_STARTED.json`` / ``STAGE_DONE.json``, :mod:`..rundir`) and hands back its summary."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...data import PromptTemplates, RecData, RecSplit
from ..modeling import ModelSpec, processing_class
from ..pipeline_config import PipelineConfig
from ..rundir import RunDir, on_main_process
from ..training import without_zero3_init


@dataclass
class RunContext:
    """Everything the stages share: arguments, run directory, model, data, the process group."""

    config: PipelineConfig
    rundir: RunDir
    spec: ModelSpec
    state: Any  # accelerate.PartialState
    data: RecData | None = None
    split: RecSplit | None = None
    reuse: RunDir | None = None  # --run.reuse_from: finished stages with the same arguments are copied from there
    stage_seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    @property
    def with_images(self) -> bool:
        return self.spec.with_images

    @property
    def synthetic(self) -> bool:
        return self.config.data.data_dir is None and self.config.data.dataset != "custom"

    @property
    def train_examples(self):
        limit = self.config.protocol.max_train_sequences
        return self.split.train[:limit] if limit else self.split.train

    @property
    def test_examples(self):
        limit = self.config.protocol.max_test_sequences
        return self.split.test[:limit] if limit else self.split.test

    def processing_class(self):
        return processing_class(self.spec, self.config)

    @property
    def templates(self) -> PromptTemplates:
        return PromptTemplates(system=self.config.protocol.system_prompt)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_stage(ctx: RunContext, stage: str, folder: Path, inputs: dict[str, Any], work: Callable[[], dict],
              *, all_processes: bool = False, keep: tuple[str, ...] = (), ignored: tuple[str, ...] = (),
              upstream: tuple[Path, ...] = ()) -> dict:
    """Run ``work`` in ``folder`` unless the stage is finished (here, or in ``--run.reuse_from`` with the same
    arguments: copied); mark it finished (main process, last, atomically).

    ``all_processes``: every process runs ``work`` (training); otherwise the main process does and the others wait.
    ``keep``: entries of an unfinished stage folder that survive a restart (the trainer's checkpoints).
    ``ignored``: arguments the stage no longer depends on; values an earlier version recorded are not compared.
    ``upstream``: the stage folders ``work`` reads; when each finished is recorded with ``inputs``.
    """
    rundir = ctx.rundir
    if upstream:
        inputs = {**inputs, **rundir.upstream(upstream)}
    reused = False  # (known on the main process, the one that speaks)
    if not rundir.is_done(folder) and ctx.reuse is not None:
        reused = on_main_process(ctx.state, lambda: rundir.reuse_stage(ctx.reuse, folder, inputs, ignored))
    redone = rundir.outdated(folder, inputs) if rundir.is_done(folder) else None
    if redone:
        ctx.say(f"[{stage}] {redone} since it finished: done again")
        on_main_process(ctx.state, lambda: rundir.fresh_stage(folder))
    if rundir.is_done(folder):
        rundir.check_inputs(folder, stage, inputs, ignored)
        ctx.skipped.append(stage)
        ctx.say(f"[{stage}] reused: finished in {ctx.reuse.root} with the same arguments" if reused
                else f"[{stage}] finished earlier: skipped ({folder})")
        return rundir.marker(folder)["summary"]
    ctx.say(f"[{stage}] running -> {folder}")
    start = time.perf_counter()

    def begin() -> None:
        resume = ctx.config.run.resume
        if resume:  # what an earlier attempt left is continued only with the arguments it started with
            note = rundir.check_started(folder, stage, inputs, keep, ignored)
            if note:
                ctx.say(f"        note: {note}")
        rundir.fresh_stage(folder, keep=keep if resume else ())
        rundir.mark_started(folder, inputs)

    on_main_process(ctx.state, begin)
    summary: dict = {}
    if all_processes:
        summary = work()
    elif ctx.is_main:
        with without_zero3_init():
            summary = work()
    ctx.barrier()
    seconds = time.perf_counter() - start
    if ctx.is_main:
        rundir.mark_done(folder, inputs, summary, seconds)
    ctx.barrier()
    ctx.stage_seconds[stage] = seconds
    ctx.say(f"[{stage}] done in {seconds:.1f} s")
    return rundir.marker(folder)["summary"]


def recorded_fields(config: PipelineConfig, names) -> dict[str, Any]:
    """Arguments under their flat names (:meth:`PipelineConfig.flat`): what the stages record and compare on resume,
    the same names as in run directories of earlier versions."""
    flat = config.flat()
    return {n: flat[n] for n in names}


def item_table(ctx: RunContext, item_ids):
    """Titles (an empty title becomes 'item <id>': the encoder needs text) and image files (None: no image, or one
    that does not decode: the placeholder, with one warning naming the items, or an error under strict_images)."""
    data = ctx.data
    titles = [data.title(i).strip() or f"item {i}" for i in item_ids]
    if ctx.with_images:
        data.verify_images(list(item_ids))
    images = [data.image_path(i) for i in item_ids] if ctx.with_images else None
    return titles, images


__all__ = ["RunContext", "free_memory", "item_table", "recorded_fields", "run_stage"]
