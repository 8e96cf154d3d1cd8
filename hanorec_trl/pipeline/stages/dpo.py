"""The DPO stage of one variant: ``HaNoDPOTrainer`` from the SFT model on the hardness stage's pairs, the reference
log-probs computed by the first variant and shared with every later one from the same SFT model and rows
(``dpo/reference/<key>.npz``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..modeling import lora_config, with_adapter
from ..pipeline_config import PipelineConfig
from ..training import compact_lm_head_on_cpu
from ..variants import Variant, lambda_column
from .context import RunContext, free_memory, recorded_fields, run_stage
from .hardness import dpo_pairs
from .model import load_dpo_start, lora_fields
from .resumable_training import train_and_save


REFERENCE = "reference"  # dpo/reference/<key>.npz: reference log-probs shared by the variants (one SFT model)
DPO_FIELDS = ("dpo_epochs", "dpo_max_steps", "dpo_learning_rate", "dpo_batch_size", "dpo_gradient_accumulation_steps",
              "dpo_max_length", "beta", "responsiveness", "responsiveness_warmup", "lora_noise_mode", "dpo_extra_args",
              "hardness_k", "hardness_temperature", "hardness_title_mode")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def _pairs_fingerprint(dataset) -> str:
    """A content hash of the DPO rows (prompts, completions, image files), independent of the lambda columns."""
    import hashlib

    digest = hashlib.sha256()
    columns = [c for c in ("prompt", "chosen", "rejected", "images") if c in dataset.column_names]
    # arrow rows: images as stored (file path or bytes), not decoded into objects
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=512):
        digest.update(json.dumps(batch.to_pydict(), sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def reference_key(ctx: RunContext, dataset, args) -> str:
    """What the reference log-probs depend on: the SFT model (its stage's finish record, how DPO starts from it, the
    model and its precision), the processor, the rows, and the trainer settings that shape their batches."""
    import hashlib

    sft_marker = ctx.rundir.marker(ctx.rundir.stage_dir("sft")) if ctx.rundir.is_done(ctx.rundir.stage_dir("sft")) \
        else {}
    settings = {name: getattr(args, name, None) for name in (
        "max_length", "per_device_train_batch_size", "precompute_ref_batch_size", "fast_prompt_once",
        "fast_vision_cache", "bf16", "fp16", "padding_free", "pad_to_multiple_of", "truncation_mode",
        "use_logits_to_keep", "ld_alpha", "loss_type")}
    record = {"sft": sft_marker.get("finished"), "sft_inputs": sft_marker.get("inputs"),
              "dpo_init": ctx.config.resolved_dpo_init(), "model": _within_run(ctx, ctx.spec.path), "dtype": str(ctx.config.bf16),
              "pixels": [ctx.config.data.image_min_pixels, ctx.config.data.image_max_pixels], "args": settings,
              "rows": _pairs_fingerprint(dataset), "count": len(dataset)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:20]


def _within_run(ctx: RunContext, path: str) -> str:
    """``path`` relative to the run directory when it lies inside it (a built-in model written by the model stage),
    so that a run reusing another's stages (``--run.reuse_from``) finds the same reference key."""
    try:
        return str(Path(path).resolve().relative_to(ctx.rundir.root.resolve()))
    except ValueError:
        return path


def _shared_reference(ctx: RunContext, dataset, key: str):
    """``dataset`` with the reference log-probs another variant computed from the same SFT model (in this run, or in
    ``--run.reuse_from``'s when its SFT stage was reused), or None."""
    name = Path(REFERENCE) / f"{key}.npz"
    places = [ctx.rundir] + ([ctx.reuse] if ctx.reuse is not None else [])
    path = next((p for p in (r.stage_dir("dpo") / name for r in places) if p.is_file()), None)
    if path is None:
        return None
    saved = np.load(path)
    if any(len(saved[c]) != len(dataset) for c in REF_COLUMNS):
        return None
    for column in REF_COLUMNS:
        dataset = dataset.add_column(column, saved[column].tolist())
    return dataset


def _share_reference(ctx: RunContext, trainer, key: str, rows: int) -> bool:
    """Save the reference log-probs the trainer computed (its fast-path cache), for the next variants."""
    train = trainer.train_dataset
    columns = getattr(train, "column_names", None) or []
    if not all(c in columns for c in REF_COLUMNS) or len(train) != rows:
        return False  # computed every step (fast path off, DeepSpeed...): nothing to share
    if ctx.is_main:
        folder = ctx.rundir.stage_dir("dpo") / REFERENCE
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.tmp.npz"
        np.savez(tmp, **{c: np.asarray(train[c], dtype=np.float64) for c in REF_COLUMNS})
        os.replace(tmp, folder / f"{key}.npz")
    return True


