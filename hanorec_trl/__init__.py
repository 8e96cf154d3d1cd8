"""hanorec_trl: HaNoRec preference optimization for multimodal sequential recommendation, as a TRL extension.

Public API (``docs/design.md``, "Public names")::

    from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer   # the trainer (Eq. 11-12)
    from hanorec_trl import HardnessIndex                   # offline lambda (Eq. 4-6)
    from hanorec_trl import ResponsivenessTracker           # online eta (Eq. 7-8)
    from hanorec_trl import lora_noise                      # NoDO context manager (Eq. 10)
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Lazy imports keep `import hanorec_trl` cheap (TRL/transformers load on first use).
_EXPORTS = {
    "HaNoDPOConfig": "config",
    "HaNoDPOTrainer": "trainer",
    "HardnessIndex": "hardness",
    "add_hardness_column": "hardness",
    "ResponsivenessTracker": "responsiveness",
    "lora_noise": "noise",
    "QwenVLItemEncoder": "encoders",
    "TextItemEncoder": "encoders",
    "encode_items": "encoders",
    "evaluate_recommender": "evaluation",
    "RecEvalConfig": "evaluation",
    "RecommendationEvalCallback": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hanorec_trl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    from .config import HaNoDPOConfig  # noqa: F401
    from .encoders import QwenVLItemEncoder, TextItemEncoder, encode_items  # noqa: F401
    from .evaluation import RecEvalConfig, RecommendationEvalCallback, evaluate_recommender  # noqa: F401
    from .hardness import HardnessIndex, add_hardness_column  # noqa: F401
    from .noise import lora_noise  # noqa: F401
    from .responsiveness import ResponsivenessTracker  # noqa: F401
    from .trainer import HaNoDPOTrainer  # noqa: F401
