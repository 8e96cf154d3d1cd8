"""Nothing non-finite is applied to the weights or saved (``docs/trainer.md``, "Differences from DPOTrainer").

:class:`HaNoDPOTrainer <hanorec_trl.HaNoDPOTrainer>` checks three points of every optimizer step:

1. before the optimizer runs: the step's losses (all micro-batches, all processes) and the gradient norm. A
   non-finite one skips the update (every gradient is dropped, so the optimizer changes neither the weights nor its
   state), with a warning naming the step and the count logged as ``hano/nonfinite_steps``; at the
   ``max_nonfinite_steps``-th such step in a row training stops with :class:`NonFiniteTrainingError`;
2. after the optimizer ran: the trainable weights. Non-finite weights (e.g. a user's optimizer that produced them)
   stop training at once;
3. before any save (checkpoint or ``save_model``): the trainable weights again; a non-finite tensor is never written.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from transformers import TrainerCallback

__all__ = ["NonFiniteTrainingError", "StopOnNonFinite", "nonfinite_tensors"]


class NonFiniteTrainingError(FloatingPointError):
    """Training produced a non-finite loss, gradient norm or weight; the message names the step and the causes."""


USUAL_CAUSES = ("a learning rate or beta too large, lambda values that are too large (the hardness column), fp16 "
                "overflow")


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity (one device synchronisation per device)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for name, tensor in named:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's own shard
        if local.numel():
            by_device[local.device].append((name, local.detach()))
    bad = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in items]).tolist()
        bad += [name for (name, _), ok in zip(items, finite, strict=True) if not ok]
    return bad


class NonFiniteSteps:
    """Counts the optimizer steps whose loss or gradient norm was not finite (consecutive and in all)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.total = 0
        self.first_of_run: int | None = None  # first step of the current run of non-finite steps

    def finite(self) -> None:
        self.consecutive, self.first_of_run = 0, None

    def nonfinite(self, step: int) -> bool:
        """Records a non-finite step; True when training must stop (``limit`` in a row)."""
        self.consecutive += 1
        self.total += 1
        if self.first_of_run is None:
            self.first_of_run = step
        return self.consecutive >= self.limit


def describe(value: float) -> str:
    return str(value) if not math.isfinite(value) else f"{value:g}"


class WeightsFiniteCallback(TrainerCallback):
    """Runs the trainer's check of the trainable weights right after each optimizer step (point 2 above)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._check_weights_finite(f"the optimizer step {state.global_step + 1}")


class StopOnNonFinite(TrainerCallback):
    """For trainers other than ``HaNoDPOTrainer`` (which checks every step itself), e.g. TRL's ``SFTTrainer``: stops
    training when a logged loss or gradient norm is not finite, before that step's checkpoint is written."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("grad_norm", "loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteTrainingError(
                    f"training stopped at step {state.global_step}: the {key.replace('_', ' ')} is {value} (not "
                    f"finite). Usual causes: {USUAL_CAUSES}. The checkpoints before it (in {args.output_dir}) are "
                    "intact.")

