"""A ``TrainerCallback`` that runs :func:`evaluate_recommender` during training and logs ``eval_rec/<metric>``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from .evaluate import RecEvalConfig, evaluate_recommender

logger = logging.getLogger(__name__)


class RecommendationEvalCallback(TrainerCallback):
    """Evaluate ranking (HR@K, NDCG@K) and AUC while training; works with any ``transformers.Trainer`` (TRL's too).

    Runs at every evaluation (``on_evaluate``, i.e. ``eval_strategy``), with ``every_n_steps`` every N optimizer
    steps, with ``at_start`` before the first step of a fresh run and with ``at_end`` after the last (a learning
    curve from its start to its end). Metrics are logged through ``trainer.log`` as ``eval_rec/hr@3`` etc. (so they
    reach
    ``report_to`` and ``state.log_history``), and each run is written to
    ``<output_dir>/rec_eval/step-<N>.json``. Every process evaluates (identical data), so sharded models
    (DeepSpeed ZeRO-3, FSDP) keep their collective calls in step; only the main process writes the file.

    Example::

        trainer = HaNoDPOTrainer(...)
        trainer.add_callback(RecommendationEvalCallback(trainer, ranking_rows=val_rank, auc_rows=val_auc,
                                                        config=RecEvalConfig(max_ranking_rows=200)))
    """

    def __init__(
        self,
        trainer,
        ranking_rows: Sequence[dict] | None = None,
        auc_rows: Sequence[dict] | None = None,
        *,
        config: RecEvalConfig | None = None,
        every_n_steps: int | None = None,
        on_evaluate: bool = True,
        prefix: str = "eval_rec",
        write_json: bool = True,
        at_start: bool = False,
        at_end: bool = False,
    ):
        if ranking_rows is None and auc_rows is None:
            raise ValueError("RecommendationEvalCallback needs ranking_rows, auc_rows, or both")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.trainer = trainer
        self.ranking_rows, self.auc_rows = ranking_rows, auc_rows
        self.config = config or RecEvalConfig(progress=False)
        self.every_n_steps, self.run_on_evaluate = every_n_steps, on_evaluate
        self.prefix, self.write_json = prefix, write_json
        self.at_start, self.at_end = at_start, at_end
        self.history: list[dict] = []
        self._last_step: int | None = None

    def _run(self, args, state) -> dict:
        if self._last_step == state.global_step:  # on_evaluate and every_n_steps on the same step: once
            return {}
        self._last_step = state.global_step
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        path = None
        if self.write_json and state.is_world_process_zero:
            path = Path(args.output_dir) / "rec_eval" / f"step-{state.global_step}.json"
        metrics = evaluate_recommender(
            model,
            self.trainer.processing_class,
            self.ranking_rows,
            self.auc_rows,
            config=self.config,
            output_path=path,
            overwrite=True,
        )
        logged = {f"{self.prefix}/{k}": v for k, v in metrics.items()}
        self.history.append({"step": state.global_step, **logged})
        self.trainer.log(logged)
        return logged

    def on_evaluate(self, args, state, control, **kwargs):
        if self.run_on_evaluate:
            self._run(args, state)
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        if self.at_start and state.global_step == 0:  # the starting point of a learning curve (not on resume)
            self._run(args, state)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.at_end:
            self._run(args, state)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0:
            self._run(args, state)
        return control


def learning_curve(output_dir: str | Path, examples, data, split,
                   baselines: Sequence[str] = ("random", "popularity", "item_knn")) -> dict:
    """The learning curve a :class:`RecommendationEvalCallback` wrote under ``<output_dir>/rec_eval`` (every
    ``step-<N>.json``, also those of an interrupted and continued run, by step), beside ``baselines`` scored on the
    same ``examples`` (the ``SequenceExample`` rows it evaluated) of ``split``."""
    from ..baselines import evaluate_baselines

    points = sorted(({"step": int(p.stem.split("-")[1]), **json.loads(p.read_text())["metrics"]}
                     for p in (Path(output_dir) / "rec_eval").glob("step-*.json")), key=lambda p: p["step"])
    scored = evaluate_baselines(baselines, data, split, examples).items()
    return {"examples": len(examples), "points": points,
            "baselines": {k.removeprefix("baseline-"): {"label": e["label"], **e["metrics"]} for k, e in scored}}


__all__ = ["RecommendationEvalCallback", "learning_curve"]
