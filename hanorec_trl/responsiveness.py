"""Online model responsiveness eta (paper Eq. 7-8, pinned down in ``docs/design.md``), and beta-DPO's batch beta.

eta is one scalar per batch, computed from the batch's reward gaps ``R_i = beta0 * delta_i`` (Eq. 7). Batches
whose gaps run above the data's running average get ``eta > 1`` (a larger beta, a smaller update), batches below it
``eta < 1`` (more optimisation). ``mode="beta_dpo"`` is beta-DPO's rule (Wu et al. 2024, arXiv 2407.08639, Sec. 4):
``eta = 1 + alpha * (mean_i delta_i - M_0)`` against a moving-average threshold ``M_0`` (``docs/trainer.md``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

RESPONSIVENESS_MODES = ("ema", "batch", "beta_dpo")


def sigmoid(x):
    """The logistic function without overflow for large ``|x|``: a float for a scalar, a float64 array for an
    array (the lambda of Eq. 6 and the eta of Eq. 8 both use it)."""
    if np.ndim(x) == 0:
        x = float(x)
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        z = math.exp(x)
        return z / (1.0 + z)
    x = np.asarray(x, dtype=np.float64)
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def trimmed_mean(values: torch.Tensor) -> float:
    """Mean after dropping the single lowest and the single highest value (Eq. 8's mask M); plain mean if < 3."""
    values = values.flatten().double()
    if values.numel() < 3:
        return values.mean().item()
    return ((values.sum() - values.min() - values.max()) / (values.numel() - 2)).item()


class ResponsivenessTracker:
    """Turns each batch's reward gaps into eta (Eq. 7-8; ``docs/design.md``).

    ``mode="ema"`` (default) keeps running estimates of the gap scale ``s`` and of the data's average normalised gap
    ``m_data``; the first informative batch gives eta = 1 and the first ``warmup`` informative batches return 1 while
    the estimates settle. ``mode="batch"`` is the authors' released formula, ``sigmoid(trimmed_mean(R / mean(R))) /
    sigmoid(1)`` on each batch, kept for reproduction (it returns 1 when ``|mean(R)| < eps``).

    ``mode="beta_dpo"`` is beta-DPO's batch-level beta (arXiv 2407.08639, Sec. 4.1): with the batch's mean log-ratio
    margin ``d = mean(R) / beta0`` (the discrepancy the authors' code measures), ``eta = 1 + alpha * (d - M_0)``,
    then ``M_0 <- momentum * M_0 + (1 - momentum) * d``; the first informative batch sets ``M_0 = d`` (eta = 1).
    eta may go below 0; the trainer's ``beta_floor`` (and ``eta_min``) bound the resulting beta.

    Example:

    ```python
    >>> tracker = ResponsivenessTracker(warmup=0)
    >>> tracker.update(torch.tensor([0.0, 0.0]))   # no signal yet: state unchanged
    1.0
    >>> tracker.update(torch.tensor([0.1, 0.3]))   # first informative batch
    1.0
    ```

    Call :meth:`update` with the reward gaps of all processes (gathered), so that every rank computes the same eta.
    The state round-trips through :meth:`state_dict` / :meth:`load_state_dict`.
    """

    def __init__(
        self,
        momentum: float = 0.9,
        eps: float = 1e-6,
        warmup: int = 10,
        eta_min: float | None = None,
        eta_max: float | None = None,
        mode: str = "ema",
        alpha: float = 0.6,
        beta0: float = 1.0,
    ):
        if mode not in RESPONSIVENESS_MODES:
            raise ValueError(f"responsiveness mode must be one of {RESPONSIVENESS_MODES}, got {mode!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"responsiveness momentum must be in [0, 1), got {momentum}")
        if eps <= 0:
            raise ValueError(f"responsiveness eps must be > 0, got {eps}")
        if warmup < 0:
            raise ValueError(f"responsiveness warmup must be >= 0, got {warmup}")
        if eta_min is not None and eta_max is not None and eta_min > eta_max:
            raise ValueError(f"eta_min ({eta_min}) is larger than eta_max ({eta_max})")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"beta-DPO alpha must be a finite number >= 0, got {alpha}")
        if not (math.isfinite(beta0) and beta0 > 0):
            raise ValueError(f"beta0 must be a finite number > 0, got {beta0}")
        self.momentum = momentum
        self.eps = eps
        self.warmup = warmup
        self.eta_min = eta_min
        self.eta_max = eta_max
        self.mode = mode
        self.alpha = alpha
        self.beta0 = beta0
        self.scale = 0.0  # s: running mean of |R|
        self.data_mean = 0.0  # m_data: running mean of the trimmed normalised gaps ("ema"); M_0 ("beta_dpo")
        self.steps = 0  # t: informative batches seen
        self.last_eta = 1.0
        self.uninformative = 0  # batches with mean |R| < eps since the last informative one (not checkpointed)
        self.largest_magnitude = 0.0  # largest mean |R| seen by this instance (diagnostics, not checkpointed)

    def _clamp(self, eta: float) -> float:
        if self.eta_min is not None:
            eta = max(eta, self.eta_min)
        if self.eta_max is not None:
            eta = min(eta, self.eta_max)
        return eta

    def update(self, reward_gaps: torch.Tensor) -> float:
        """Consumes one batch's reward gaps ``R`` (1-D, all processes) and returns eta for that batch (Eq. 8)."""
        gaps = torch.as_tensor(reward_gaps).detach().flatten().double().cpu()
        if gaps.numel() == 0:
            raise ValueError("ResponsivenessTracker.update got an empty batch of reward gaps")
        if not torch.isfinite(gaps).all():
            bad = torch.nonzero(~torch.isfinite(gaps)).flatten().tolist()
            raise ValueError(f"non-finite reward gaps at batch positions {bad[:10]}: {gaps[bad[:10]].tolist()}")
        magnitude = gaps.abs().mean().item()
        self.largest_magnitude = max(self.largest_magnitude, magnitude)
        informative = (abs(gaps.mean().item()) if self.mode == "batch" else magnitude) >= self.eps
        self.uninformative = 0 if informative else self.uninformative + 1
        if not informative:  # no signal (e.g. policy == reference): state unchanged
            return 1.0
        update = {"batch": self._update_batch, "ema": self._update_ema, "beta_dpo": self._update_beta_dpo}[self.mode]
        eta = update(gaps)
        self.last_eta = eta
        return eta

    def _after_warmup(self, eta: float) -> float:
        self.steps += 1
        return 1.0 if self.steps <= self.warmup else self._clamp(eta)

    def _update_batch(self, gaps: torch.Tensor) -> float:
        mean = gaps.mean().item()
        return self._after_warmup(sigmoid(trimmed_mean(gaps / mean)) / sigmoid(1.0))

    def _update_beta_dpo(self, gaps: torch.Tensor) -> float:
        margin = gaps.mean().item() / self.beta0
        if self.steps == 0:
            self.data_mean = margin
        eta = 1.0 + self.alpha * (margin - self.data_mean)
        self.data_mean = self.momentum * self.data_mean + (1 - self.momentum) * margin
        return self._after_warmup(eta)

    def _update_ema(self, gaps: torch.Tensor) -> float:
        magnitude = gaps.abs().mean().item()
        mu = self.momentum
        self.scale = magnitude if self.steps == 0 else mu * self.scale + (1 - mu) * magnitude
        batch_mean = trimmed_mean(gaps / self.scale)
        if self.steps == 0:
            self.data_mean = batch_mean
        eta = sigmoid(batch_mean) / sigmoid(self.data_mean)
        self.data_mean = mu * self.data_mean + (1 - mu) * batch_mean
        return self._after_warmup(eta)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scale": self.scale,
            "data_mean": self.data_mean,
            "steps": self.steps,
            "last_eta": self.last_eta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(
                f"responsiveness state was saved with mode {state['mode']!r} but this tracker uses {self.mode!r}"
            )
        self.scale = float(state["scale"])
        self.data_mean = float(state["data_mean"])
        self.steps = int(state["steps"])
        self.last_eta = float(state.get("last_eta", 1.0))

    def __repr__(self) -> str:
        return (
            f"ResponsivenessTracker(mode={self.mode!r}, momentum={self.momentum}, warmup={self.warmup}, "
            f"steps={self.steps}, scale={self.scale:.4g}, data_mean={self.data_mean:.4g})"
        )
