"""Trainer callbacks for long runs of any transformers / TRL trainer: a progress bar that shows the loss, beta' and
eta (``hano/*`` logs of :class:`~hanorec_trl.HaNoDPOTrainer`), and a Ctrl-C that finishes the optimizer step and
saves a checkpoint before stopping (:func:`stop_at_step_end_on_interrupt`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from transformers import ProgressCallback, TrainerCallback


class TrainingProgress(ProgressCallback):
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


__all__ = ["TrainingInterrupted", "TrainingProgress", "stop_at_step_end_on_interrupt"]
