"""The SFT stage: TRL's ``SFTTrainer`` with LoRA on the protocol's prompts, the learning curve on validation rows
beside two baselines (``evaluation.curve_steps``), then the adapter merged into the base weights (``run.dpo_init``
merge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...data import build_sft_dataset
from ...evaluation.scoring import text_tokenizer
from ..arguments import PipelineConfigError
from ..modeling import lora_config, merge_adapter
from ..pipeline_config import PipelineConfig
from ..rundir import read_json, write_json_atomic
from ..training import without_zero3_init
from .context import RunContext, free_memory, recorded_fields, run_stage
from .evaluation import ranking_rows
from .model import load_base_model, lora_fields
from .resumable_training import train_and_save


def sft_inputs(config: PipelineConfig) -> dict[str, Any]:
    return {**recorded_fields(config, SFT_FIELDS), **lora_fields(config), "sft_task": config.protocol.sft_task,
            "max_train_sequences": config.protocol.max_train_sequences, "dpo_init": config.resolved_dpo_init(),
            "image_pixels": [config.data.image_min_pixels, config.data.image_max_pixels],
            "system_prompt": config.protocol.system_prompt}


def stage_sft(ctx: RunContext) -> dict:
    """SFT with TRL's ``SFTTrainer`` and LoRA on ranking and AUC prompts; then the adapter is merged (dpo_init)."""
    from trl import SFTTrainer

    config = ctx.config
    folder = ctx.rundir.stage_dir("sft")
    inputs = sft_inputs(config)

    def work() -> dict:
        proc = ctx.processing_class()
        train = build_sft_dataset(ctx.train_examples, ctx.data, task=config.protocol.sft_task,
                                  with_images=ctx.with_images, templates=ctx.templates)
        model = load_base_model(ctx)
        args = config.trainer_args("sft", folder / "trainer")
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=proc,
                             peft_config=lora_config(model, config))
        curve_examples = _add_learning_curve(ctx, trainer)
        summary = train_and_save(ctx, trainer, folder, "SFT", sft=True)
        if curve_examples is not None and ctx.is_main:
            summary["learning_curve"] = _write_learning_curve(ctx, folder, curve_examples)
        del trainer, model
        free_memory()
        if ctx.is_main and config.resolved_dpo_init() == "merge":
            with without_zero3_init():
                merge_adapter(ctx.spec.path, folder / "adapter", ctx.spec, config, folder / "merged",
                              text_tokenizer(proc))
            summary["merged"] = str(folder / "merged")
        return summary

    return run_stage(ctx, "sft", folder, inputs, work, all_processes=True, keep=("trainer",),
                     upstream=(ctx.rundir.stage_dir("data"), ctx.rundir.stage_dir("model")))


SFT_FIELDS = ("sft_epochs", "sft_max_steps", "sft_learning_rate", "sft_batch_size", "sft_gradient_accumulation_steps",
              "sft_max_length", "sft_extra_args")
CURVE_BASELINES = ("popularity", "item_knn")


def _add_learning_curve(ctx: RunContext, trainer):
    """With ``--curve_steps``: a callback that evaluates the ranking on the first ``--curve_examples`` validation
    sequences before the first SFT step, every N steps and at the end (``trainer/rec_eval/step-<N>.json``).
    Returns those examples, or None without a curve."""
    from ...evaluation import RecEvalConfig, RecommendationEvalCallback

    ev = ctx.config.evaluation
    if ev.curve_steps is None:
        return None
    examples = ctx.split.validation[: ev.curve_examples]
    if not examples:
        raise PipelineConfigError("--curve_steps needs validation sequences, and this split has none")
    rows = ranking_rows(ctx, examples)
    settings = RecEvalConfig(ks=tuple(ev.eval_ks) if ev.eval_ks else None, batch_size=ev.eval_batch_size,
                             progress=False)
    trainer.add_callback(RecommendationEvalCallback(trainer, ranking_rows=rows, config=settings,
                                                    every_n_steps=ev.curve_steps, on_evaluate=False, at_start=True,
                                                    at_end=True, prefix="curve"))
    return examples


def _write_learning_curve(ctx: RunContext, folder: Path, examples) -> dict:
    """Collect the curve's evaluations (also those of an interrupted and resumed run) and the baselines on the same
    validation rows into ``learning_curve.json``; returns its summary."""
    from ...baselines import LABELS, TrainingInteractions, evaluate_baseline, expected_random_metrics, fit_baseline

    points = []
    for path in (folder / "trainer" / "rec_eval").glob("step-*.json"):
        points.append({"step": int(path.stem.split("-")[1]), **read_json(path)["metrics"]})
    points.sort(key=lambda p: p["step"])
    ks = tuple(ctx.config.evaluation.eval_ks) if ctx.config.evaluation.eval_ks else None
    training = TrainingInteractions.from_split(ctx.data, ctx.split)
    baselines = {"random": {"label": LABELS["random"], **expected_random_metrics(examples, ks)["metrics"]}}
    for name in CURVE_BASELINES:
        baselines[name] = {"label": LABELS[name],
                           **evaluate_baseline(fit_baseline(name, training), examples, ks)["metrics"]}
    curve = {"examples": len(examples), "split": "validation", "points": points, "baselines": baselines}
    write_json_atomic(folder / "learning_curve.json", curve)
    last = points[-1] if points else {}
    return {"points": len(points), "last_step": last.get("step"),
            **{k: last[k] for k in ("hr@1", "ndcg@10") if k in last}}


__all__ = ["sft_inputs", "stage_sft"]
