"""Training in a stage's folder, as SFT and every DPO variant do: from the last complete checkpoint when resuming
(an incomplete newer one, cut by a kill, is deleted; a finished one is restored rather than trained one step past
its end), stopped on a non-finite loss, a first Ctrl-C ending at the step's end with a checkpoint, then the adapter
and the log history saved."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from ...fast.forward import frozen_vision_without_graph, image_feature_cache, parameters_sharded
from ..rundir import read_json, write_json_atomic
from ..training import (
    StopOnNonFinite,
    TrainingInterrupted,
    compact_lm_head_on_cpu,
    last_checkpoint,
    stop_at_step_end_on_interrupt,
    use_stage_progress,
)
from .context import RunContext


@contextlib.contextmanager
def _sft_fast_path(trainer, stats: dict):
    """Around SFT: a frozen vision tower runs without a graph, and (unless parameters are sharded) each distinct image's
    features are computed once for the whole stage (docs/fast_path.md); the cache's counts go into ``stats``.
    HaNoDPOTrainer does both itself."""
    caching = contextlib.nullcontext() if parameters_sharded(trainer) else image_feature_cache(trainer.model)
    with frozen_vision_without_graph(trainer.model), caching as cache:
        yield
        if cache is not None:
            stats["vision_cache"] = cache.counts()


def _resume_point(ctx: RunContext, trainer, folder: Path, description: str) -> str | None:
    """The newest complete checkpoint of the stage (when resuming); incomplete newer ones (a save cut by a kill) are
    named and deleted, so that training continues from the previous complete one."""
    if not ctx.config.run.resume:
        return None
    need_state = bool(getattr(trainer.args, "use_responsiveness", False))  # HaNoDPOTrainer's eta state
    resume_from, incomplete = last_checkpoint(folder / "trainer", hano_state=need_state)
    for path, why in incomplete:
        ctx.say(f"        {description}: {path} is incomplete ({why}); resuming from the previous complete "
                f"checkpoint ({resume_from or 'none: training starts over'})")
    ctx.barrier()
    if ctx.is_main:
        for path, _ in incomplete:
            shutil.rmtree(path, ignore_errors=True)
    ctx.barrier()
    return resume_from


def train_and_save(ctx: RunContext, trainer, folder: Path, description: str, sft: bool = False) -> dict:
    """Train (from the last complete checkpoint when resuming), save the adapter and the log history. A first
    Ctrl-C finishes the current step, saves a checkpoint and raises :class:`TrainingInterrupted`."""
    use_stage_progress(trainer, description)
    trainer.add_callback(StopOnNonFinite())
    stats: dict[str, Any] = {}
    resume_from = _resume_point(ctx, trainer, folder, description)
    finished = resume_from is not None and _checkpoint_is_final(Path(resume_from))
    if finished:
        # transformers would train one step past max_steps when resumed from the final checkpoint: restore it instead
        ctx.say(f"        {description} had finished training: restoring {resume_from}")
        _restore_adapter(trainer.model, Path(resume_from))
        trainer.state = type(trainer.state).load_from_json(str(Path(resume_from) / "trainer_state.json"))
        train_loss = None
    else:
        if resume_from:
            ctx.say(f"        resuming {description} from {resume_from}")
        with (compact_lm_head_on_cpu(), _sft_fast_path(trainer, stats) if sft else contextlib.nullcontext(),
              stop_at_step_end_on_interrupt(trainer) as interrupt):
            train_loss = trainer.train(resume_from_checkpoint=resume_from).training_loss
        if interrupt.requested:
            saved = folder / "trainer" / f"checkpoint-{trainer.state.global_step}"
            raise TrainingInterrupted(f"{description} stopped at step {trainer.state.global_step} (Ctrl-C)",
                                      str(saved) if saved.is_dir() else None)
    trainer.save_model(str(folder / "adapter"))
    if ctx.is_main:
        write_json_atomic(folder / "log_history.json", trainer.state.log_history)
    return {"steps": trainer.state.global_step, "train_loss": train_loss, "resumed_from": resume_from,
            "train_rows": len(trainer.train_dataset), **stats}


def _checkpoint_is_final(checkpoint: Path) -> bool:
    state = read_json(checkpoint / "trainer_state.json")
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def _restore_adapter(model, checkpoint: Path) -> None:
    """Load the "default" LoRA weights saved in a trainer checkpoint into the (PEFT) model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{checkpoint} has no adapter_model.safetensors to restore the trained adapter from")
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{weights} does not match the model's adapter: unexpected {result.unexpected_keys[:5]}")


__all__ = ["train_and_save"]