def unused_dpo_fields(config: PipelineConfig, variant: Variant) -> tuple[str, ...]:
    """The arguments this variant's training cannot depend on, left out of what its stage records: the hardness
    settings without hardness (and without hard rejected items, which are ranked by the hardness stage's
    embeddings), the responsiveness settings without it, the noise mode without noise. So plain DPO and w/o HaRS
    trained under one hardness temperature are reused (``--resume``, ``--run.reuse_from``) under another."""
    switches = variant.switches(config.dpo)
    unused: list[str] = []
    if not switches["use_hardness"] and config.protocol.rejected != "hard":
        unused += ["hardness_k", "hardness_temperature", "hardness_title_mode", "hardness_mode"]
    if not switches["use_responsiveness"]:
        unused += ["responsiveness", "responsiveness_warmup"]
    if not switches["lora_noise_std"]:
        unused += ["lora_noise_mode"]
    return tuple(unused)


def dpo_inputs(config: PipelineConfig, variant: Variant) -> dict[str, Any]:
    """What a DPO stage records and compares on resume (without :func:`unused_dpo_fields`)."""
    unused = set(unused_dpo_fields(config, variant))
    protocol, switches = config.protocol, variant.switches(config.dpo)
    inputs = {**recorded_fields(config, DPO_FIELDS), **switches, **lora_fields(config, "dpo"),
            "dpo_task": protocol.dpo_task, "num_rejected": protocol.num_rejected, "rejected": protocol.rejected,
            "max_train_sequences": protocol.max_train_sequences, "dpo_init": config.resolved_dpo_init(),
            "system_prompt": protocol.system_prompt, **({} if variant.seed is None else {"dpo_seed": variant.seed}),
            **({} if protocol.max_dpo_pairs is None else {"max_dpo_pairs": protocol.max_dpo_pairs})}
    return {k: v for k, v in inputs.items() if k not in unused}


def stage_dpo(ctx: RunContext, variant: Variant) -> dict:
    """Preference optimization with ``HaNoDPOTrainer`` from the SFT model, the reference being the SFT model.

    The rows are the hardness stage's saved pairs; the variant reads its lambda column (``dpo.hardness_column``).
    The reference log-probs are computed by the first variant and shared with every later one from the same SFT
    model and rows (``dpo/reference/<key>.npz``)."""
    from ...trainer import HaNoDPOTrainer

    config = ctx.config
    switches = variant.switches(config.dpo)
    folder = ctx.rundir.stage_dir("dpo", variant.name)
    inputs = dpo_inputs(config, variant)

    def work() -> dict:
        proc = ctx.processing_class()
        dataset = dpo_pairs(ctx)
        model = load_dpo_start(ctx)
        if config.resolved_dpo_init() == "merge":
            peft_config = lora_config(model, config)
        else:  # continue the SFT adapter; TRL keeps a frozen copy of it as the reference ("ref" adapter)
            model, peft_config = with_adapter(model, ctx.rundir.stage_dir("sft") / "adapter", trainable=True), None
        args = config.trainer_args(
            "dpo", folder / "trainer", use_hardness=switches["use_hardness"],
            use_responsiveness=switches["use_responsiveness"], hardness_column=lambda_column(switches["hardness_mode"]),
            lora_noise_std=switches["lora_noise_std"], **({} if variant.seed is None else {"seed": variant.seed}),
        )
        if switches["use_hardness"] and args.hardness_column not in dataset.column_names:
            raise RuntimeError(f"the DPO pairs have no {args.hardness_column!r} column (no finished hardness stage in "
                               f"{ctx.rundir.root})")
        key = reference_key(ctx, dataset, args)
        shared = None if args.sync_ref_model else _shared_reference(ctx, dataset, key)
        rows = len(dataset)
        if shared is not None:
            ctx.say(f"        reference log-probs shared from an earlier variant ({REFERENCE}/{key}.npz)")
            dataset = shared
        with compact_lm_head_on_cpu():  # the reference log-probs are cached while the trainer is built
            trainer = HaNoDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=proc,
                                     peft_config=peft_config)
        reference = "shared" if shared is not None else (
            "computed" if not args.sync_ref_model and _share_reference(ctx, trainer, key, rows) else "every step")
        summary = train_and_save(ctx, trainer, folder, f"DPO {variant.name}")
        summary.update(variant=variant.name, label=variant.label, reference_logps=reference, **switches)
        del trainer, model
        free_memory()
        return summary

    return run_stage(ctx, f"dpo/{variant.name}", folder, inputs, work, all_processes=True, keep=("trainer",),
                     ignored=unused_dpo_fields(config, variant),
                     upstream=(ctx.rundir.stage_dir("sft"),) + ((ctx.rundir.stage_dir("hardness"),)
                                                                if switches["use_hardness"] else ()))


__all__ = ["dpo_inputs", "reference_key", "stage_dpo", "unused_dpo_fields"]
