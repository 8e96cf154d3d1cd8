"""Small helpers about models that the trainer, the encoders, the evaluation and the pipeline share.

* :func:`unwrap_hf_model`: the transformers model under DDP/accelerate and PEFT wrappers;
* :func:`is_vision_language_model` and :func:`language_model_lora_regex` (LoRA targets that keep the vision tower
  out, ``docs/trainer.md``);
* :func:`lora_config`: TRL's ``get_peft_config`` with those targets;
* :func:`model_device` and :func:`eval_mode` for inference passes; :func:`without_zero3_init` to load whole models
  after a DeepSpeed ZeRO-3 training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "is_vision_language_model", "language_model_lora_regex", "lora_config", "model_device",
           "unwrap_hf_model", "without_zero3_init"]


def unwrap_hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face ``PreTrainedModel`` under DDP/accelerate and PEFT wrappers (adapters stay active)."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def is_vision_language_model(model) -> bool:
    """True for models with a vision tower that takes ``pixel_values`` (Qwen2-VL/2.5-VL, LLaVA, ...)."""
    config = getattr(model, "config", None)
    return config is not None and getattr(config, "vision_config", None) is not None


def language_model_lora_regex(model) -> str:
    """A PEFT ``target_modules`` regex matching the attention and MLP projections of the language model only.

    ``gate_proj``/``up_proj``/``down_proj`` also name the Qwen2.5-VL vision tower's MLP, so plain names would put
    adapters (and NoDO noise) into the vision tower.
    """
    proj = r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    if is_vision_language_model(model):
        return rf".*language_model\.layers\.\d+\.{proj}"
    return rf".*layers\.\d+\.{proj}"


def lora_config(model, model_args):
    """TRL's ``get_peft_config(model_args)`` on the language model's attention and MLP projections (never the
    vision tower, whose MLP shares their names), unless ``lora_target_modules`` names others."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is None:
        raise ValueError("use_peft false: a LoRA adapter is trained here; set use_peft true")
    targets = model_args.lora_target_modules
    config.target_modules = targets[0] if targets and len(targets) == 1 else targets or language_model_lora_regex(model)
    config.task_type = None
    return config


def model_device(model) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


class _EvalMode:
    """``model.eval()`` and ``torch.no_grad()`` for the duration, restoring the training flag afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        self.no_grad.__exit__(*exc)
        return False


def eval_mode(model) -> _EvalMode:
    """A context manager: the model in eval mode without gradients, its training flag restored afterwards."""
    return _EvalMode(model)


@contextlib.contextmanager
def without_zero3_init() -> Iterator[None]:
    """Load whole models inside, even after a DeepSpeed ZeRO-3 training registered its config with transformers
    (the main-process stages would otherwise wait forever for the other processes)."""
    try:
        import transformers.integrations.deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
