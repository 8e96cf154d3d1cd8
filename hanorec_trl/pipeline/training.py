"""Training inside a stage folder, as the SFT and DPO stages do: from the last complete checkpoint when an unfinished
stage continues, with the library's progress bar, Ctrl-C and non-finite callbacks, then the adapter and the log
history saved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, ProgressCallback

from ..callbacks import TrainingInterrupted, TrainingProgress, stop_at_step_end_on_interrupt
from ..fast.cpu_lm_head import compact_lm_head_on_cpu
from ..nonfinite import StopOnNonFinite
from .parsing import ConfigError


def resume_point(trainer, folder: Path) -> str | None:
    """The newest complete checkpoint in ``folder``; newer incomplete ones (a save cut by a kill) are deleted
    (the trainer wrote them), so that training continues from the previous complete one."""
    from ..checkpoints import last_complete_checkpoint
    from .running import process_state, say

    need_state = bool(getattr(trainer.args, "use_responsiveness", False))  # HaNoDPOTrainer's eta state
    found, incomplete = last_complete_checkpoint(folder, hano_state=need_state)
    for path, why in incomplete:
        say(f"        {path} is incomplete ({why}): continuing from {found or 'the start'}")
    state = process_state()
    state.wait_for_everyone()
    if state.is_main_process:
        for path, _ in incomplete:
            shutil.rmtree(path)
    state.wait_for_everyone()
    return found


def _restore_final(trainer, checkpoint: Path) -> None:
    """Load the adapter of a checkpoint at ``max_steps`` (transformers would train one step past it on resume)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(trainer.model, load_file(str(checkpoint / "adapter_model.safetensors")))
    trainer.state = type(trainer.state).load_from_json(str(checkpoint / "trainer_state.json"))


def train_in_stage(trainer, folder: Path, description: str, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train into ``folder/trainer`` (continuing its last complete checkpoint), then save ``folder/adapter`` and
    ``folder/log_history.json``; a first Ctrl-C saves a checkpoint and raises :class:`TrainingInterrupted`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainingProgress(description))
    trainer.add_callback(StopOnNonFinite())
    checkpoint = resume_point(trainer, folder / "trainer")
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text()) if checkpoint else {}
    train_loss = None
    if checkpoint and state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]:
        _restore_final(trainer, Path(checkpoint))
    else:
        with compact_lm_head_on_cpu(), stop_at_step_end_on_interrupt(trainer) as interrupt:
            train_loss = trainer.train(resume_from_checkpoint=checkpoint).training_loss
        if interrupt.requested:
            raise TrainingInterrupted(f"{description} stopped at step {trainer.state.global_step} (Ctrl-C); a "
                                      f"checkpoint was saved in {folder / 'trainer'}")
    trainer.save_model(str(folder / "adapter"))
    if trainer.accelerator.is_main_process:
        (folder / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    return {"steps": trainer.state.global_step, "train_loss": train_loss, "resumed_from": checkpoint,
            "train_rows": len(trainer.train_dataset), **(stats or {})}


def check_max_length(dataset, processing_class, max_length: int | None, field: str) -> None:
    """Refuse a ``max_length`` below the shortest prompt + completion: every row would be truncated or dropped."""
    if max_length is None:
        return
    from ..data.builders import shortest_example

    row, length = shortest_example(dataset, processing_class)
    if max_length < length:
        raise ConfigError(f"{field} {max_length} is shorter than every row of the dataset (the shortest, row {row}, "
                         f"has at least {length} tokens): training would see no complete example. Raise it, or set "
                         "it to None")


__all__ = ["check_max_length", "resume_point", "train_in_stage"]
