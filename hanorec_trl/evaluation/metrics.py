"""Pure recommendation metrics: the target's rank, HR@K, NDCG@K and AUC (paper Sec. 4.1).

Conventions (also in ``docs/evaluation.md``):

* Ranks are 1-based. A ranking row has exactly one relevant item (the target).
* Ties are pessimistic: the target ranks *below* every other candidate whose score equals its own, i.e.
  ``rank = 1 + #{j != t : s_j >= s_t}``. A model that scores every candidate alike therefore gets rank
  ``num_candidates``, never a flattering rank 1; the result does not depend on the candidate order.
* A row the model could not rank (a generation whose output matched no candidate) has rank ``inf``: it stays in
  the denominator and counts as a miss at every K.
* ``HR@K = mean(rank <= K)``, ``NDCG@K = mean(1 / log2(rank + 1) if rank <= K else 0)`` (with a single relevant
  item the ideal DCG is 1).
* ``K`` larger than a row's candidate list is an error: every candidate would be "in the top K" and HR@K would be
  1 by construction, which is almost always a configuration mistake.
* AUC is the rank statistic (Mann-Whitney U / (n_pos * n_neg)); a tied positive-negative pair counts 1/2.
  Labels that are all positive or all negative make AUC undefined: a ``ValueError`` says so.
* The binary AUC of hard predictions (the released code's convention) equals balanced accuracy:
  ``(TPR + TNR) / 2``.
* Intervals are percentile bootstraps over rows, or over users (``users=``: a user's rows are correlated, so they
  are resampled together); :func:`rows_for_power` gives the rows a paired difference needs for 80% power.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import NormalDist

import numpy as np

DEFAULT_KS = (1, 3, 5, 10)


def target_rank(scores: Sequence[float], target_index: int) -> int:
    """The 1-based rank of ``scores[target_index]`` among ``scores`` (higher = better), ties pessimistic."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D sequence, got shape {values.shape}")
    if not 0 <= int(target_index) < values.size:
        raise ValueError(f"target_index {target_index} is outside the {values.size} candidates")
    if not np.all(np.isfinite(values)):
        bad = np.flatnonzero(~np.isfinite(values)).tolist()
        raise ValueError(f"scores contain non-finite values at candidate positions {bad}")
    target = values[target_index]
    others_at_least = int(np.sum(values >= target)) - 1
    return 1 + others_at_least


def _check_k(k: int, num_candidates: int | Sequence[int] | None) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"K must be a positive integer, got {k!r}")
    if num_candidates is None:
        return
    sizes = np.atleast_1d(np.asarray(num_candidates))
    too_small = np.flatnonzero(sizes < k)
    if too_small.size:
        row = int(too_small[0])
        raise ValueError(
            f"K={k} exceeds the {int(sizes[row])} candidates of row {row}: HR@{k} would be 1 by construction. "
            f"Use K <= {int(sizes.min())}."
        )


def _check_ranks(ranks: Iterable[float]) -> np.ndarray:
    values = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("ranks must be a non-empty 1-D sequence (one rank per ranking row)")
    finite = values[np.isfinite(values)]
    if np.isnan(values).any() or (finite < 1).any() or (finite != np.round(finite)).any():
        bad = int(
            np.flatnonzero(np.isnan(values) | (values < 1) | (np.isfinite(values) & (values != np.round(values))))[0]
        )
        raise ValueError(
            f"ranks must be integers >= 1 (or inf for an unranked row); row {bad} has {float(values[bad])}"
        )
    return values


def hit_rate_at_k(ranks: Sequence[float], k: int, num_candidates: int | Sequence[int] | None = None) -> float:
    """HR@K: the fraction of rows whose target ranks within the top ``k`` (``inf`` ranks are misses)."""
    _check_k(k, num_candidates)
    values = _check_ranks(ranks)
    return float(np.mean(values <= k))


