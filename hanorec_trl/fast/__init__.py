"""The exact fast path of :class:`~hanorec_trl.HaNoDPOTrainer` and of the evaluation (``docs/fast_path.md``).

* :mod:`.packing`: one packed sequence per prompt with all its completions (prompt once);
* :mod:`.vision_cache`: each distinct poster's vision features computed once;
* :mod:`.forward`: the forward pass of a packed batch in TRL's per-token layout, and the guards that decide when
  the fast path applies.
"""

from .forward import frozen_vision_without_graph, image_feature_cache, packed_forward, unsupported_reason
from .packing import PACKED_KEY, PackedPreferenceCollator
from .vision_cache import VisionFeatureCache

__all__ = [
    "PACKED_KEY",
    "PackedPreferenceCollator",
    "VisionFeatureCache",
    "frozen_vision_without_graph",
    "image_feature_cache",
    "packed_forward",
    "unsupported_reason",
]
