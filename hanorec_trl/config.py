"""``HaNoDPOConfig``: TRL's ``DPOConfig`` plus the HaNoRec fields (paper Sec. 3, Eq. 4-12; ``docs/trainer.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DPOConfig

from .noise import NOISE_MODES
from .responsiveness import RESPONSIVENESS_MODES

# TRL losses that sort the batch's log-ratios (TRL 1.16 ``_compute_loss``): a per-pair beta' would no longer line up
# with its pair, so the trainer hands TRL the batch's mean beta' as one number when one of them is in ``loss_type``.
SORTING_LOSS_TYPES = frozenset({"aot", "aot_unpaired"})
DEFAULT_HARDNESS_COLUMN = "hano_lambda"
# NoDO noise at or above these swamps the adapter (docs/nodo.md): absolute = 10x the paper's already destructive 0.1;
# relative = noise 100x each LoRA matrix (relative 1.0 ~ absolute 0.01 on SmolLM2).
NOISE_STD_LIMITS = {"absolute": 1.0, "relative": 100.0}
SEED_MAX = 2**32 - 1  # numpy's RandomState (transformers' set_seed) takes seeds in [0, 2**32 - 1]


@dataclass
class HaNoDPOConfig(DPOConfig):
    r"""
    Configuration for [`HaNoDPOTrainer`]: every [`~trl.DPOConfig`] field plus the HaNoRec ones.

    beta0 of the paper is TRL's `beta`. Each pair i is trained at `beta'_i = max(eta_B * lambda_i * beta0, beta_floor)`
    (Eq. 11) wherever TRL's loss uses beta (every `loss_type`; `docs/trainer.md` says how beta' enters each), where
    `lambda_i` is the offline hardness read from a dataset column (Eq. 4-6) and `eta_B` the online responsiveness of
    the current batch (Eq. 7-8, or beta-DPO's rule with `responsiveness="beta_dpo"`). During each training step the
    policy's LoRA matrices carry Gaussian noise (NoDO, Eq. 10).

    Switching everything off (`use_hardness=False, use_responsiveness=False, lora_noise_std=0`) gives exactly
    [`~trl.DPOTrainer`] ("w/o ALL" in the paper's ablation).

    Parameters:
        use_hardness (`bool`, defaults to `True`): read lambda from the hardness column (HaRS, Eq. 4-6); off:
            lambda = 1.
        hardness_column (`str`, *optional*): dataset column holding lambda per row. Unset (`None`): `"hano_lambda"`
            when the dataset has it, else lambda = 1 with one warning (a plain TRL dataset trains as with
            `use_hardness=False`). Set to a name: that column is required.
        lambda_max (`float`, defaults to `100.0`): largest lambda accepted in the hardness column; a larger value is
            refused with its row (Eq. 6 gives values below 10 for cosine similarities). `inf` disables the bound.
        use_responsiveness (`bool`, defaults to `True`): compute eta per batch (Eq. 7-8); off: eta = 1.
        responsiveness (`str`, defaults to `"ema"`): `"ema"` (Eq. 8 as in `docs/design.md`), `"batch"` (the released
            code's formula) or `"beta_dpo"` (beta-DPO, arXiv 2407.08639: `eta = 1 + beta_dpo_alpha * (mean margin -
            M_0)` against a moving average `M_0`).
        beta_dpo_alpha (`float`, defaults to `0.6`): beta-DPO's scaling factor alpha (`responsiveness="beta_dpo"`).
        responsiveness_momentum (`float`, defaults to `0.9`): momentum of the running statistics (`"ema"`; `M_0` of
            `"beta_dpo"`).
        responsiveness_warmup (`int`, defaults to `10`): informative batches with eta = 1 while the statistics settle.
        responsiveness_eps (`float`, defaults to `1e-6`): mean |reward gap| below which a batch carries no signal.
        eta_min / eta_max (`float`, *optional*): bounds on eta (off by default).
        beta_floor (`float`, defaults to `1e-6`): lower bound of beta'; must be below `beta`.
        lora_noise_std (`float`, defaults to `0.01`): sigma_n of NoDO (Eq. 10); 0 disables it; below 1 (absolute)
            or 100 (relative). The paper's
            0.1 is destructive on real models (see docs/nodo.md). A model without LoRA adapters trains without noise
            (one warning).
        lora_noise_mode (`str`, defaults to `"absolute"`): `"absolute"` (paper) or `"relative"` (sigma x RMS of each
            matrix).
        lora_noise_seed (`int`, *optional*): seed of the noise; defaults to `seed`.
        max_nonfinite_steps (`int`, defaults to `3`): an optimizer step whose loss or gradient norm is not finite is
            skipped (nothing applied) with a warning; training stops with `NonFiniteTrainingError` at the
            `max_nonfinite_steps`-th such step in a row (1: at the first one). See docs/trainer.md.
        fast_prompt_once (`bool`, defaults to `True`): pack each prompt once with all its completions (exact; see
            docs/fast_path.md); falls back to TRL's batches, with a log line, where it does not apply.
        fast_vision_cache (`bool`, defaults to `True`): compute each distinct image's features once when the vision
            tower is frozen.
        vision_cache_dir (`str`, *optional*): folder for a persistent vision feature cache.
        vision_cache_device (`str`, defaults to `"cpu"`): where cached features live (`"cpu"` or `"model"`).
        fast_ref_cache (`bool`, defaults to `True`): compute the reference log-probs of every row once before
            training (exact: the reference is fixed), also for vision datasets.

    `__post_init__` validates every HaNo field, the `DPOConfig` / `TrainingArguments` numbers that TRL and
    transformers accept unchecked (NaN learning rate or weight decay, negative seeds, a fractional `max_steps`, ...)
    and the combinations that would make a HaNo term train nothing; each error starts with the field's name.
    """

    use_hardness: bool = field(
        default=True,
        metadata={"help": "Scale beta by the offline hardness lambda read from the hardness column (HaRS, Eq. 4-6)."},
    )
    hardness_column: str | None = field(
        default=None,
        metadata={"help": "Dataset column holding the per-row hardness lambda (see hanorec_trl.add_hardness_column). "
                  "Unset: 'hano_lambda' when the dataset has it, else lambda = 1 with a warning; set: required."},
    )
    lambda_max: float = field(
        default=100.0,
        metadata={"help": "Largest hardness lambda accepted in the hardness column (Eq. 6 gives values below 10); a "
                  "larger value is refused with its row. inf disables the bound."},
    )
    use_responsiveness: bool = field(
        default=True,
        metadata={"help": "Scale beta by the online responsiveness eta of each batch (Eq. 7-8)."},
    )
    responsiveness: str = field(
        default="ema",
        metadata={
            "help": "How eta is computed: 'ema' (running statistics, docs/design.md), 'batch' (the authors' released "
            "per-batch formula) or 'beta_dpo' (beta-DPO's batch beta, arXiv 2407.08639).",
            "choices": list(RESPONSIVENESS_MODES),
        },
    )
    beta_dpo_alpha: float = field(
        default=0.6, metadata={"help": "beta-DPO's scaling factor alpha (responsiveness='beta_dpo')."}
    )
    responsiveness_momentum: float = field(
        default=0.9, metadata={"help": "Momentum of the running statistics used by eta ('ema', 'beta_dpo')."}
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
    beta_floor: float = field(
        default=1e-6, metadata={"help": "Lower bound of the adaptive beta' (Eq. 11); must be below beta."}
    )
    lora_noise_std: float = field(
        default=0.01,
        metadata={
            "help": "Std of the Gaussian noise on the LoRA matrices during each training step (NoDO, Eq. 10); 0 "
            "disables it; below 1 (absolute) or 100 (relative). The paper uses 0.1, which is destructive on real "
            "models: see docs/nodo.md."
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
    max_nonfinite_steps: int = field(
        default=3,
        metadata={"help": "Optimizer steps with a non-finite loss or gradient norm are skipped with a warning; "
                  "training stops at the max_nonfinite_steps-th such step in a row (1: at the first)."},
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

    @property
    def uses_adaptive_beta(self) -> bool:
        """True when beta varies per sample or per batch (hardness or responsiveness on)."""
        return self.use_hardness or self.use_responsiveness

    @property
    def lambda_column(self) -> str:
        """The dataset column lambda is read from (``hardness_column``, or ``"hano_lambda"`` when unset)."""
        return self.hardness_column if self.hardness_column is not None else DEFAULT_HARDNESS_COLUMN

    def __post_init__(self):
        super().__post_init__()  # TRL's and transformers' own checks (and messages) first
        _check_rules(self, _HANO_RULES | _DPO_RULES | _TRAINING_RULES)
        for name, choices in (("responsiveness", RESPONSIVENESS_MODES), ("lora_noise_mode", NOISE_MODES),
                              ("vision_cache_device", ("cpu", "model"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {tuple(choices)}, got {getattr(self, name)!r}")
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Refuse field combinations that make a HaNo term vanish or cannot hold (docs/trainer.md)."""
        if self.eta_min is not None and self.eta_max is not None and self.eta_min > self.eta_max:
            raise ValueError(f"eta_min ({self.eta_min}) is larger than eta_max ({self.eta_max})")
        if self.uses_adaptive_beta and self.beta_floor >= self.beta:
            raise ValueError(
                f"beta_floor ({self.beta_floor}) must be below beta ({self.beta}): beta' = max(eta * lambda * beta, "
                "beta_floor) would sit at the floor for every pair with eta * lambda <= beta_floor / beta, which "
                "includes every warm-up step and every pair with lambda <= 1, and HaNo would have no effect there. "
                "The floor only keeps beta' positive (default 1e-6)."
            )
        limit = NOISE_STD_LIMITS[self.lora_noise_mode]
        if self.lora_noise_std >= limit:
            raise ValueError(
                f"lora_noise_std ({self.lora_noise_std}) must be below {limit:g} with lora_noise_mode="
                f"{self.lora_noise_mode!r}: such noise swamps the adapter (the paper's absolute 0.1 already moves "
                "log-probs by 18 nats per token on SmolLM2; absolute 1e6 gives a gradient norm of exactly 0), so "
                "nothing would train. See docs/nodo.md."
            )


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """A predicate: a finite number in the interval [lo, hi] (ends open where asked)."""

    def accepts(value) -> bool:
        if not _number(value) or not math.isfinite(value):
            return False
        return (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)

    return accepts


def _optional(accepts):
    return lambda value: value is None or accepts(value)


def _seed(value) -> bool:
    return _integer(value) and 0 <= value <= SEED_MAX


def _positive_integer(value) -> bool:
    return _integer(value) and value >= 1


# field -> (accepts, what it must be). Only values that TRL / transformers accept unchecked and that fail late, deep
# or silently (NaN learning rate or weight decay, a negative seed, max_steps=2.7, ...); the rest is left to them.
_HANO_RULES = {
    "hardness_column": (_optional(lambda v: isinstance(v, str) and v != ""), "a column name or None"),
    "lambda_max": (lambda v: _number(v) and v > 0, "a number > 0 (inf: no bound)"),
    "responsiveness_momentum": (_finite(0, 1, hi_open=True), "in [0, 1)"),
    "responsiveness_warmup": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "responsiveness_eps": (_finite(0, lo_open=True), "a finite number > 0"),
    "beta_dpo_alpha": (_finite(0), "a finite number >= 0"),
    "eta_min": (_optional(_finite(0)), "a finite number >= 0 (or None)"),
    "eta_max": (_optional(_finite(0, lo_open=True)),
                "a finite number > 0 (or None; 0 would set every beta' to beta_floor)"),
    "beta_floor": (_finite(0, lo_open=True), "a finite number > 0"),
    "lora_noise_std": (_finite(0), "a finite number >= 0 (0 disables NoDO)"),
    "lora_noise_seed": (_optional(lambda v: _integer(v) and v >= 0), "an integer >= 0 (or None: seed)"),
    "max_nonfinite_steps": (_positive_integer, "an integer >= 1"),
    "vision_cache_dir": (_optional(lambda v: isinstance(v, str)), "a folder name or None"),
}
_DPO_RULES = {
    "beta": (_finite(0, lo_open=True), "a finite number > 0 (beta0 of Eq. 11; beta <= 0 trains nothing)"),
    "label_smoothing": (_finite(0, 1, hi_open=True), "a finite number in [0, 1)"),
    "ld_alpha": (_optional(_finite(0, 1)), "a finite number in [0, 1] (or None)"),
    "f_alpha_divergence_coef": (_finite(), "a finite number"),
    "discopop_tau": (_finite(0, lo_open=True), "a finite number > 0"),
    "loss_weights": (_optional(lambda v: all(_finite()(w) for w in v)), "finite numbers (or None)"),
    "max_length": (_optional(lambda v: _integer(v) and v >= 2),
                   "an integer >= 2 (a prompt token and a completion token) or None"),
    "precompute_ref_batch_size": (_optional(_positive_integer), "an integer >= 1 (or None)"),
    "ref_model_mixup_alpha": (_finite(0, 1), "a finite number in [0, 1]"),
    "ref_model_sync_steps": (_positive_integer, "an integer >= 1"),
}
_TRAINING_RULES = {
    "learning_rate": (_finite(0), "a finite number >= 0"),
    "weight_decay": (_finite(0), "a finite number >= 0"),
    "max_grad_norm": (lambda v: _number(v) and v >= 0, "a number >= 0 (0 disables clipping; NaN would disable it "
                      "silently)"),
    "adam_beta1": (_finite(0, 1, hi_open=True), "in [0, 1)"),
    "adam_beta2": (_finite(0, 1, hi_open=True), "in [0, 1)"),
    "adam_epsilon": (_finite(0), "a finite number >= 0"),
    "num_train_epochs": (_finite(0, lo_open=True), "a finite number > 0"),
    "max_steps": (lambda v: _integer(v) and (v == -1 or v > 0), "an integer > 0, or -1 to train num_train_epochs"),
    "per_device_train_batch_size": (_positive_integer, "an integer >= 1"),
    "per_device_eval_batch_size": (_positive_integer, "an integer >= 1"),
    "gradient_accumulation_steps": (_positive_integer, "an integer >= 1"),
    "seed": (_seed, f"an integer in [0, {SEED_MAX}] (numpy's seed range)"),
    "data_seed": (_optional(_seed), f"an integer in [0, {SEED_MAX}] (or None)"),
}


def _check_rules(args, rules: dict) -> None:
    for name, (accepts, what) in rules.items():
        value = getattr(args, name)
        if not accepts(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")


def check_training_arguments(args) -> None:
    """Refuse, naming the field, the ``TrainingArguments`` values transformers accepts unchecked and that fail late,
    deep or silently (a NaN learning rate, a negative seed, ``max_steps=2.7``, ...), for any trainer's config (TRL's
    ``SFTConfig`` included); :class:`HaNoDPOConfig` checks them itself."""
    _check_rules(args, _TRAINING_RULES)
