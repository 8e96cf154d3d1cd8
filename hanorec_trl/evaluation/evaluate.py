"""``evaluate_recommender``: ranking metrics (HR@K, NDCG@K) and AUC for any model TRL can train.

Ranking rows (built by the data layer): ``prompt`` (messages), ``images`` (PIL images, or absent/None for text
LLMs), ``candidates`` (completion texts), ``candidate_items`` (ids), ``target_index``. AUC rows: ``prompt``,
``images``, ``label`` (1 = "Yes", 0 = "No"), ``item``.

* Ranking, ``ranking_mode="likelihood"`` (default): every candidate is scored by its log-likelihood as the completion
  (:func:`~hanorec_trl.evaluation.scoring.score_candidates`, prompt once), ranked with pessimistic ties. With
  ``candidate_score="first_token"`` by the log-prob of its first completion token alone
  (:func:`~hanorec_trl.evaluation.scoring.score_first_tokens`: one prompt forward per row): with item-token answers
  (``docs/item_tokens.md``) the item token's log-prob.
  ``"generation"``: the paper's protocol (:mod:`~hanorec_trl.evaluation.generation`).
* Position-free ranking: rows that share a ``sequence_id`` (and the same ``candidate_items``) are one example shown
  in several candidate orders (``build_ranking_eval_dataset(permutations=...)``). Each candidate's score is the mean
  of its scores over those rows (likelihood: log-likelihood; generation: a vote ``n - j`` for the candidate listed
  j-th in the answer, 0 if unlisted), then the example is ranked once. With every cyclic shift, a model that only
  prefers a list position gives all candidates the same positional average. Metrics are per example
  (``num_ranking_rows``); ``num_prompt_rows`` counts the scored prompts.
* Position diagnostic over the scored prompts: ``position_top_first`` (the share of prompts whose top-scored candidate
  is the first listed; ties share the credit; 1/n for a position-free model) and ``position_spearman`` (the mean
  Spearman correlation of a candidate's score with its slot; negative = earlier slots score higher).
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
from ..files import atomic_file
from .generation import GenerationSettings, generate_answers, match_candidates, parse_titles
from .metrics import DEFAULT_KS, auc_score, average_ranks, binary_auc, ranking_metrics, target_rank
from .scoring import SCORING_METHODS, score_candidates, score_first_tokens, tokenize_candidates

RANKING_MODES = ("likelihood", "generation")
AUC_PROBABILITIES = ("sequence", "first_token")
CANDIDATE_SCORES = ("sequence", "first_token")


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
    candidate_score: str = field(
        default="sequence",
        metadata={"help": "Likelihood ranking: a candidate's score is its whole completion's log-likelihood "
                  "('sequence') or its first completion token's log-prob ('first_token'; one prompt forward per row: "
                  "the item token's log-prob with item-token answers)."},
    )
    batch_size: int = field(default=4, metadata={"help": "Prompts per forward (all candidates of a prompt together)."})
    max_ranking_rows: int | None = field(
        default=None,
        metadata={"help": "Evaluate only the first N ranking examples (all candidate orders of each)."},
    )
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
            ("candidate_score", self.candidate_score, CANDIDATE_SCORES),
        ):
            if value not in allowed:
                raise ValueError(f"RecEvalConfig.{name} must be one of {allowed}, got {value!r}")
        if self.ks is not None:
            self.ks = tuple(int(k) for k in self.ks)


_RANKING_KEYS = ("prompt", "candidates", "target_index")
_AUC_KEYS = ("prompt", "label")


def _rows(rows: Iterable[dict] | None, limit: int | None, required: Sequence[str], kind: str) -> list[dict]:
    """The rows of the first ``limit`` examples (rows sharing a ``sequence_id`` are one example), checked."""
    if rows is None:
        return []
    out = []
    examples: set = set()
    for i, row in enumerate(rows):
        key = row.get("sequence_id", ("row", i))
        if limit is not None and key not in examples and len(examples) >= limit:
            break
        examples.add(key)
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


def example_groups(rows: Sequence[dict]) -> list[list[int]]:
    """Row indices grouped by example: rows with the same ``sequence_id`` are candidate orders of one example (they
    must list the same candidate items and the same target); a row without ``sequence_id`` or ``candidate_items`` is
    an example of its own. Groups are in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        key = row.get("sequence_id")
        if key is None or row.get("candidate_items") is None:
            key = ("row", i)
        groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        first = rows[members[0]]
        items = list(first["candidate_items"]) if first.get("candidate_items") is not None else None
        if items is None:
            continue
        target = items[int(first["target_index"])]
        for i in members[1:]:
            other = list(rows[i]["candidate_items"])
            if sorted(other) != sorted(items) or other[int(rows[i]["target_index"])] != target:
                raise ValueError(
                    f"ranking rows {members[0]} and {i} share sequence_id {key!r} but list other candidate items or "
                    "another target; rows of one sequence_id must be orders of the same candidates"
                )
    return list(groups.values())


