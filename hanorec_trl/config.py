"""``HaNoDPOConfig``: TRL's ``DPOConfig`` plus the HaNoRec fields (paper Sec. 3, Eq. 4-12; ``docs/trainer.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DPOConfig

from .noise import NOISE_MODES
from .responsiveness import RESPONSIVENESS_MODES

# Loss types whose per-sample beta' is exactly Eq. 12 ("sft" adds an NLL term that does not involve beta).
HANO_LOSS_TYPES = {"sigmoid", "sft"}


@dataclass
class HaNoDPOConfig(DPOConfig):
    r"""
    Configuration for [`HaNoDPOTrainer`]: every [`~trl.DPOConfig`] field plus the HaNoRec ones.

    beta0 of the paper is TRL's `beta`. Each pair i is trained with the sigmoid DPO loss at
    `beta'_i = max(eta_B * lambda_i * beta0, beta_floor)` (Eq. 11-12), where `lambda_i` is the offline hardness read
    from the dataset column `hardness_column` (Eq. 4-6) and `eta_B` the online responsiveness of the current batch
    (Eq. 7-8). During each training step the policy's LoRA matrices carry Gaussian noise (NoDO, Eq. 10).

    Switching everything off (`use_hardness=False, use_responsiveness=False, lora_noise_std=0`) gives exactly
    [`~trl.DPOTrainer`] ("w/o ALL" in the paper's ablation).

    Parameters:
        use_hardness (`bool`, defaults to `True`): read lambda from `hardness_column` (HaRS, Eq. 4-6); off: lambda = 1.
        hardness_column (`str`, defaults to `"hano_lambda"`): dataset column holding lambda per row.
        lambda_max (`float`, defaults to `100.0`): largest lambda accepted in `hardness_column`; a larger value is
            refused with its row (Eq. 6 gives values below 10 for cosine similarities). `inf` disables the bound.
        use_responsiveness (`bool`, defaults to `True`): compute eta per batch (Eq. 7-8); off: eta = 1.
        responsiveness (`str`, defaults to `"ema"`): `"ema"` (Eq. 8 as in `docs/design.md`) or `"batch"` (the
            released code's formula).
        responsiveness_momentum (`float`, defaults to `0.9`): momentum of the running statistics of `"ema"`.
        responsiveness_warmup (`int`, defaults to `10`): informative batches with eta = 1 while the statistics settle.
        responsiveness_eps (`float`, defaults to `1e-6`): reward-gap magnitude below which a batch carries no signal.
        eta_min / eta_max (`float`, *optional*): bounds on eta (off by default).
        beta_floor (`float`, defaults to `1e-6`): lower bound of beta'.
        lora_noise_std (`float`, defaults to `0.01`): sigma_n of NoDO (Eq. 10); 0 disables it. The paper's 0.1 is
            destructive on real models (see docs/trainer.md).
        lora_noise_mode (`str`, defaults to `"absolute"`): `"absolute"` (paper) or `"relative"` (sigma x RMS of each
            matrix).
        lora_noise_seed (`int`, *optional*): seed of the noise; defaults to `seed`.
        fast_prompt_once (`bool`, defaults to `True`): pack each prompt once with all its completions (exact; see
            docs/fast_path.md); falls back to TRL's batches, with a log line, where it does not apply.
        fast_vision_cache (`bool`, defaults to `True`): compute each distinct image's features once when the vision
            tower is frozen.
        vision_cache_dir (`str`, *optional*): folder for a persistent vision feature cache.
        vision_cache_device (`str`, defaults to `"cpu"`): where cached features live (`"cpu"` or `"model"`).
        fast_ref_cache (`bool`, defaults to `True`): compute the reference log-probs of every row once before
            training (exact: the reference is fixed), also for vision datasets.
    """

    use_hardness: bool = field(
        default=True,
        metadata={"help": "Scale beta by the offline hardness lambda read from `hardness_column` (HaRS, Eq. 4-6)."},
    )
    hardness_column: str = field(
        default="hano_lambda",
        metadata={"help": "Dataset column holding the per-row hardness lambda (see hanorec_trl.add_hardness_column)."},
    )
    lambda_max: float = field(
        default=100.0,
        metadata={"help": "Largest hardness lambda accepted in `hardness_column` (Eq. 6 gives values below 10); a "
                  "larger value is refused with its row. inf disables the bound."},
    )
    use_responsiveness: bool = field(
        default=True,
        metadata={"help": "Scale beta by the online responsiveness eta of each batch (Eq. 7-8)."},
    )
    responsiveness: str = field(
        default="ema",
        metadata={
            "help": "How eta is computed: 'ema' (running statistics, docs/design.md) or 'batch' (the authors' released "
            "per-batch formula).",
            "choices": list(RESPONSIVENESS_MODES),
        },
    )
    responsiveness_momentum: float = field(
        default=0.9, metadata={"help": "Momentum of the running gap scale and data mean used by eta ('ema')."}
    )
    responsiveness_warmup: int = field(
        default=10,
        metadata={"help": "Number of informative batches during which eta is held at 1 while its statistics settle."},
    )
    responsiveness_eps: float = field(
        default=1e-6, metadata={"help": "Mean |reward gap| below which a batch carries no signal (eta = 1)."}
    )
    eta_min: float | None = field(default=None, metadata={"help": "Lower bound on eta (off by default)."})
    eta_max: float | None = field(default=None, metadata={"help": "Upper bound on eta (off by default)."})
    beta_floor: float = field(default=1e-6, metadata={"help": "Lower bound of the adaptive beta' (Eq. 11)."})
    lora_noise_std: float = field(
        default=0.01,
        metadata={
            "help": "Std of the Gaussian noise on the LoRA matrices during each training step (NoDO, Eq. 10); 0 "
            "disables it. The paper uses 0.1, which is destructive on real models: see docs/trainer.md."
        },
    )
    lora_noise_mode: str = field(
        default="absolute",
        metadata={
            "help": "'absolute' (noise std = lora_noise_std, as in the paper) or 'relative' (std x RMS of each "
            "matrix).",
            "choices": list(NOISE_MODES),
        },
    )
    lora_noise_seed: int | None = field(
        default=None, metadata={"help": "Seed of the LoRA noise (defaults to `seed`)."}
    )

    fast_prompt_once: bool = field(
        default=True,
        metadata={
            "help": "Run each prompt once per batch and score all its completions against it (exact; falls back to "
            "TRL's batches where it does not apply)."
        },
    )
    fast_vision_cache: bool = field(
        default=True,
        metadata={"help": "Cache each distinct image's visual features when the vision tower is frozen (exact)."},
    )
    vision_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder for a persistent vision feature cache (default: memory only)."}
    )
    vision_cache_device: str = field(
        default="cpu",
        metadata={"help": "Where cached visual features live: 'cpu' or 'model' (the model's device).",
                  "choices": ["cpu", "model"]},
    )
    fast_ref_cache: bool = field(
        default=True,
        metadata={
            "help": "Compute the reference log-probs of every row once before training (exact: the reference is "
            "fixed); works for vision datasets, which TRL's precompute_ref_log_probs refuses."
        },
    )

    def _check_values(self) -> None:
        """Refuse numbers that would train nothing (beta' at the floor) or blow up; the message names the field."""

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            return float(value)

        checks = {
            "beta": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0 (beta0 of Eq. 11; beta <= 0 trains "
                     "every pair at beta_floor)"),
            "beta_floor": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
            "lora_noise_std": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0 disables NoDO)"),
            "responsiveness_eps": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
            "responsiveness_momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
            "lambda_max": (lambda v: v > 0, "a number > 0 (inf: no bound)"),
        }
        for name, (ok, what) in checks.items():
            value = number(name)
            if not ok(value):
                raise ValueError(f"{name} must be {what}, got {value}")
        warmup = self.responsiveness_warmup
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"responsiveness_warmup must be an integer >= 0, got {warmup!r}")
        if self.eta_min is not None:
            value = number("eta_min")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"eta_min must be a finite number >= 0 (or None), got {value}")
        if self.eta_max is not None:
            value = number("eta_max")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"eta_max must be a finite number > 0 (or None; 0 would set every beta' to "
                                 f"beta_floor), got {value}")

    @property
    def uses_adaptive_beta(self) -> bool:
        """True when beta varies per sample or per batch (hardness or responsiveness on)."""
        return self.use_hardness or self.use_responsiveness

    def __post_init__(self):
        super().__post_init__()
        self._check_values()
        if self.responsiveness not in RESPONSIVENESS_MODES:
            raise ValueError(f"responsiveness must be one of {RESPONSIVENESS_MODES}, got {self.responsiveness!r}")
        if self.lora_noise_mode not in NOISE_MODES:
            raise ValueError(f"lora_noise_mode must be one of {NOISE_MODES}, got {self.lora_noise_mode!r}")
        if self.vision_cache_device not in ("cpu", "model"):
            raise ValueError(f"vision_cache_device must be 'cpu' or 'model', got {self.vision_cache_device!r}")
        if self.eta_min is not None and self.eta_max is not None and self.eta_min > self.eta_max:
            raise ValueError(f"eta_min ({self.eta_min}) is larger than eta_max ({self.eta_max})")
        if not self.uses_adaptive_beta:
            return
        # beta' is per sample and changes every batch: only losses where beta multiplies each pair's own margin
        # (Eq. 12) are exact with it.
        unsupported = [t for t in self.loss_type if t not in HANO_LOSS_TYPES]
        if unsupported:
            raise ValueError(
                f"loss_type {unsupported} cannot be used with a per-sample beta' (use_hardness/use_responsiveness): "
                "HaNoRec's loss is the sigmoid DPO loss (Eq. 12). Use loss_type='sigmoid' (optionally with 'sft'), or "
                "switch use_hardness and use_responsiveness off to train that loss as plain TRL does."
            )
        if self.ld_alpha is not None:
            raise ValueError(
                "ld_alpha (LD-DPO length weighting) is not supported with HaNoRec's per-sample beta': it changes the "
                "log-probabilities that the reward gaps of eta (Eq. 7) are computed from. Set ld_alpha=None, or switch "
                "use_hardness and use_responsiveness off."
            )
        if self.f_divergence_type != "reverse_kl":
            raise ValueError(
                f"f_divergence_type={self.f_divergence_type!r} is not supported with HaNoRec's per-sample beta': "
                "Eq. 7 defines the reward gap through the reverse-KL log-ratio. Use f_divergence_type='reverse_kl', "
                "or switch use_hardness and use_responsiveness off."
            )
