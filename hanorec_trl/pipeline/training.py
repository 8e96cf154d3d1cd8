"""Training inside a stage folder, as the SFT and DPO stages do: from the last complete checkpoint when an unfinished
stage continues, a progress bar with the loss (and beta', eta), Ctrl-C finishing the step and saving a checkpoint,
a non-finite loss stopping training, then the adapter and the log history saved."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from ..fast.cpu_lm_head import compact_lm_head_on_cpu
from ..nonfinite import StopOnNonFinite
from .parsing import ConfigError

logger = logging.getLogger(__name__)


class StageProgress(ProgressCallback):
    """transformers' progress bar with the latest loss, beta', eta and reward accuracy as its postfix."""

    SHOWN = {"loss": "loss", "hano/beta_mean": "beta", "hano/eta": "eta", "rewards/accuracies": "acc"}

    def __init__(self, description: str):
        super().__init__()
        self.description = description

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.description)
            self.training_bar.update(state.global_step)  # a continued stage starts at its checkpoint
            self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {short: f"{logs[key]:.4g}" for key, short in self.SHOWN.items()
                 if isinstance((logs or {}).get(key), float)}
        if self.training_bar is not None and shown:
            self.training_bar.set_postfix(shown, refresh=False)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training stage after saving a checkpoint."""


class _StopAtStepEnd(TrainerCallback):
    def __init__(self):
        self.requested = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = control.should_training_stop = True
        return control


@contextlib.contextmanager
def stop_at_step_end_on_interrupt(trainer) -> Iterator[_StopAtStepEnd]:
    """The first Ctrl-C lets the optimizer step finish, saves a checkpoint and stops; a second stops at once. Only
    in one process on the main thread (under ``accelerate launch`` the processes get the signal at different points
    of a step: Ctrl-C stops at once there)."""
    callback = _StopAtStepEnd()
    if threading.current_thread() is not threading.main_thread() or trainer.accelerator.num_processes > 1:
        yield callback
        return

    def handler(signum, frame):
        if callback.requested:
            raise KeyboardInterrupt
        callback.requested = True
        print("\nCtrl-C: finishing this step, then saving a checkpoint and stopping (Ctrl-C again stops at once)",
              file=sys.stderr, flush=True)

    trainer.add_callback(callback)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield callback
    finally:
        signal.signal(signal.SIGINT, previous)
        trainer.remove_callback(callback)


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
    trainer.add_callback(StageProgress(description))
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


@contextlib.contextmanager
def without_zero3_init() -> Iterator[None]:
    """Load whole models inside, even after a DeepSpeed ZeRO-3 training registered its config with transformers
    (the main-process stages would otherwise wait forever for the other processes)."""
    try:
        import transformers.integrations.deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


__all__ = ["StageProgress", "TrainingInterrupted", "compact_lm_head_on_cpu", "resume_point",
           "stop_at_step_end_on_interrupt", "train_in_stage", "without_zero3_init"]


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
