"""Helpers around the TRL trainers of the SFT and DPO stages: CPU speed, progress display, checkpoints."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def compact_lm_head_on_cpu() -> Iterator[bool]:
    """Let TRL's fused LM head score only the labelled positions on CPU as well.

    TRL 1.16's fused LM head (``add_fused_lm_head``, used by ``SFTTrainer`` and by ``DPOTrainer``'s log-probs) projects
    only the positions whose label is not -100 when Triton is available, and *every* position elsewhere, so that
    compiled tile shapes stay fixed on devices that compile. A CPU compiles nothing, and there scoring every position
    of a ~300-token recommendation prompt through Qwen's 151,665-token vocabulary dominates each step (measured on a
    tiny Qwen2.5-VL, 4 x 320 tokens, 20 labelled per row: 34 s forward + backward, 3.7 s compact). Inside this
    context CPU tensors take the compact branch; the numbers are the same (the per-token values do not depend on
    which positions are projected; ``tests/test_pipeline_config.py`` checks loss and gradients). Other devices keep
    TRL's choice. Yields whether the switch could be installed (False, with a log line, if TRL's internals moved).
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover
        yield False
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        logger.info("TRL's fused LM head has no _use_triton switch in this version: CPU steps score every position")
        yield False
        return

    def use_compact(device) -> bool:
        return getattr(device, "type", None) == "cpu" or original(device)

    trl_utils._use_triton = use_compact
    try:
        yield True
    finally:
        trl_utils._use_triton = original


@contextlib.contextmanager
def without_zero3_init() -> Iterator[None]:
    """Load whole (unsharded) models inside, even after a DeepSpeed ZeRO-3 training stage.

    A ZeRO-3 ``TrainingArguments`` registers a global DeepSpeed config with transformers, after which
    ``from_pretrained`` partitions weights with collective calls; the main-process-only stages (item encoding,
    evaluation) must load the whole model instead, or they would wait forever for the other processes.
    """
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


class StageProgressCallback(ProgressCallback):
    """transformers' progress bar with the latest loss (and HaNoRec's beta'/eta) as its postfix, instead of one
    printed dict per logging step."""

    SHOWN = {"loss": "loss", "hano/beta_mean": "beta", "hano/eta": "eta", "rewards/accuracies": "acc"}

    def __init__(self, description: str):
        super().__init__()
        self.description = description

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.description)
            self.training_bar.update(state.global_step)  # resumed runs start at their checkpoint
            self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not logs:
            return
        shown = {short: f"{logs[key]:.4g}" for key, short in self.SHOWN.items() if isinstance(logs.get(key), float)}
        if shown:
            self.training_bar.set_postfix(shown, refresh=False)


def use_stage_progress(trainer, description: str) -> None:
    """Replace the trainer's progress bar (or its log printer) with :class:`StageProgressCallback`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StageProgressCallback(description))


def last_checkpoint(folder: Path, *, hano_state: bool = False) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest *complete* ``checkpoint-N`` folder in a trainer output folder (or None), and the newer incomplete
    ones, as ``(path, why)``: a save interrupted by a kill (no ``trainer_state.json``, a truncated adapter, no
    ``hano_state.json`` when ``hano_state``) is skipped for the previous complete one."""
    from ..checkpoints import last_complete_checkpoint

    return last_complete_checkpoint(folder, hano_state=hano_state)


class StopOnNonFinite(TrainerCallback):
    """Stops training with :class:`~hanorec_trl.trainer.NonFiniteTrainingError` naming the step when a logged gradient
    norm or loss is NaN or inf (for trainers other than ``HaNoDPOTrainer``, which checks every step before the
    optimizer applies it). Runs before that step's checkpoint is written."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import math

        from ..trainer import NonFiniteTrainingError

        for key in ("grad_norm", "loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteTrainingError(
                    f"training stopped at step {state.global_step}: the {key.replace('_', ' ')} is {value} (not "
                    "finite). Usual causes: a learning rate too large, fp16 overflow. The checkpoint of this step "
                    f"was not written; those before it (in {args.output_dir}) are intact."
                )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training stage; ``checkpoint`` is the checkpoint saved at the step it stopped (or None)."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class InterruptRequest:
    requested: bool = False
    step: int | None = None


class _StopAtStepEnd(TrainerCallback):
    def __init__(self, request: InterruptRequest):
        self.request = request

    def on_step_end(self, args, state, control, **kwargs):
        if self.request.requested:
            self.request.step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


@contextlib.contextmanager
def stop_at_step_end_on_interrupt(trainer) -> Iterator[InterruptRequest]:
    """Inside: the first Ctrl-C (SIGINT) lets the current optimizer step finish, saves a checkpoint and stops
    training (``request.requested`` is then True); a second Ctrl-C stops at once (``KeyboardInterrupt``).

    Only in a single process and the main thread (under ``accelerate launch`` every process receives the signal at
    its own point of the step, so a coordinated checkpoint cannot be promised: Ctrl-C stops at once there).
    """
    request = InterruptRequest()
    if threading.current_thread() is not threading.main_thread() or trainer.accelerator.num_processes > 1:
        yield request
        return

    def handler(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        print("\nCtrl-C: finishing this step, then saving a checkpoint and stopping (Ctrl-C again stops at once, "
              "without a checkpoint)", file=sys.stderr, flush=True)

    callback = _StopAtStepEnd(request)
    trainer.add_callback(callback)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
        trainer.remove_callback(callback)


__all__ = ["StageProgressCallback", "StopOnNonFinite", "TrainingInterrupted", "compact_lm_head_on_cpu",
           "last_checkpoint", "stop_at_step_end_on_interrupt", "use_stage_progress", "without_zero3_init"]
