"""Classical recommenders scored on the frozen test rows, through the same metric functions as the LLMs.

A recommendation number means little alone: under uniform negatives (the paper's protocol samples the 9 negatives
uniformly from the catalogue) a target is usually far more popular than its negatives, so **popularity is the bar to
beat, not random** (``docs/evaluation.md``). Every baseline here scores the stored candidates of each
:class:`~hanorec_trl.data.SequenceExample` (ranking: HR@K, NDCG@K with pessimistic ties) and the AUC example's item
(rank AUC over the AUC rows), exactly like :func:`~hanorec_trl.evaluation.evaluate_recommender` scores a model.

What a baseline learns from is a :class:`~hanorec_trl.data.interactions.TrainingInteractions`, of two kinds, so a
report can show both fits side by side (the data gap between the baselines and the LLM):

* full data (``TrainingInteractions.from_split(data, split)``): every interaction of the dataset except, for each
  validation and test example, its target and everything the same user did after it -- what a recommender deployed
  at the test moment would have seen of those users (the histories shown in the prompts are included);
* data-matched (``TrainingInteractions.from_examples(sft_windows, data.item_ids)``): only the LLM's training
  windows, each window's history then its target.

* ``random`` -- the expected metrics of a uniformly random ranking (exact, no sampling): HR@K = K/n.
* ``position`` -- ranks the candidates in the stored list order (what an LLM that favours the first-listed item
  achieves): HR@1 = the share of targets stored in slot 0.
* ``popularity`` -- the number of training interactions of the candidate.
* ``markov`` -- how often the candidate followed the history's last item in the training sequences; popularity
  breaks ties.
* ``item_knn`` -- the summed cosine similarity (over users) between the candidate and each history item;
  popularity breaks ties.
* ``sasrec`` -- a compact self-attentive sequential recommender trained on the same interactions
  (:mod:`hanorec_trl.sasrec`; not in the default list: it trains for about two minutes on ML-1M's full data, seconds
  on its data-matched windows).

Each fitted baseline's ``score(history, candidates)`` returns one float per candidate (higher = better).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .data.interactions import DATA_MATCHED, FULL_DATA, TrainingInteractions
from .data.protocol import SequenceExample
from .evaluation.metrics import DEFAULT_KS, auc_score, ranking_metrics, target_rank
from .sasrec import SASRec

__all__ = [
    "BASELINES",
    "DATA_MATCHED",
    "DEFAULT_BASELINES",
    "FULL_DATA",
    "ItemKNN",
    "LastItemMarkov",
    "ListPosition",
    "Popularity",
    "SASRec",
    "TrainingInteractions",
    "baseline_label",
    "evaluate_baseline",
    "evaluate_baselines",
    "expected_random_metrics",
    "fit_baseline",
]

# Popularity breaks the ties of the co-occurrence baselines without ever outweighing one co-occurrence.
_TIE_BREAK = 1e-6


class ListPosition:
    """Scores the stored list slot: the first-listed candidate highest."""

    name, label = "position", "list position"

    def fit(self, training: TrainingInteractions) -> ListPosition:
        return self

    def score(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        return -np.arange(len(candidates), dtype=np.float64)


class Popularity:
    """The candidate's number of training interactions."""

    name, label = "popularity", "popularity"

    def fit(self, training: TrainingInteractions) -> Popularity:
        self.count = training.counts()
        return self

    def score(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        return np.asarray([self.count.get(c, 0) for c in candidates], dtype=np.float64)


class LastItemMarkov(Popularity):
    """First-order transitions: how often the candidate directly followed the history's last item."""

    name, label = "markov", "Markov (last item)"

    def fit(self, training: TrainingInteractions) -> LastItemMarkov:
        super().fit(training)
        self.transitions: dict[str, Counter] = defaultdict(Counter)
        for seq in training.sequences.values():
            for previous, following in zip(seq, seq[1:]):
                self.transitions[previous][following] += 1
        self._popularity_scale = _TIE_BREAK / max(1, max(self.count.values(), default=1))
        return self

    def score(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        following = self.transitions.get(history[-1], Counter()) if history else Counter()
        return np.asarray([following.get(c, 0) + self._popularity_scale * self.count.get(c, 0) for c in candidates],
                          dtype=np.float64)


class ItemKNN(Popularity):
    """Item-based collaborative filtering: sum over the history of cos(history item, candidate), where an item is the
    binary vector of the users who interacted with it."""

    name, label = "item_knn", "item-kNN"

    def fit(self, training: TrainingInteractions) -> ItemKNN:
        super().fit(training)
        self.users_of: dict[str, set[int]] = defaultdict(set)
        for u, seq in enumerate(training.sequences.values()):
            for item in seq:
                self.users_of[item].add(u)
        self._popularity_scale = _TIE_BREAK / max(1, max(self.count.values(), default=1))
        return self

    def _cosine(self, a: str, b: str) -> float:
        users_a, users_b = self.users_of.get(a), self.users_of.get(b)
        if not users_a or not users_b:
            return 0.0
        return len(users_a & users_b) / math.sqrt(len(users_a) * len(users_b))

    def score(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        return np.asarray(
            [sum(self._cosine(h, c) for h in history) + self._popularity_scale * self.count.get(c, 0)
             for c in candidates],
            dtype=np.float64,
        )


BASELINES: dict[str, type] = {cls.name: cls for cls in (ListPosition, Popularity, LastItemMarkov, ItemKNN, SASRec)}
DEFAULT_BASELINES = ("random", "position", "popularity", "markov", "item_knn")
LABELS = {"random": "random (expected)", **{name: cls.label for name, cls in BASELINES.items()}}


def fit_baseline(name: str, training: TrainingInteractions, **options):
    """A fitted baseline by name (``position``, ``popularity``, ``markov``, ``item_knn``, ``sasrec``), fitted on
    ``training`` (full data or data-matched). ``options`` go to the baseline's constructor (only SASRec has any:
    ``epochs``, ``hidden``, ``seed``, ``progress``, ...; :class:`~hanorec_trl.sasrec.SASRec`)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(('random', *BASELINES))}")
    if not isinstance(training, TrainingInteractions):
        raise TypeError(f"fit_baseline({name!r}): training must be a TrainingInteractions (from_split for the full "
                        f"data, from_examples for data-matched), got {type(training).__name__}")
    if options and name != "sasrec":
        raise TypeError(f"baseline {name!r} takes no options, got {sorted(options)}")
    return BASELINES[name](**options).fit(training)


def baseline_label(name: str, training: TrainingInteractions) -> str:
    """The baseline's label with its training data, e.g. ``"item-kNN (data-matched)"``."""
    return f"{LABELS[name]} ({training.source})"


def _ks(examples: Sequence[SequenceExample], ks: Sequence[int] | None) -> tuple[int, ...]:
    smallest = min(len(ex.candidates) for ex in examples)
    return tuple(ks) if ks is not None else tuple(k for k in DEFAULT_KS if k <= smallest)


def expected_random_metrics(examples: Sequence[SequenceExample], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """The exact expected HR@K / NDCG@K of a uniformly random ranking of each example's candidates, and AUC 0.5.

    Returns ``{"metrics": ..., "per_row": {"expected_hits": {K: [...]}, "expected_gains": {K: [...]}}}``: per-row
    expectations, so that paired differences against it can be computed like against any other model.
    """
    if not examples:
        raise ValueError("expected_random_metrics: no examples")
    ks = _ks(examples, ks)
    sizes = np.asarray([len(ex.candidates) for ex in examples], dtype=np.float64)
    metrics: dict[str, Any] = {}
    hits, gains = {}, {}
    for k in ks:
        hits[k] = np.minimum(k, sizes) / sizes
        gains[k] = np.asarray([sum(1.0 / math.log2(r + 1) for r in range(1, min(k, int(n)) + 1)) / n for n in sizes])
        metrics[f"hr@{k}"] = float(hits[k].mean())
        metrics[f"ndcg@{k}"] = float(gains[k].mean())
    metrics.update(auc=0.5, num_ranking_rows=len(examples), num_auc_rows=len(examples))
    per_row = {"expected_hits": {str(k): v.tolist() for k, v in hits.items()},
               "expected_gains": {str(k): v.tolist() for k, v in gains.items()}}
    return {"metrics": metrics, "per_row": per_row}


def evaluate_baseline(baseline, examples: Sequence[SequenceExample], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """HR@K / NDCG@K over the examples' stored candidates and the rank AUC over their AUC items.

    Returns ``{"metrics": ..., "per_row": {"ranking": {"ranks", "scores"}, "auc": {"p_yes", "labels"}}}``, the
    layout :func:`~hanorec_trl.evaluation.evaluate_recommender` writes, so reports read both alike. ``p_yes`` holds
    the baseline's raw score of the AUC item (AUC only depends on its order).
    """
    if not examples:
        raise ValueError("evaluate_baseline: no examples")
    ks = _ks(examples, ks)
    scores, ranks = [], []
    for ex in examples:
        s = baseline.score(ex.history, ex.candidates)
        scores.append(s.tolist())
        ranks.append(target_rank(s, ex.target_index))
    metrics: dict[str, Any] = ranking_metrics(ranks, ks, [len(ex.candidates) for ex in examples])
    metrics["num_ranking_rows"] = len(examples)
    labels = [ex.auc_label for ex in examples]
    item_scores = [float(baseline.score(ex.history, [ex.auc_item])[0]) for ex in examples]
    if 0 < sum(labels) < len(labels):
        metrics["auc"] = auc_score(labels, item_scores)
        metrics["num_auc_rows"] = len(examples)
    return {"metrics": metrics,
            "per_row": {"ranking": {"ranks": [int(r) for r in ranks], "scores": scores},
                        "auc": {"p_yes": item_scores, "labels": labels}}}


def evaluate_baselines(names: Sequence[str], data, split, examples: Sequence[SequenceExample], *,
                       matched_windows: Sequence[SequenceExample] | None = None,
                       ks: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """Each baseline of ``names`` on ``examples``, fitted on the full training data (``from_split``) and, with
    ``matched_windows`` (the LLM's training windows), also data-matched beside it. Returns ``{key: {"label",
    "metrics", "per_row"}}`` keyed ``baseline-<name>`` and ``baseline-<name>-matched``; ``random`` (exact
    expectation) and ``position`` learn nothing and appear once."""
    fits = [TrainingInteractions.from_split(data, split)]
    if matched_windows is not None:
        fits.append(TrainingInteractions.from_examples(matched_windows, data.item_ids))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        for training in fits[:1] if name in ("random", "position") else fits:
            key = f"baseline-{name}" + ("-matched" if training is not fits[0] else "")
            if name == "random":
                evaluation = expected_random_metrics(examples, ks)
            else:
                evaluation = evaluate_baseline(fit_baseline(name, training), examples, ks)
            label = LABELS[name] if len(fits) == 1 or name in ("random", "position") else baseline_label(name, training)
            out[key] = {"label": label, **evaluation}
    return out

