"""TRL's fused LM head on a CPU, projecting only the labelled positions (exact; ``tests/test_fast_path.py``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def compact_lm_head_on_cpu() -> Iterator[bool]:
    """Let TRL's fused LM head project only the labelled positions on CPU too (exact; tested).

    TRL 1.16 scores every position through the full vocabulary where Triton is unavailable, so that compiled tile
    shapes stay fixed; a CPU compiles nothing, and with Qwen's 151,665-token vocabulary that dominates a step (tiny
    Qwen2.5-VL, 4 x 320 tokens: 34 s forward + backward, 3.7 s compact). Yields whether the switch was installed.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        logger.info("TRL's fused LM head has no _use_triton switch in this version: CPU steps score every position")
        yield False
        return
    trl_utils._use_triton = lambda device: getattr(device, "type", None) == "cpu" or original(device)
    try:
        yield True
    finally:
        trl_utils._use_triton = original


__all__ = ["compact_lm_head_on_cpu"]