def _aggregate(rows: Sequence[dict], group: list[int], per_row_scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Mean score of each candidate over the rows of one example, in the first row's candidate order."""
    first = rows[group[0]]
    if len(group) == 1:
        return np.asarray(per_row_scores[group[0]], dtype=np.float64)
    items = list(first["candidate_items"])
    position = {item: j for j, item in enumerate(items)}
    total = np.zeros(len(items), dtype=np.float64)
    for i in group:
        for item, score in zip(rows[i]["candidate_items"], per_row_scores[i]):
            total[position[item]] += score
    return total / len(group)


def position_diagnostic(per_row_scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """How much scores depend on list slot: ``position_top_first`` (share of rows whose top score is slot 0, ties
    sharing the credit) and ``position_spearman`` (mean over rows of Spearman(score, slot); rows with constant scores
    are left out of the mean; NaN when every row is constant)."""
    top_first, correlations = [], []
    for scores in per_row_scores:
        s = np.asarray(scores, dtype=np.float64)
        best = s == s.max()
        top_first.append(float(best[0]) / float(best.sum()))
        if s.size > 1 and not np.all(s == s[0]):
            ranks = average_ranks(s)
            slots = np.arange(s.size, dtype=np.float64)
            correlations.append(float(np.corrcoef(ranks, slots)[0, 1]))
    return {"position_top_first": float(np.mean(top_first)),
            "position_spearman": float(np.mean(correlations)) if correlations else float("nan")}


def _generation_votes(answer: str, candidates: Sequence[str]) -> tuple[list[float], bool]:
    """Per-candidate votes from one generated answer: ``n - j`` for the candidate listed j-th, 0 if unlisted."""
    order = match_candidates(parse_titles(answer, candidates), candidates)
    votes = [0.0] * len(candidates)
    for j, index in enumerate(order):
        votes[index] = float(len(candidates) - j)
    return votes, bool(order)


def evaluate_ranking(model, processing_class, rows: Sequence[dict], config: RecEvalConfig) -> tuple[dict, dict]:
    """HR@K / NDCG@K over ranking rows (one rank per example; see the module doc); returns ``(metrics, per_row)``."""
    for i, row in enumerate(rows):
        _check_ranking_row(i, row)
    groups = example_groups(rows)
    prompts = [r["prompt"] for r in rows]
    images = [r.get("images") for r in rows]
    candidates = [list(r["candidates"]) for r in rows]
    per_row: dict[str, Any] = {}
    if config.ranking_mode == "likelihood" and config.candidate_score == "first_token":
        firsts = score_first_tokens(model, processing_class, prompts, candidates, images, batch_size=config.batch_size,
                                    progress=config.progress, desc="ranking (first token)")
        row_scores = [row.tolist() for row in firsts]
        parsed = [True] * len(rows)
    elif config.ranking_mode == "likelihood":
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
        row_scores = [[float(t.sum()) for t in row] for row in logps]
        parsed = [True] * len(rows)
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
        row_scores, parsed = map(list, zip(*(_generation_votes(a, c) for a, c in zip(answers, candidates))))
        per_row["answers"] = answers
    scores, ranks, failures = [], [], []
    for group in groups:
        aggregated = _aggregate(rows, group, row_scores)
        failed = not any(parsed[i] for i in group)
        target = int(rows[group[0]]["target_index"])
        scores.append(aggregated.tolist())
        ranks.append(np.inf if failed else float(target_rank(aggregated, target)))
        failures.append(failed)
    ranks_array = np.asarray(ranks, dtype=np.float64)
    sizes = [len(candidates[g[0]]) for g in groups]
    ks = config.ks if config.ks is not None else _default_ks(sizes)
    metrics = ranking_metrics(ranks_array, ks, sizes)
    metrics["num_ranking_rows"] = len(groups)
    metrics["num_prompt_rows"] = len(rows)
    metrics.update(position_diagnostic(row_scores))
    if config.ranking_mode == "generation":
        metrics["parse_failure_rate"] = float(np.mean(failures))
    per_row["scores"] = scores
    per_row["row_scores"] = row_scores
    per_row["sequence_ids"] = [rows[g[0]].get("sequence_id") for g in groups]
    per_row["ranks"] = [None if np.isinf(r) else int(r) for r in ranks_array]
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
        with atomic_file(output_path) as tmp:
            tmp.write_text(json.dumps({"metrics": metrics, "config": asdict(config), "per_row": details}, indent=1))
    return metrics


__all__ = [
    "AUC_PROBABILITIES",
    "RANKING_MODES",
    "RecEvalConfig",
    "evaluate_auc",
    "evaluate_ranking",
    "evaluate_recommender",
    "example_groups",
    "position_diagnostic",
]
