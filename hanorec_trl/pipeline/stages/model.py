"""The model stage (a built-in model is built and written to ``<run>/model/base``; others are referenced where they
are) and the models the stages hand on: the base as SFT starts from it, the SFT model, the model after DPO."""

from __future__ import annotations

from typing import Any

from ..modeling import load_model, with_adapter, write_builtin_model
from ..pipeline_config import PipelineConfig
from ..variants import Variant
from .context import RunContext, run_stage


def model_inputs(config: PipelineConfig) -> dict[str, Any]:
    return {"model": config.model.model_name_or_path, "tokenizer": config.run.tokenizer, "seed": config.sft.seed,
            "bf16": config.bf16}


def stage_model(ctx: RunContext) -> dict:
    """Built-in models are built and written to ``<run>/model/base``; other models are referenced where they are."""
    config = ctx.config
    folder = ctx.rundir.stage_dir("model")
    inputs = model_inputs(config)

    def work() -> dict:
        summary = {"model": ctx.spec.name, "description": ctx.spec.description, "kind": ctx.spec.kind}
        if ctx.spec.builtin:
            summary.update(write_builtin_model(ctx.spec, config, folder / "base", config.sft.seed))
            summary["path"] = str(folder / "base")
        else:
            summary["path"] = ctx.spec.path
        return summary

    summary = run_stage(ctx, "model", folder, inputs, work)
    if ctx.spec.builtin:
        ctx.spec = ctx.spec.located(folder / "base")
    return summary


def lora_fields(config: PipelineConfig, stage: str = "sft") -> dict[str, Any]:
    """The adapter's and the model's settings that SFT (``stage='sft'``) and DPO record."""
    flat = config.flat()
    fields = {k: flat[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bf16",
                                   "load_in_4bit", "attn_implementation", "gradient_checkpointing")}
    if stage == "dpo":
        fields["gradient_checkpointing"] = flat["dpo_gradient_checkpointing"]
    return fields


def load_base_model(ctx: RunContext):
    """The base model (4-bit with QLoRA), as SFT starts from it."""
    return load_model(ctx.spec.path, ctx.spec, ctx.config, quantized=ctx.config.model.load_in_4bit)


def load_dpo_start(ctx: RunContext):
    """What DPO's adapters sit on: the merged SFT weights (dpo_init='merge') or the base (dpo_init='adapter')."""
    if ctx.config.resolved_dpo_init() == "merge":
        return load_model(ctx.rundir.stage_dir("sft") / "merged", ctx.spec, ctx.config)
    return load_base_model(ctx)


def load_sft_model(ctx: RunContext):
    """The SFT model: the merged weights (dpo_init='merge') or the base with the SFT adapter."""
    model = load_dpo_start(ctx)
    if ctx.config.resolved_dpo_init() == "merge":
        return model
    return with_adapter(model, ctx.rundir.stage_dir("sft") / "adapter")


def load_dpo_model(ctx: RunContext, variant: Variant):
    """The model after DPO: the DPO adapter on the merged SFT model (or on the base, dpo_init='adapter')."""
    return with_adapter(load_dpo_start(ctx), ctx.rundir.stage_dir("dpo", variant.name) / "adapter")


__all__ = ["load_base_model", "load_dpo_model", "load_dpo_start", "load_sft_model", "lora_fields", "model_inputs",
           "stage_model"]
