"""Metric functions against hand-computed cases (ties, K beyond the list, degenerate AUC labels)."""

import math

import numpy as np
import pytest

from hanorec_trl.evaluation.metrics import (
    _bootstrap_means,
    auc_score,
    binary_auc,
    hit_rate_at_k,
    mean_interval,
    ndcg_at_k,
    ndcg_gains,
    paired_bootstrap,
    ranking_metrics,
    rows_for_power,
    target_rank,
)


def test_target_rank_plain_and_pessimistic_ties():
    assert target_rank([0.1, 0.9, 0.5], 1) == 1
    assert target_rank([0.1, 0.9, 0.5], 2) == 2
    assert target_rank([0.1, 0.9, 0.5], 0) == 3
    # the target ties with one other candidate: it ranks below it
    assert target_rank([0.5, 0.9, 0.5], 0) == 3
    assert target_rank([0.5, 0.9, 0.5], 2) == 3
    # all equal: last place, whatever the candidate order
    assert target_rank([1.0] * 10, 0) == 10
    assert target_rank([1.0] * 10, 9) == 10
    # log-likelihoods (negative) behave the same
    assert target_rank([-3.0, -1.0, -2.0], 2) == 2


def test_target_rank_bad_input():
    with pytest.raises(ValueError, match="outside the 3 candidates"):
        target_rank([1, 2, 3], 3)
    with pytest.raises(ValueError, match="non-finite values at candidate positions \\[1\\]"):
        target_rank([1.0, float("nan"), 0.0], 0)
    with pytest.raises(ValueError, match="non-empty"):
        target_rank([], 0)


def test_hr_and_ndcg_hand_computed():
    ranks = [1, 2, 4, math.inf]
    # HR@1 = 1/4, HR@3 = 2/4, HR@5 = 3/4 (the unranked row is a miss everywhere)
    assert hit_rate_at_k(ranks, 1) == pytest.approx(0.25)
    assert hit_rate_at_k(ranks, 3) == pytest.approx(0.5)
    assert hit_rate_at_k(ranks, 5) == pytest.approx(0.75)
    # NDCG@3 = (1 + 1/log2(3) + 0 + 0) / 4
    assert ndcg_at_k(ranks, 3) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    # NDCG@5 adds 1/log2(5) for rank 4
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert ndcg_at_k([1, 1], 1) == 1.0
    m = ranking_metrics(ranks, ks=(1, 3))
    assert set(m) == {"hr@1", "ndcg@1", "hr@3", "ndcg@3"}
    assert m["ndcg@1"] == pytest.approx(0.25)


def test_k_larger_than_candidate_list_is_an_error():
    with pytest.raises(ValueError, match="K=10 exceeds the 5 candidates of row 1"):
        hit_rate_at_k([1, 2], 10, num_candidates=[10, 5])
    with pytest.raises(ValueError, match="K=4 exceeds the 3 candidates of row 0"):
        ndcg_at_k([1], 4, num_candidates=3)
    # K equal to the list length is allowed (HR@n = 1 for ranked rows)
    assert hit_rate_at_k([3, 1], 3, num_candidates=3) == 1.0
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="K must be a positive integer"):
            hit_rate_at_k([1], bad_k)


def test_bad_ranks():
    with pytest.raises(ValueError, match="row 1 has 0.0"):
        hit_rate_at_k([1, 0], 1)
    with pytest.raises(ValueError, match="row 0 has 1.5"):
        ndcg_at_k([1.5], 1)


