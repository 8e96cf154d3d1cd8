"""The preference-optimization variants of paper Sec. 4.3 (DPO, HaNoRec and its ablations) and the hardness modes
whose lambda columns they read.

A :class:`Variant` is one DPO stage + its evaluation; ``run.variants`` / ``run.method`` / ``run.ablation`` choose them
(:meth:`~hanorec_trl.pipeline.pipeline_config.PipelineConfig.variants_to_train`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

HARDNESS_MODES = ("topk", "pairwise")
LAMBDA_PREFIX = "hano_lambda_"  # the hardness stage's columns: hano_lambda_topk, hano_lambda_pairwise


def lambda_column(mode: str) -> str:
    """The DPO pairs' lambda column of a hardness mode (``topk`` / ``pairwise``)."""
    return LAMBDA_PREFIX + mode


@dataclass(frozen=True)
class Variant:
    """One preference-optimization variant of paper Sec. 4.3 (a DPO stage + its evaluation).

    ``lora_noise_std=None`` keeps the run's ``dpo.lora_noise_std``; ``hardness_mode`` picks the lambda column
    ``hano_lambda_<mode>`` (``dpo.hardness_column``).
    """

    name: str
    label: str
    use_hardness: bool
    use_responsiveness: bool
    hardness_mode: str = "topk"
    lora_noise_std: float | None = None
    seed: int | None = None  # the DPO seed of this training (run.dpo_seeds); None: dpo.seed

    @property
    def base_name(self) -> str:
        """The variant's name without its seed suffix (``hano-seed2`` -> ``hano``)."""
        return self.name if self.seed is None else self.name[: -len(f"-seed{self.seed}")]

    def with_seed(self, seed: int) -> Variant:
        """This variant trained with DPO seed ``seed``: named ``<name>-seed<seed>``."""
        return dataclasses.replace(self, name=f"{self.name}-seed{seed}", label=f"{self.label} (seed {seed})",
                                   seed=seed)

    def switches(self, dpo: Any) -> dict[str, Any]:
        """The HaNoDPOConfig switches of this variant for the run's ``dpo`` section (a ``HaNoDPOConfig``)."""
        return {
            "use_hardness": self.use_hardness,
            "use_responsiveness": self.use_responsiveness,
            "hardness_mode": self.hardness_mode,
            "lora_noise_std": dpo.lora_noise_std if self.lora_noise_std is None else self.lora_noise_std,
        }


# The ablation table of paper Sec. 4.3 (Table 4), in its order.
HANO = Variant("hano", "HaNoRec", True, True)
WO_HARS = Variant("wo_hars", "w/o HaRS", False, False)
WO_SAM = Variant("wo_sam", "w/o SAM", True, True, hardness_mode="pairwise")
WO_NODO = Variant("wo_nodo", "w/o NoDO", True, True, lora_noise_std=0.0)
WO_ALL = Variant("wo_all", "w/o ALL (DPO)", False, False, lora_noise_std=0.0)
ABLATION_VARIANTS: tuple[Variant, ...] = (HANO, WO_HARS, WO_SAM, WO_NODO, WO_ALL)
PLAIN_DPO = Variant("dpo", "DPO", False, False, lora_noise_std=0.0)
ABLATIONS = ("none",) + tuple(v.name for v in ABLATION_VARIANTS if v is not HANO)
VARIANTS_BY_NAME: dict[str, Variant] = {v.name: v for v in (PLAIN_DPO,) + ABLATION_VARIANTS}
VARIANT_NAMES = tuple(VARIANTS_BY_NAME)


__all__ = [
    "ABLATIONS",
    "ABLATION_VARIANTS",
    "HANO",
    "HARDNESS_MODES",
    "LAMBDA_PREFIX",
    "PLAIN_DPO",
    "VARIANTS_BY_NAME",
    "VARIANT_NAMES",
    "WO_ALL",
    "WO_HARS",
    "WO_NODO",
    "WO_SAM",
    "Variant",
    "lambda_column",
]