def ndcg_gains(ranks: Sequence[float], k: int, num_candidates: int | Sequence[int] | None = None) -> np.ndarray:
    """Per-row NDCG@K with a single relevant item: ``1/log2(rank+1)`` if ``rank <= k``, else 0."""
    _check_k(k, num_candidates)
    values = _check_ranks(ranks)
    return np.where(values <= k, 1.0 / np.log2(np.minimum(values, k) + 1.0), 0.0)


def ndcg_at_k(ranks: Sequence[float], k: int, num_candidates: int | Sequence[int] | None = None) -> float:
    """NDCG@K: the mean of :func:`ndcg_gains` over the rows."""
    return float(np.mean(ndcg_gains(ranks, k, num_candidates)))


def ranking_metrics(
    ranks: Sequence[float], ks: Sequence[int] = DEFAULT_KS, num_candidates: int | Sequence[int] | None = None
) -> dict[str, float]:
    """``{"hr@K": ..., "ndcg@K": ...}`` for every K in ``ks``."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate_at_k(ranks, k, num_candidates)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k, num_candidates)
    return out


def _check_labels(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.size != s.size:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(y, (0, 1)))[0])
        raise ValueError(f"labels must be 0 or 1; row {bad} has {y[bad].item()!r}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores contain non-finite values at rows {np.flatnonzero(~np.isfinite(s)).tolist()[:10]}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        kind = "positive (1)" if n_pos else "negative (0)"
        raise ValueError(f"AUC is undefined: all {y.size} labels are {kind}; it needs both positives and negatives")
    return y.astype(bool), s


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order, each run of equal values getting its average rank."""
    s = np.asarray(values, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    start = 0
    while start < s.size:
        end = start
        while end + 1 < s.size and sorted_s[end + 1] == sorted_s[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def auc_score(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC from scores (higher = more likely positive): the probability that a random positive outscores a
    random negative, a tie counting 1/2. Computed from average ranks (Mann-Whitney U)."""
    y, s = _check_labels(labels, scores)
    ranks = average_ranks(s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_auc(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """AUC of hard 0/1 predictions (the released code's convention); equals balanced accuracy (TPR + TNR) / 2."""
    preds = np.asarray(predictions)
    if preds.size and not np.isin(preds, (0, 1)).all():
        raise ValueError("binary_auc takes hard 0/1 predictions; use auc_score for continuous scores")
    return auc_score(labels, preds.astype(np.float64))


def _bootstrap_means(values: np.ndarray, users: Sequence | None, num_resamples: int, seed: int) -> np.ndarray:
    """The mean of ``values`` in each of ``num_resamples`` percentile-bootstrap resamples.

    Without ``users``: rows are drawn with replacement. With ``users`` (one id per row): users are drawn with
    replacement, each drawn user bringing all of their rows, and a resample's mean is the sum over the rows it holds
    divided by their number (users in order of first appearance, so one row per user draws exactly what the row
    bootstrap draws). Resamples are drawn in chunks of about 2M indices; the draws are those of one big call.
    """
    if users is None:
        sums, counts = values, None
    else:
        ids = np.asarray(users)
        if ids.shape != values.shape:
            raise ValueError(f"users must give one user id per row: {ids.shape[0] if ids.ndim else 0} ids for "
                             f"{values.size} rows")
        _, first, group = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # group -> rank of first appearance
        group = order[group.ravel()]
        sums = np.bincount(group, weights=values, minlength=first.size)
        counts = np.bincount(group, minlength=first.size)
    n = sums.size
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, num_resamples, chunk):
        drawn = rng.integers(0, n, size=(min(chunk, num_resamples - start), n))
        if counts is None:
            means[start : start + len(drawn)] = sums[drawn].mean(axis=1)
        else:
            means[start : start + len(drawn)] = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    return means


def paired_bootstrap(values: Sequence[float], baseline: Sequence[float], *, users: Sequence | None = None,
                     num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The mean per-row difference ``values - baseline`` of two models on the same test rows, with a paired
    percentile-bootstrap confidence interval (both models resampled together).

    ``users=None`` resamples rows; ``users`` (the user id of each row) resamples users, each with all of their rows:
    the interval to use when a user has several rows, whose differences are correlated (with one row per user both
    give the same interval). Returns ``{"difference", "low", "high", "p_not_better"}``; ``p_not_better`` is the
    fraction of resamples whose difference is <= 0 (a one-sided bootstrap p-value for "values is better"). Two
    models evaluated on different rows cannot be paired: unequal lengths are an error.
    """
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_bootstrap needs two non-empty 1-D arrays over the same rows, got {a.shape} and "
                         f"{b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired_bootstrap: per-row values must be finite")
    _check_interval_settings(confidence, num_resamples)
    diff = a - b
    means = _bootstrap_means(diff, users, num_resamples, seed)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
            "p_not_better": float(np.mean(means <= 0.0))}


def _check_interval_settings(confidence: float, num_resamples: int) -> None:
    if not 0 < confidence < 1 or num_resamples < 1:
        raise ValueError(f"confidence must lie in (0, 1) and num_resamples >= 1, got {confidence}, {num_resamples}")


def mean_interval(values: Sequence[float], *, users: Sequence | None = None, num_resamples: int = 10_000,
                  confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of the mean of per-row values (e.g. HR@K hits or NDCG@K gains); with
    ``users`` (one id per row) users are resampled instead of rows, as in :func:`paired_bootstrap`."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"mean_interval needs a non-empty 1-D array of finite values, got shape {a.shape}")
    _check_interval_settings(confidence, num_resamples)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(_bootstrap_means(a, users, num_resamples, seed), [tail, 1.0 - tail])
    return float(low), float(high)


def rows_for_power(differences: Sequence[float], difference: float, *, power: float = 0.8,
                   alpha: float = 0.05) -> int:
    """The number of test rows a paired comparison needs to detect a mean difference of ``difference`` with
    probability ``power`` in a two-sided test at level ``alpha`` (defaults: 80% power, alpha 0.05):
    ``n = ((z_{1-alpha/2} + z_{power}) * sd / difference)^2``, rounded up, with ``sd`` the sample standard deviation
    of the paired per-row ``differences`` (e.g. ``hits_a - hits_b``). Normal approximation; the rows are taken as
    independent (one row per user, as both protocols' test parts are). Report it beside each difference, e.g. at
    the observed difference and at the resolution a claim needs (0.01)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or d.size < 2 or not np.all(np.isfinite(d)):
        raise ValueError(f"rows_for_power needs at least 2 finite paired per-row differences, got shape {d.shape}")
    if not (isinstance(difference, (int, float, np.floating)) and math.isfinite(difference) and difference != 0):
        raise ValueError(f"rows_for_power: the difference to detect must be a finite non-zero number, got "
                         f"{difference!r}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"rows_for_power: power and alpha must lie in (0, 1), got {power}, {alpha}")
    normal = NormalDist()
    z = normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)
    return max(1, math.ceil((z * float(d.std(ddof=1)) / abs(float(difference))) ** 2))


def auc_interval(labels: Sequence[int], scores: Sequence[float], *, num_resamples: int = 2_000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of :func:`auc_score`, resampling rows within each class (so every resample
    has both classes and the class sizes of the data)."""
    y, s = _check_labels(labels, scores)
    _check_interval_settings(confidence, num_resamples)
    rng = np.random.default_rng(seed)
    pos, neg = s[y], s[~y]
    values = np.empty(num_resamples, dtype=np.float64)
    labels_resampled = np.concatenate([np.ones(pos.size, dtype=int), np.zeros(neg.size, dtype=int)])
    for b in range(num_resamples):
        sample = np.concatenate([pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]])
        values[b] = auc_score(labels_resampled, sample)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)
