"""The evaluation stages: HR@K / NDCG@K / AUC of each model on the frozen test split (+ the title-image similarity
probe for vision models), and the classical baselines on the same test rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ...data import build_auc_eval_dataset, build_ranking_eval_dataset
from ..pipeline_config import PipelineConfig
from ..rundir import write_json_atomic
from .context import RunContext, free_memory, item_table, run_stage


def ranking_rows(ctx: RunContext, examples):
    """Ranking evaluation rows of ``examples`` in the run's prompt format and candidate orders."""
    config = ctx.config
    return build_ranking_eval_dataset(examples, ctx.data, with_images=ctx.with_images, templates=ctx.templates,
                                      prompt=config.evaluation_prompt(),
                                      permutations=config.evaluation.score_permutations, seed=config.seed)


def evaluation_inputs(config: PipelineConfig) -> dict[str, Any]:
    """What a model's evaluation depends on."""
    return {**_evaluation_inputs(config), "image_pixels": [config.data.image_min_pixels, config.data.image_max_pixels]}


def _evaluation_inputs(config: PipelineConfig) -> dict[str, Any]:
    """What a finished evaluation depends on (the baselines shown beside it do not change it)."""
    values = {k: v for k, v in dataclasses.asdict(config.evaluation).items()
              if k not in ("baselines", "curve_steps", "curve_examples")}
    return {**values, "eval_prompt": config.evaluation_prompt(),
            "max_test_sequences": config.protocol.max_test_sequences, "system_prompt": config.protocol.system_prompt}


def stage_baselines(ctx: RunContext) -> list[tuple[str, str]]:
    """The classical baselines (:mod:`hanorec_trl.baselines`) on the same test rows; ``eval/baseline-<name>/``.
    Returns the (folder name, label) of each, for the report."""
    from ...baselines import LABELS, TrainingInteractions, evaluate_baseline, expected_random_metrics, fit_baseline

    config = ctx.config
    names = config.baseline_names()
    training: list[TrainingInteractions] = []
    models = []
    for name in names:
        folder = ctx.rundir.stage_dir("eval", f"baseline-{name}")
        inputs = {"baseline": name, "max_test_sequences": config.protocol.max_test_sequences,
                  "eval_ks": config.evaluation.eval_ks}

        def work(name=name, folder=folder) -> dict:
            ks = tuple(config.evaluation.eval_ks) if config.evaluation.eval_ks else None
            if name == "random":
                result = expected_random_metrics(ctx.test_examples, ks)
            else:
                if not training:
                    training.append(TrainingInteractions.from_split(ctx.data, ctx.split))
                result = evaluate_baseline(fit_baseline(name, training[0]), ctx.test_examples, ks)
            write_json_atomic(folder / "metrics.json", {**result, "baseline": name,
                                                        "training_interactions": training[0].num_interactions
                                                        if training else None})
            return {"metrics": result["metrics"]}

        run_stage(ctx, f"eval/baseline-{name}", folder, inputs, work, upstream=(ctx.rundir.stage_dir("data"),))
        models.append((f"baseline-{name}", LABELS[name]))
    return models


def similarity_items(ctx: RunContext) -> list[str]:
    """The items of the similarity probe: test targets, then test candidates, in order, up to the limit."""
    seen: dict[str, None] = {}
    for ex in ctx.test_examples:
        seen.setdefault(ex.target)
    for ex in ctx.test_examples:
        for c in ex.candidates:
            seen.setdefault(c)
    return list(seen)[: ctx.config.evaluation.similarity_items]


def stage_evaluate(ctx: RunContext, name: str, load: Callable[[], Any]) -> dict:
    """HR@K / NDCG@K / AUC of one model on the frozen test split (+ title-image similarities for VLMs)."""
    from ...evaluation import RecEvalConfig, evaluate_recommender
    from ..similarity import title_image_similarity

    config = ctx.config
    ev = config.evaluation
    folder = ctx.rundir.stage_dir("eval", name)
    inputs = evaluation_inputs(config)

    def work() -> dict:
        proc = ctx.processing_class()
        model = load()
        if not config.model.load_in_4bit:
            if hasattr(model, "merge_and_unload"):  # same function, no adapter overhead per forward
                model = model.merge_and_unload()
            if torch.cuda.is_available():
                model.to("cuda")
        test = ctx.test_examples
        ranking = ranking_rows(ctx, test)
        auc = build_auc_eval_dataset(test, ctx.data, with_images=ctx.with_images, templates=ctx.templates)
        eval_config = RecEvalConfig(ks=tuple(ev.eval_ks) if ev.eval_ks else None, ranking_mode=ev.eval_ranking_mode,
                                    auc_probability=ev.auc_probability, batch_size=ev.eval_batch_size)
        metrics = evaluate_recommender(model, proc, ranking, auc, config=eval_config,
                                       output_path=folder / "metrics.json", overwrite=True)
        if ctx.with_images and ev.similarity_items > 0:
            items = similarity_items(ctx)
            titles, _ = item_table(ctx, items)
            cosine = title_image_similarity(model, proc, items, titles, [ctx.data.image(i) for i in items],
                                            batch_size=ev.eval_batch_size)
            write_json_atomic(folder / "similarity.json", {"item_ids": items, "cosine": cosine.tolist()})
        del model
        free_memory()
        return {"metrics": metrics}

    trained = ctx.rundir.stage_dir("sft") if name == "sft" else ctx.rundir.stage_dir("dpo", name)
    return run_stage(ctx, f"eval/{name}", folder, inputs, work, upstream=(trained,))


__all__ = ["evaluation_inputs", "ranking_rows", "similarity_items", "stage_baselines", "stage_evaluate"]