def test_auc_hand_computed_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4) 1, (0.8>0.1) 1, (0.4=0.4) 0.5, (0.4>0.1) 1 -> 3.5/4
    assert auc_score([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert auc_score([0, 1], [0.2, 0.9]) == 1.0
    assert auc_score([1, 0], [0.2, 0.9]) == 0.0
    assert auc_score([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # brute force on random data with many ties
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 5, 200).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc_score(y, s) == pytest.approx(brute)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="all 3 labels are positive"):
        auc_score([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="all 2 labels are negative"):
        auc_score([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="row 1 has 2"):
        auc_score([0, 2], [0.1, 0.2])


def balanced_accuracy(labels, predictions) -> float:
    """``(TPR + TNR) / 2``, written out here: the library's ``binary_auc`` is this number."""
    y, p = np.asarray(labels) == 1, np.asarray(predictions)
    return (float(np.mean(p[y] == 1)) + float(np.mean(p[~y] == 0))) / 2.0


def test_binary_auc_equals_balanced_accuracy():
    labels = [1, 1, 1, 0, 0]
    preds = [1, 0, 1, 0, 1]
    # TPR = 2/3, TNR = 1/2 -> 7/12
    assert balanced_accuracy(labels, preds) == pytest.approx(7 / 12)
    assert binary_auc(labels, preds) == pytest.approx(7 / 12)
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 100), rng.integers(0, 2, 100)
    assert binary_auc(y, p) == pytest.approx(balanced_accuracy(y, p))
    with pytest.raises(ValueError, match="hard 0/1 predictions"):
        binary_auc([1, 0], [0.7, 0.2])


def test_ndcg_gains_per_row():
    ranks = [1, 3, 11, float("inf")]
    assert ndcg_gains(ranks, 10).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert ndcg_at_k(ranks, 10) == pytest.approx(np.mean(ndcg_gains(ranks, 10)))


def test_paired_bootstrap_pairs_the_rows():
    rng = np.random.default_rng(0)
    baseline = rng.random(200)
    same = paired_bootstrap(baseline, baseline)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_not_better": 1.0}
    # a constant +0.1 shift is certain when rows are paired, although it is small against the rows' spread
    shifted = paired_bootstrap(baseline + 0.1, baseline)
    assert shifted["difference"] == pytest.approx(0.1) and shifted["low"] == pytest.approx(0.1)
    assert shifted["p_not_better"] == 0.0
    # one row better out of 20: a positive mean whose interval reaches 0
    hits = np.zeros(20)
    one = paired_bootstrap(np.r_[1.0, hits[1:]], hits, seed=1)
    assert one["difference"] == pytest.approx(0.05) and one["low"] == 0.0 < one["high"]
    assert 0.2 < one["p_not_better"] < 0.5  # P(row 0 never drawn in 20 draws) = 0.95^20 = 0.36


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap([1.0, 0.0], [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([1.0, float("inf")], [1.0, 0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [0.0], confidence=1.0)



def test_user_bootstrap_resamples_users_with_all_their_rows():
    rng = np.random.default_rng(0)
    # one row per user: exactly the row bootstrap (same draws), whatever the user ids are
    hits = (rng.random(300) < 0.4).astype(float)
    ids = [f"u{k}" for k in rng.permutation(300)]
    assert mean_interval(hits, users=ids) == mean_interval(hits)
    assert paired_bootstrap(hits, hits[::-1], users=ids) == paired_bootstrap(hits, hits[::-1])
    # 40 users x 5 rows each, users interleaved: the bootstrap of the 40 per-user means, draw for draw
    per_user = rng.random(40)
    values = np.repeat(per_user, 5) + rng.normal(0, 0.01, 200)
    users = np.repeat(np.arange(40), 5)
    order = rng.permutation(200)
    first_seen = list(dict.fromkeys(users[order].tolist()))  # users are drawn in order of first appearance
    means = values.reshape(40, 5).mean(axis=1)[first_seen]
    np.testing.assert_allclose(mean_interval(values[order], users=users[order]), mean_interval(means), rtol=1e-12)
    # rows of a user identical: the user interval is as wide as 40 values', the row interval ~sqrt(5) narrower
    low_u, high_u = mean_interval(values, users=users)
    low_r, high_r = mean_interval(values)
    assert (high_u - low_u) > 1.8 * (high_r - low_r)
    paired_u = paired_bootstrap(values, np.zeros(200), users=users)
    assert paired_u["high"] - paired_u["low"] == pytest.approx(high_u - low_u)


def test_user_bootstrap_mean_is_over_the_rows_drawn():
    # user a: three rows of 1; user b: one row of 0. Draws {a, a}: 1, {a, b}: 3/4 (rows, not users' means), {b, b}: 0
    means = _bootstrap_means(np.array([1.0, 0.0, 1.0, 1.0]), ["a", "b", "a", "a"], 2000, 0)
    assert set(np.unique(means).tolist()) == {0.0, 0.75, 1.0}
    assert np.mean(means == 0.75) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="one user id per row"):
        mean_interval([1.0, 0.0], users=["a"])


def test_rows_for_power_formula_and_simulated_power():
    differences = np.array([1.0, -1.0] * 50)  # sd = sqrt(100 / 99)
    z = 1.959964 + 0.841621  # z_{0.975} + z_{0.8}
    assert rows_for_power(differences, 0.1) == math.ceil((z * math.sqrt(100 / 99) / 0.1) ** 2) == 793
    assert rows_for_power(differences, -0.1) == 793
    # the HR@1 case: per-row SD 0.26 -> about 5,300 rows for 0.01
    hr_like = np.r_[np.ones(36), -np.ones(36), np.zeros(1000 - 72)]
    sd = hr_like.std(ddof=1)
    assert rows_for_power(hr_like, 0.01) == math.ceil((z * sd / 0.01) ** 2)
    # at that many rows a two-sided z-test at 0.05 rejects a true difference of 0.1 about 80% of the time
    n = rows_for_power(differences, 0.1)
    rng = np.random.default_rng(0)
    draws = rng.normal(0.1, 1.0, size=(4000, n))
    z_stats = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(z_stats) > 1.96) == pytest.approx(0.8, abs=0.025)
    assert rows_for_power(differences, 0.1, power=0.5) < n < rows_for_power(differences, 0.1, alpha=0.01)
    with pytest.raises(ValueError, match="non-zero"):
        rows_for_power(differences, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        rows_for_power([0.5], 0.1)
    with pytest.raises(ValueError, match="power and alpha"):
        rows_for_power(differences, 0.1, power=1.0)
