"""``evaluate_recommender``: ranking metrics (HR@K, NDCG@K) and AUC for any model TRL can train.

Ranking rows (built by the data layer): ``prompt`` (messages), ``images`` (PIL images, or absent/None for text
LLMs), ``candidates`` (completion texts), ``candidate_items`` (ids), ``target_index``. AUC rows: ``prompt``,
``images``, ``label`` (1 = "Yes", 0 = "No"), ``item``.

* Ranking, ``ranking_mode="likelihood"`` (default): every candidate is scored by its log-likelihood as the completion
  (:func:`~hanorec_trl.evaluation.scoring.score_candidates`, prompt once), ranked with pessimistic ties.
  ``"generation"``: the paper's protocol (:mod:`~hanorec_trl.evaluation.generation`).
* AUC: ``P(Yes) = exp(s_yes) / (exp(s_yes) + exp(s_no)) = sigmoid(s_yes - s_no)`` where ``s`` is, with
  ``auc_probability="sequence"`` (default), the full completion log-likelihood of "Yes" / "No" (the answer and the
  end-of-turn tokens, the very sequences DPO compares), or with ``"first_token"`` the log-probability of the
  answer's first token only (TALLRec's next-token convention). ``auc`` is the rank AUC of ``P(Yes)``;
  ``binary_auc`` is the AUC of the argmax prediction (Yes iff ``P(Yes) > 0.5``), equal to balanced accuracy, the
  released code's convention. AUC always uses likelihoods, also in generation mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.prompts import NO, YES
from ..fast.forward import image_feature_cache
from .generation import GenerationSettings, generate_answers, generation_ranks
from .metrics import DEFAULT_KS, auc_score, binary_auc, ranking_metrics, target_rank
from .scoring import SCORING_METHODS, score_candidates, tokenize_candidates

RANKING_MODES = ("likelihood", "generation")
AUC_PROBABILITIES = ("sequence", "first_token")


@dataclass
class RecEvalConfig:
    """Settings of :func:`evaluate_recommender` (TRL-style dataclass: every field has a ``help``)."""

    ks: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "Cut-offs K for HR@K / NDCG@K. None: (1, 3, 5, 10) limited to the shortest candidate list."},
    )
    ranking_mode: str = field(
        default="likelihood", metadata={"help": "'likelihood' (rank by completion log-likelihood) or 'generation'."}
    )
    scoring_method: str = field(
        default="prompt_once",
        metadata={"help": "'prompt_once' (prompt KV cache reused over candidates) or 'naive' (prompt per candidate)."},
    )
    auc_probability: str = field(
        default="sequence",
        metadata={"help": "P(Yes) from the full 'Yes'/'No' completion likelihoods ('sequence') or the first token."},
    )
    batch_size: int = field(default=4, metadata={"help": "Prompts per forward (all candidates of a prompt together)."})
    max_ranking_rows: int | None = field(default=None, metadata={"help": "Evaluate only the first N ranking rows."})
    max_auc_rows: int | None = field(default=None, metadata={"help": "Evaluate only the first N AUC rows."})
    max_new_tokens: int = field(default=64, metadata={"help": "Generation mode: new tokens per answer."})
    do_sample: bool = field(default=False, metadata={"help": "Generation mode: sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Generation mode: sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Generation mode: nucleus sampling top_p."})
    seed: int = field(default=0, metadata={"help": "Generation mode: seed for sampling."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})
    vision_cache: bool = field(
        default=True,
        metadata={"help": "Qwen2-VL-family models: compute each distinct image's vision features once for the whole "
                  "evaluation (exact: the weights do not change during it; items repeat across prompts)."},
    )

    def __post_init__(self):
        for name, value, allowed in (
            ("ranking_mode", self.ranking_mode, RANKING_MODES),
            ("scoring_method", self.scoring_method, SCORING_METHODS),
            ("auc_probability", self.auc_probability, AUC_PROBABILITIES),
        ):
            if value not in allowed:
                raise ValueError(f"RecEvalConfig.{name} must be one of {allowed}, got {value!r}")
        if self.ks is not None:
            self.ks = tuple(int(k) for k in self.ks)


_RANKING_KEYS = ("prompt", "candidates", "target_index")
_AUC_KEYS = ("prompt", "label")


def _rows(rows: Iterable[dict] | None, limit: int | None, required: Sequence[str], kind: str) -> list[dict]:
    if rows is None:
        return []
    out = []
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            break
        missing = [k for k in required if k not in row or row[k] is None]
        if missing:
            raise ValueError(f"{kind} row {i}: missing {missing} (has {sorted(row)})")
        out.append(row)
    return out


def _check_ranking_row(i: int, row: dict) -> None:
    cands, target = row["candidates"], row["target_index"]
    if not cands:
        raise ValueError(f"ranking row {i}: empty candidate list")
    if not isinstance(target, (int, np.integer)) or not 0 <= int(target) < len(cands):
        raise ValueError(f"ranking row {i}: target_index {target!r} outside its {len(cands)} candidates")
    items = row.get("candidate_items")
    if items is not None and len(items) != len(cands):
        raise ValueError(f"ranking row {i}: {len(cands)} candidates but {len(items)} candidate_items")


def _default_ks(sizes: Sequence[int]) -> tuple[int, ...]:
    return tuple(k for k in DEFAULT_KS if k <= min(sizes))


def evaluate_ranking(model, processing_class, rows: Sequence[dict], config: RecEvalConfig) -> tuple[dict, dict]:
    """HR@K / NDCG@K over ranking rows; returns ``(metrics, per_row)``."""
    for i, row in enumerate(rows):
        _check_ranking_row(i, row)
    prompts = [r["prompt"] for r in rows]
    images = [r.get("images") for r in rows]
    candidates = [list(r["candidates"]) for r in rows]
    targets = [int(r["target_index"]) for r in rows]
    sizes = [len(c) for c in candidates]
    ks = config.ks if config.ks is not None else _default_ks(sizes)
    per_row: dict[str, Any] = {}
    if config.ranking_mode == "likelihood":
        logps = score_candidates(
            model,
            processing_class,
            prompts,
            candidates,
            images,
            batch_size=config.batch_size,
            method=config.scoring_method,
            progress=config.progress,
            desc="ranking (likelihood)",
        )
        scores = [[float(t.sum()) for t in row] for row in logps]
        ranks = np.asarray([target_rank(s, t) for s, t in zip(scores, targets)], dtype=np.float64)
        failures = np.zeros(len(rows), dtype=bool)
        per_row["scores"] = scores
    else:
        settings = GenerationSettings(
            config.max_new_tokens, config.do_sample, config.temperature, config.top_p, config.seed
        )
        answers = generate_answers(
            model,
            processing_class,
            prompts,
            images,
            settings=settings,
            batch_size=config.batch_size,
            progress=config.progress,
        )
        ranks, failures = generation_ranks(answers, candidates, targets)
        per_row["answers"] = answers
    metrics = ranking_metrics(ranks, ks, sizes)
    metrics["num_ranking_rows"] = len(rows)
    if config.ranking_mode == "generation":
        metrics["parse_failure_rate"] = float(failures.mean())
    per_row["ranks"] = [None if np.isinf(r) else int(r) for r in ranks]
    return metrics, per_row


def evaluate_auc(model, processing_class, rows: Sequence[dict], config: RecEvalConfig) -> tuple[dict, dict]:
    """Continuous and binary AUC over yes/no rows; returns ``(metrics, per_row)``."""
    labels = []
    for i, row in enumerate(rows):
        if row["label"] not in (0, 1, True, False):
            raise ValueError(f"AUC row {i}: label must be 1 (Yes) or 0 (No), got {row['label']!r}")
        labels.append(int(row["label"]))
    logps = score_candidates(
        model,
        processing_class,
        [r["prompt"] for r in rows],
        [[YES, NO]] * len(rows),
        [r.get("images") for r in rows],
        batch_size=config.batch_size,
        method=config.scoring_method,
        progress=config.progress,
        desc="AUC (yes/no)",
    )
    if config.auc_probability == "first_token":
        first = tokenize_candidates(
            processing_class, rows[0]["prompt"], [YES, NO], rows[0].get("images")
        ).completion_ids
        if first[0][0] == first[1][0]:
            raise ValueError(
                f"auc_probability='first_token': {YES!r} and {NO!r} start with the same token ({first[0][0]}) for this "
                "tokenizer; use auc_probability='sequence'"
            )
        s_yes = np.array([row[0][0] for row in logps])
        s_no = np.array([row[1][0] for row in logps])
    else:
        s_yes = np.array([row[0].sum() for row in logps])
        s_no = np.array([row[1].sum() for row in logps])
    p_yes = 1.0 / (1.0 + np.exp(-(s_yes - s_no)))
    predictions = (p_yes > 0.5).astype(int)
    metrics = {
        "auc": auc_score(labels, p_yes),
        "binary_auc": binary_auc(labels, predictions),
        "yes_rate": float(predictions.mean()),
        "num_auc_rows": len(rows),
    }
    return metrics, {"p_yes": p_yes.tolist(), "labels": labels}


def evaluate_recommender(
    model,
    processing_class,
    ranking_rows: Iterable[dict] | None = None,
    auc_rows: Iterable[dict] | None = None,
    *,
    config: RecEvalConfig | None = None,
    output_path: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Evaluate a recommender: HR@K / NDCG@K over ``ranking_rows``, AUC over ``auc_rows`` (either may be None).

    ``model`` is any model TRL can train (Qwen2.5-VL with its processor, a text LLM with its tokenizer), with or
    without a PEFT adapter. Returns a flat dict of metrics (``hr@3``, ``ndcg@3``, ``auc``, ``binary_auc``, ...).
    With ``output_path`` the metrics, the config and the per-row results are written there as JSON; an existing
    file is an error unless ``overwrite=True``.
    """
    config = config or RecEvalConfig()
    ranking = _rows(ranking_rows, config.max_ranking_rows, _RANKING_KEYS, "ranking")
    auc = _rows(auc_rows, config.max_auc_rows, _AUC_KEYS, "AUC")
    if not ranking and not auc:
        raise ValueError("evaluate_recommender: no ranking rows and no AUC rows to evaluate")
    if output_path is not None and Path(output_path).exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass overwrite=True to replace it")
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    with image_feature_cache(model, inference=True) if config.vision_cache else contextlib.nullcontext() as cache:
        if ranking:
            m, details["ranking"] = evaluate_ranking(model, processing_class, ranking, config)
            metrics.update(m)
        if auc:
            m, details["auc"] = evaluate_auc(model, processing_class, auc, config)
            metrics.update(m)
    if cache is not None:
        details["vision_cache"] = cache.counts()
    metrics["eval_seconds"] = time.perf_counter() - start
    if output_path is not None:
        path = Path(output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"metrics": metrics, "config": asdict(config), "per_row": details}, indent=1))
        os.replace(tmp, path)
    return metrics


__all__ = [
    "AUC_PROBABILITIES",
    "RANKING_MODES",
    "RecEvalConfig",
    "evaluate_auc",
    "evaluate_ranking",
    "evaluate_recommender",
]
