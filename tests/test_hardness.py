"""HardnessIndex / add_hardness_column (paper Eq. 4-6; docs/design.md) against an independent brute-force NumPy
implementation, approximate indices against the exact one, and every bad input."""

import re
import warnings

import numpy as np
import pytest
from datasets import Dataset

from hanorec_trl.hardness import (
    HardnessIndex,
    HardnessIndexConfig,
    add_hardness_column,
    lambda_ceiling,
    lambda_spread,
    lambdas_from_deltas,
)

# ---------------------------------------------------------------------- the reference, written from docs/design.md


def reference_fused(text, image=None):
    """e_j = normalize(normalize(h_j) + normalize(x_j)); normalize(h_j) when x_j is all zero (float64)."""
    text = np.asarray(text, dtype=np.float64)
    fused = []
    for j in range(len(text)):
        vector = text[j] / np.sqrt(np.sum(text[j] ** 2))
        if image is not None and np.any(image[j] != 0):
            x = np.asarray(image[j], dtype=np.float64)
            vector = vector + x / np.sqrt(np.sum(x**2))
        fused.append(vector / np.sqrt(np.sum(vector**2)))
    return np.array(fused)


def reference_profile(fused, anchor, k, temperature):
    """Z_a = softmax(c_a / tau) over the K best cosines of the other items (anchor removed by id)."""
    cosines = [float(np.dot(fused[anchor], fused[j])) for j in range(len(fused)) if j != anchor]
    top = np.array(sorted(cosines, reverse=True)[:k])
    weights = np.exp(top / temperature - np.max(top / temperature))
    return weights / weights.sum()


def reference_lambdas(text, image, chosen, rejected, k=10, temperature=1.0, mode="topk", delta_mean=None):
    """lambda per sample; chosen/rejected: per sample a list of rows (aligned pairs). Returns (lambda, Delta, mean)."""
    fused = reference_fused(text, image)
    deltas = []
    for ws, ls in zip(chosen, rejected):
        per_pair = []
        for w, l in zip(ws, ls):  # noqa: E741 - w and l as in the paper's notation
            if mode == "topk":
                z_w = reference_profile(fused, w, k, temperature)
                z_l = reference_profile(fused, l, k, temperature)
                per_pair.append(np.sqrt(np.sum((z_w - z_l) ** 2)))
            else:
                per_pair.append(1.0 - float(np.dot(fused[w], fused[l])))
        deltas.append(np.mean(per_pair))
    deltas = np.array(deltas)
    mean = deltas.mean() if delta_mean is None else delta_mean
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    return sigmoid(deltas) / sigmoid(mean), deltas, mean


def catalogue(num_items=40, dim=8, seed=0, missing_images=(3, 7, 11)):
    """Text and image embeddings with a shared cluster structure (so Top-K sets differ between items)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, dim))
    group = rng.integers(0, 5, size=num_items)
    text = centres[group] + 0.6 * rng.normal(size=(num_items, dim))
    image = centres[group] + 0.6 * rng.normal(size=(num_items, dim))
    image[list(missing_images)] = 0.0
    return text.astype(np.float32), image.astype(np.float32)


def random_pairs(num_items, num_samples, seed=1, max_pairs=1):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_pairs + 1, size=num_samples)
    chosen = [list(rng.integers(0, num_items, size=c)) for c in counts]
    rejected = [list(rng.integers(0, num_items, size=c)) for c in counts]
    return chosen, rejected


# ---------------------------------------------------------------------- equations


@pytest.mark.parametrize("k", [1, 5, 10, 39])
@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.02])
def test_topk_lambda_matches_brute_force(k, temperature):
    text, image = catalogue()
    chosen, rejected = random_pairs(len(text), 60)
    index = HardnessIndex(text, image)
    scores = index.score(chosen, rejected, k=k, temperature=temperature)
    expected, expected_deltas, expected_mean = reference_lambdas(text, image, chosen, rejected, k, temperature)
    assert scores.lambdas.dtype == np.float32 and scores.lambdas.shape == (60,)
    # float32 cosines (FAISS) carry ~1e-7 error, amplified by 1/tau in the softmax
    np.testing.assert_allclose(scores.deltas, expected_deltas, rtol=0, atol=1e-7 / temperature)
    np.testing.assert_allclose(scores.lambdas, expected, rtol=0, atol=1e-7 / temperature)
    assert scores.delta_mean == pytest.approx(expected_mean, rel=1e-5, abs=1e-9)
    # hardness() is the lambda of score(); deltas() its Delta
    np.testing.assert_array_equal(index.score(chosen, rejected, k=k, temperature=temperature).lambdas, scores.lambdas)
    np.testing.assert_array_equal(index.score(chosen, rejected, k=k, temperature=temperature).deltas, scores.deltas)


def test_smaller_temperature_spreads_lambda():
    text, image = catalogue()
    chosen, rejected = random_pairs(len(text), 200)
    index = HardnessIndex(text, image)
    spread = {tau: np.ptp(index.score(chosen, rejected, temperature=tau).lambdas) for tau in (1.0, 0.05)}
    assert spread[0.05] > 5 * spread[1.0] > 0


def test_pairwise_mode_matches_brute_force():
    text, image = catalogue()
    chosen, rejected = random_pairs(len(text), 50, max_pairs=3)
    lambdas = HardnessIndex(text, image).score(chosen, rejected, mode="pairwise").lambdas
    expected, _, _ = reference_lambdas(text, image, chosen, rejected, mode="pairwise")
    np.testing.assert_allclose(lambdas, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["topk", "pairwise"])
def test_several_aligned_pairs_per_sample_average_delta(mode):
    text, image = catalogue()
    chosen, rejected = random_pairs(len(text), 40, seed=5, max_pairs=4)
    assert len({len(c) for c in chosen}) > 1  # ragged: 1 to 4 pairs per sample
    index = HardnessIndex(text, image)
    scores = index.score(chosen, rejected, k=5, temperature=0.2, mode=mode)
    expected, expected_deltas, _ = reference_lambdas(text, image, chosen, rejected, 5, 0.2, mode)
    np.testing.assert_allclose(scores.deltas, expected_deltas, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores.lambdas, expected, rtol=1e-6, atol=1e-7)
    # a sample's Delta is the mean of its pairs' Deltas
    first = index.score([[c] for c in chosen[0]], [[r] for r in rejected[0]], k=5, temperature=0.2, mode=mode).deltas
    assert scores.deltas[0] == pytest.approx(first.mean(), rel=1e-12)


def test_equal_length_pairs_as_2d_arrays_and_plain_ints():
    text, image = catalogue()
    rng = np.random.default_rng(3)
    chosen, rejected = rng.integers(0, 40, size=(30, 2)), rng.integers(0, 40, size=(30, 2))
    index = HardnessIndex(text, image)
    from_arrays = index.score(chosen, rejected, k=4).lambdas
    from_lists = index.score([list(map(int, c)) for c in chosen], [list(map(int, r)) for r in rejected], k=4).lambdas
    np.testing.assert_array_equal(from_arrays, from_lists)
    singles = index.score(chosen[:, 0], rejected[:, 0], k=4).lambdas
    expected, _, _ = reference_lambdas(text, image, chosen[:, :1], rejected[:, :1], 4)
    np.testing.assert_allclose(singles, expected, rtol=1e-6, atol=1e-7)


def test_items_without_images_and_text_only_index():
    text, image = catalogue(missing_images=range(0, 40, 2))
    chosen, rejected = random_pairs(len(text), 50)
    index = HardnessIndex(text, image)
    assert index.has_image.sum() == 20
    np.testing.assert_allclose(index.embeddings([0, 1]), reference_fused(text, image)[[0, 1]], atol=1e-6)
    expected, _, _ = reference_lambdas(text, image, chosen, rejected, 6, 0.3)
    lambdas = index.score(chosen, rejected, k=6, temperature=0.3).lambdas
    np.testing.assert_allclose(lambdas, expected, rtol=1e-6, atol=1e-7)
    text_only = HardnessIndex(text).score(chosen, rejected, k=6, temperature=0.3).lambdas
    expected, _, _ = reference_lambdas(text, None, chosen, rejected, 6, 0.3)
    np.testing.assert_allclose(text_only, expected, rtol=1e-6, atol=1e-7)
    # an all-zero image matrix is the same as no images
    np.testing.assert_array_equal(
        HardnessIndex(text, np.zeros_like(image)).score(chosen, rejected, k=6, temperature=0.3).lambdas, text_only
    )


def test_delta_mean_given_vs_computed():
    text, image = catalogue()
    train_c, train_r = random_pairs(len(text), 80, seed=1)
    test_c, test_r = random_pairs(len(text), 20, seed=2)
    index = HardnessIndex(text, image)
    train = index.score(train_c, train_r, temperature=0.1)
    test = index.score(test_c, test_r, temperature=0.1, delta_mean=train.delta_mean)
    assert test.delta_mean == train.delta_mean
    expected, _, _ = reference_lambdas(text, image, test_c, test_r, 10, 0.1, delta_mean=train.delta_mean)
    np.testing.assert_allclose(test.lambdas, expected, rtol=1e-6, atol=1e-7)
    own_mean = index.score(test_c, test_r, temperature=0.1).lambdas
    assert not np.allclose(own_mean, test.lambdas)  # the set's own mean gives different lambdas
    # the training set's lambdas average about 1 (sigmoid is nearly linear over the small Delta range)
    assert abs(float(train.lambdas.mean()) - 1.0) < 1e-3
    lambdas, used = lambdas_from_deltas(np.array([0.0, 0.5]), delta_mean=0.5)
    np.testing.assert_allclose(lambdas, [0.5 / (1 / (1 + np.exp(-0.5))), 1.0], rtol=1e-6)
    assert used == 0.5


def test_duplicates_and_ties_exclude_the_anchor_by_id():
    text, image = catalogue(num_items=30)
    text[5], image[5] = text[4], image[4]  # item 5 duplicates item 4
    text[6], image[6] = text[4], image[4]  # ... and so does item 6
    index = HardnessIndex(text, image)
    neighbours, scores = index.top_k([4, 5, 6], k=3)
    assert 4 not in neighbours[0] and 5 not in neighbours[1] and 6 not in neighbours[2]
    np.testing.assert_array_equal(neighbours[:, :2], [[5, 6], [4, 6], [4, 5]])  # equal scores: lower row first
    np.testing.assert_allclose(scores[:, :2], 1.0, atol=1e-6)
    chosen, rejected = [4, 5, 6, 4], [0, 1, 2, 3]
    expected, _, _ = reference_lambdas(text, image, [[c] for c in chosen], [[r] for r in rejected], 3, 0.05)
    np.testing.assert_allclose(index.score(chosen, rejected, k=3, temperature=0.05).lambdas, expected, rtol=1e-6)


def test_deterministic_and_independent_of_batching():
    text, image = catalogue(num_items=400, dim=16)
    chosen, rejected = random_pairs(400, 3000, seed=7)
    index = HardnessIndex(text, image)
    everything = index.score(chosen, rejected, k=10, temperature=0.5).deltas
    rebuilt = HardnessIndex(text, image).score(chosen, rejected, k=10, temperature=0.5).deltas
    np.testing.assert_array_equal(everything, rebuilt)
    # a pair scored alone gets bit-identical Delta to the same pair inside a large job
    for sample in (0, 17, 2999):
        alone = index.score(chosen[sample : sample + 1], rejected[sample : sample + 1], k=10, temperature=0.5).deltas
        assert alone[0] == everything[sample]


def test_top_k_returns_the_exact_neighbours():
    text, image = catalogue(num_items=120, dim=12)
    fused = reference_fused(text, image)
    index = HardnessIndex(text, image)
    rows = [0, 5, 5, 119]
    neighbours, scores = index.top_k(rows, k=7)
    for row, got_ids, got_scores in zip(rows, neighbours, scores):
        cosines = fused @ fused[row]
        cosines[row] = -np.inf
        np.testing.assert_array_equal(got_ids, np.argsort(-cosines, kind="stable")[:7])
        np.testing.assert_allclose(got_scores, np.sort(cosines)[::-1][:7], atol=1e-6)


# ---------------------------------------------------------------------- approximate indices


def clustered(num_items, dim, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_items // 50, dim))
    text = centres[rng.integers(0, len(centres), size=num_items)] + 0.5 * rng.normal(size=(num_items, dim))
    return text.astype(np.float32)


@pytest.mark.parametrize("kind, options", [("ivf", {"ivf_nprobe": 8}), ("hnsw", {})])
def test_approximate_index_recall_against_exact(kind, options):
    text = clustered(3000, 32)
    exact = HardnessIndex(text)
    approximate = HardnessIndex(text, index=kind, **options)
    rows = np.arange(0, 3000, 7)
    exact_ids, exact_scores = exact.top_k(rows, k=10)
    approx_ids, approx_scores = approximate.top_k(rows, k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_ids, exact_ids)])
    assert recall >= 0.95, recall
    # scores of the returned items are exact cosines; "exact=True" on the approximate index is the flat answer
    np.testing.assert_allclose(approximate.embeddings(rows[:5]), exact.embeddings(rows[:5]), atol=1e-7)
    forced_ids, forced_scores = approximate.top_k(rows, k=10, exact=True)
    np.testing.assert_array_equal(forced_ids, exact_ids)
    np.testing.assert_allclose(forced_scores, exact_scores, atol=1e-6)
    chosen, rejected = random_pairs(3000, 500, seed=3)
    lam_exact = exact.score(chosen, rejected, temperature=0.1).lambdas
    lam_approx = approximate.score(chosen, rejected, temperature=0.1).lambdas
    assert np.max(np.abs(lam_exact - lam_approx)) < 0.01


def test_ivf_is_deterministic_and_falls_back_to_exact_when_lists_are_short():
    text = clustered(600, 16)
    chosen, rejected = random_pairs(600, 300, seed=4)
    first = HardnessIndex(text, index="ivf", ivf_nlist=200, ivf_nprobe=1)  # ~3 items per list < K + 1
    second = HardnessIndex(text, index="ivf", ivf_nlist=200, ivf_nprobe=1)
    with pytest.warns(UserWarning, match="fewer than K=10 neighbours"):
        lam_first = first.score(chosen, rejected).lambdas
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(lam_first, second.score(chosen, rejected).lambdas)
    rows = np.arange(600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, _ = first.top_k(rows, k=10)
    assert (ids >= 0).all() and not (ids == rows[:, None]).any()


def test_config_object_and_keyword_options():
    text = clustered(300, 8)
    config = HardnessIndexConfig(index="ivf", ivf_nlist=10, ivf_nprobe=10)
    index = HardnessIndex(text, config=config, show_progress=False)
    assert index.config.index == "ivf" and index.faiss_index.nlist == 10 and index.config.show_progress is False
    assert "ivf" in repr(index)
    # all lists probed: the IVF answer is the exact one
    np.testing.assert_array_equal(index.top_k(np.arange(300), 5)[0], HardnessIndex(text).top_k(np.arange(300), 5)[0])


# ---------------------------------------------------------------------- bad input


def test_embedding_validation_names_the_rows():
    text, image = catalogue()
    bad = text.copy()
    bad[[2, 9]] = np.nan
    with pytest.raises(ValueError, match=r"2 rows with non-finite values \(2, 9\)"):
        HardnessIndex(bad, image)
    bad_image = image.copy()
    bad_image[13, 0] = np.inf
    with pytest.raises(ValueError, match=r"1 rows with non-finite values \(13\)"):
        HardnessIndex(text, bad_image)
    zero = text.copy()
    zero[[0, 21]] = 0
    with pytest.raises(ValueError, match=r"2 rows with an all-zero text embedding \(0, 21\)"):
        HardnessIndex(zero, image)
    cancel = image.copy()
    cancel[8] = -text[8]
    with pytest.raises(ValueError, match=r"cancel \(8\)"):
        HardnessIndex(text, cancel)
    many = text.copy()
    many[:25] = np.nan
    with pytest.raises(ValueError, match=r"0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. and 15 more"):
        HardnessIndex(many)


def test_embedding_shapes_and_options_are_checked():
    text, image = catalogue()
    with pytest.raises(ValueError, match=r"image_emb has shape \(40, 4\) but text_emb has shape \(40, 8\)"):
        HardnessIndex(text, image[:, :4])
    with pytest.raises(ValueError, match=r"image_emb has shape \(39, 8\)"):
        HardnessIndex(text, image[:39])
    with pytest.raises(ValueError, match="text_emb must be a \\[num_items, d\\] array"):
        HardnessIndex(text[0])
    with pytest.raises(ValueError, match="text_emb must be a \\[num_items, d\\] array"):
        HardnessIndex(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="at least 2 items"):
        HardnessIndex(text[:1])
    with pytest.raises(ValueError, match="index must be one of"):
        HardnessIndex(text, index="lsh")
    with pytest.raises(TypeError, match=r"unknown HardnessIndex option\(s\) \['nprobe'\]"):
        HardnessIndex(text, nprobe=4)
    with pytest.raises(ValueError, match="ivf_nprobe"):
        HardnessIndex(text, index="ivf", ivf_nprobe=0)
    with pytest.raises(ValueError, match="ivf_train_size=3 is smaller than ivf_nlist=6"):
        HardnessIndex(text, index="ivf", ivf_nlist=6, ivf_train_size=3)


def test_hardness_arguments_are_checked():
    text, image = catalogue()
    index = HardnessIndex(text, image)
    with pytest.raises(IndexError, match=r"chosen item rows out of range \[0, 40\): 40, -1 in samples 1, 3"):
        index.score([0, 40, 2, -1], [1, 2, 3, 4]).lambdas
    with pytest.raises(IndexError, match=r"rejected item rows out of range \[0, 40\): 99 in samples 0"):
        index.score([[0, 1]], [[2, 99]]).lambdas
    with pytest.raises(ValueError, match="k=40 but the catalogue has 40 items.*at most 39"):
        index.score([0], [1], k=40).lambdas
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.score([0], [1], k=0).lambdas
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        index.score([0], [1], temperature=0.0).lambdas
    with pytest.raises(ValueError, match="mode must be one of"):
        index.score([0], [1], mode="sam").lambdas
    with pytest.raises(ValueError, match="chosen has 2 samples but rejected has 1"):
        index.score([0, 1], [2]).lambdas
    with pytest.raises(ValueError, match=r"samples 1 have chosen and rejected sequences of different lengths"):
        index.score([[0], [1, 2]], [[3], [4]]).lambdas
    with pytest.raises(ValueError, match=r"samples 0 have no \(chosen, rejected\) pair"):
        index.score([[], [1]], [[], [2]]).lambdas
    with pytest.raises(TypeError, match=r"chosen\[1\] must be an item row .* got float 2.5"):
        index.score([0, 2.5], [1, 2]).lambdas
    with pytest.raises(TypeError, match=r"rejected\[0\] contains 2.5 \(float\)"):
        index.score([[0, 1]], [[2, 2.5]]).lambdas
    with pytest.raises(TypeError, match=r"chosen\[0\] must be an item row"):
        index.score(["1193"], ["1"]).lambdas
    with pytest.raises(ValueError, match="delta_mean must be a finite number >= 0"):
        index.score([0], [1], delta_mean=-0.1).lambdas
    with pytest.raises(ValueError, match="mean Delta is undefined"):
        index.score([], []).lambdas
    assert index.score([], [], delta_mean=0.1).lambdas.shape == (0,)


# ---------------------------------------------------------------------- add_hardness_column


def dpo_rows(item_ids, chosen, rejected):
    """A DPO-like dataset whose item columns hold ids (str) or lists of ids."""
    as_ids = lambda rows: [item_ids[r] if np.ndim(r) == 0 else [item_ids[x] for x in r] for r in rows]  # noqa: E731
    return Dataset.from_dict(
        {
            "prompt": [f"p{i}" for i in range(len(chosen))],
            "chosen_item": as_ids(chosen),
            "rejected_item": as_ids(rejected),
        }
    )


def test_add_hardness_column_single_and_several_pairs():
    text, image = catalogue()
    index = HardnessIndex(text, image)
    item_ids = [str(1000 + j) for j in range(40)]
    item_rows = {item: row for row, item in enumerate(item_ids)}
    chosen, rejected = random_pairs(40, 30, seed=9, max_pairs=3)
    several = dpo_rows(item_ids, chosen, rejected)
    out, delta_mean = add_hardness_column(several, index, item_rows, k=5, temperature=0.2)
    expected, _, expected_mean = reference_lambdas(text, image, chosen, rejected, 5, 0.2)
    assert out.features["hano_lambda"].dtype == "float32"
    np.testing.assert_allclose(out["hano_lambda"], expected, rtol=1e-6, atol=1e-7)
    assert delta_mean == pytest.approx(expected_mean, rel=1e-5)
    assert out.column_names == ["prompt", "chosen_item", "rejected_item", "hano_lambda"]
    assert "hano_lambda" not in several.column_names  # the input dataset is untouched

    singles = dpo_rows(item_ids, [c[0] for c in chosen], [r[0] for r in rejected])
    out, _ = add_hardness_column(singles, index, item_rows, k=5, temperature=0.2, delta_mean=delta_mean, mode="topk")
    expected, _, _ = reference_lambdas(
        text, image, [c[:1] for c in chosen], [r[:1] for r in rejected], 5, 0.2, delta_mean=delta_mean
    )
    np.testing.assert_allclose(out["hano_lambda"], expected, rtol=1e-6, atol=1e-7)

    # other column names, pairwise mode, and a dataset with an indices mapping (after select/shuffle)
    renamed = singles.rename_columns({"chosen_item": "w", "rejected_item": "l"}).select([4, 2, 0])
    out, _ = add_hardness_column(
        renamed, index, item_rows, chosen_column="w", rejected_column="l", column="lam", mode="pairwise"
    )
    picked_chosen, picked_rejected = [chosen[i][:1] for i in (4, 2, 0)], [rejected[i][:1] for i in (4, 2, 0)]
    expected, _, _ = reference_lambdas(text, image, picked_chosen, picked_rejected, mode="pairwise")
    np.testing.assert_allclose(out["lam"], expected, rtol=1e-6, atol=1e-7)


def test_add_hardness_column_refuses_bad_input():
    text, image = catalogue()
    index = HardnessIndex(text, image)
    item_rows = {str(j): j for j in range(40)}
    good = Dataset.from_dict({"chosen_item": ["1", "2", "3"], "rejected_item": ["4", "5", "6"]})
    with pytest.raises(KeyError, match=r"no column\(s\) \['rejected_item'\].*\['chosen_item', 'r'\]"):
        add_hardness_column(good.rename_column("rejected_item", "r"), index, item_rows)
    unknown = r"2 item ids in column 'rejected_item' are not in item_rows: 'x' \(rows 0, 2\); '77' \(rows 1\)"
    with pytest.raises(KeyError, match=unknown):
        add_hardness_column(
            Dataset.from_dict({"chosen_item": ["1", "2", "3"], "rejected_item": ["x", "77", "x"]}), index, item_rows
        )
    lengths = r"rows 1 have 'chosen_item' and 'rejected_item' of different lengths \(row 1: 2 vs 1\)"
    with pytest.raises(ValueError, match=lengths):
        add_hardness_column(
            Dataset.from_dict({"chosen_item": [["1"], ["2", "3"]], "rejected_item": [["4"], ["5"]]}), index, item_rows
        )
    with pytest.raises(ValueError, match="row 0 of column 'chosen_item' is an empty list"):
        add_hardness_column(Dataset.from_dict({"chosen_item": [[]], "rejected_item": [[]]}), index, item_rows)
    int_ids = Dataset.from_dict({"chosen_item": [1193, 7], "rejected_item": ["2", "3"]})
    with pytest.raises(TypeError, match="row 0 of column 'chosen_item' holds 1193: item ids must be strings"):
        add_hardness_column(int_ids, index, item_rows)
    with_none = Dataset.from_dict({"chosen_item": [["1", "2"]], "rejected_item": [["2", None]]})
    with pytest.raises(TypeError, match=r"row 0 of column 'rejected_item' holds \['2', None\]"):
        add_hardness_column(with_none, index, item_rows)
    with pytest.raises(IndexError, match=r"outside the index's rows \[0, 40\): '1' -> 40"):
        add_hardness_column(good, index, {**item_rows, "1": 40})
    with pytest.raises(ValueError, match="k=40 but the catalogue has 40 items"):
        add_hardness_column(good, index, item_rows, k=40)

    scored, _ = add_hardness_column(good, index, item_rows)
    with pytest.raises(ValueError, match="already has a column 'hano_lambda'; pass overwrite=True"):
        add_hardness_column(scored, index, item_rows)
    again, _ = add_hardness_column(scored, index, item_rows, temperature=0.05, overwrite=True)
    assert again.column_names.count("hano_lambda") == 1
    assert not np.allclose(again["hano_lambda"], scored["hano_lambda"])


def test_add_hardness_column_integer_ids_rows_and_embeddings():
    text, image = catalogue()
    index = HardnessIndex(text, image)
    by_string = {str(j): j for j in range(40)}
    strings = Dataset.from_dict({"chosen_item": ["1", "2", "3"], "rejected_item": ["4", "5", "6"]})
    expected, expected_mean = add_hardness_column(strings, index, by_string)
    integers = Dataset.from_dict({"chosen_item": [1, 2, 3], "rejected_item": [4, 5, 6]})
    as_rows, mean = add_hardness_column(integers, index)  # item_rows=None: the ids are the rows
    np.testing.assert_array_equal(as_rows["hano_lambda"], expected["hano_lambda"])
    assert mean == expected_mean
    offset = Dataset.from_dict({"chosen_item": [101, 102, 103], "rejected_item": [104, 105, 106]})
    mapped, _ = add_hardness_column(offset, index, {j + 100: j for j in range(40)})
    np.testing.assert_array_equal(mapped["hano_lambda"], expected["hano_lambda"])
    from_arrays, _ = add_hardness_column(strings, (text, image), by_string)  # the index is built from embeddings
    np.testing.assert_array_equal(from_arrays["hano_lambda"], expected["hano_lambda"])
    with pytest.raises(TypeError, match="item ids must be integers"):
        add_hardness_column(strings, index)
    with pytest.raises(IndexError, match=r"has item rows column 'chosen_item' outside the index's rows \[0, 40\)"):
        add_hardness_column(Dataset.from_dict({"chosen_item": [40], "rejected_item": [1]}), index)
    with pytest.raises(TypeError, match="takes a HardnessIndex, item embeddings"):
        add_hardness_column(strings, "not an index", by_string)


# ---------------------------------------------------------------------- degenerate temperatures, the ceiling, spread


@pytest.mark.parametrize("temperature, shape", [(1e-30, "one-hot"), (1e30, "uniform")])
def test_a_temperature_that_makes_every_lambda_one_is_refused(temperature, shape):
    text, image = catalogue()
    index = HardnessIndex(text, image)
    chosen, rejected = random_pairs(40, 50)
    message = re.escape(f"temperature={temperature!r} makes") + rf".* {shape} .* lambda = 1 for every"
    with pytest.raises(ValueError, match=message):
        index.score(chosen, rejected, k=5, temperature=temperature)
    ds = Dataset.from_dict({"chosen_item": [c[0] for c in chosen], "rejected_item": [r[0] for r in rejected]})
    with pytest.raises(ValueError, match="temperature="):
        add_hardness_column(ds, index, None, k=5, temperature=temperature)
    # a small temperature that still separates the profiles is fine, and spreads lambda
    assert np.ptp(index.score(chosen, rejected, k=5, temperature=0.02).lambdas) > 0


def test_lambda_ceiling_and_a_catalogue_that_reaches_it():
    assert lambda_ceiling() == pytest.approx(1.0 / (1.0 + np.exp(-np.sqrt(2.0))) / 0.5) == pytest.approx(1.6089, 1e-4)
    assert lambda_ceiling(10) == pytest.approx(1.4417, abs=1e-4) and lambda_ceiling(1) == 1.0
    with pytest.raises(ValueError, match="positive integer"):
        lambda_ceiling(0)
    # anchor 0 has one exact duplicate (item 1) and K - 1 orthogonal items: at a small tau its profile is one-hot;
    # anchor 12 is orthogonal to everything: its profile is uniform. Their Delta reaches sqrt(1 - 1/K).
    k, dim = 5, 16
    text = np.eye(dim, dtype=np.float32)[:13]
    text[1] = text[0]
    index = HardnessIndex(text)
    scores = index.score([0, 0, 2], [12, 0, 3], k=k, temperature=1e-3)
    assert scores.deltas[0] == pytest.approx(np.sqrt(1 - 1 / k), abs=1e-6) and scores.deltas[1] == 0.0
    assert scores.lambdas.max() / scores.lambdas.min() <= lambda_ceiling(k) + 1e-6
    np.testing.assert_allclose(scores.lambdas.max() / scores.lambdas.min(), lambda_ceiling(k), rtol=1e-6)
    # random catalogues, any temperature: never above the ceiling
    rng = np.random.default_rng(0)
    for tau in (1.0, 0.1, 0.01):
        lam = HardnessIndex(rng.normal(size=(60, 4))).score(*random_pairs(60, 200), k=10, temperature=tau).lambdas
        assert lam.max() / lam.min() <= lambda_ceiling(10)


def test_lambda_spread():
    spread = lambda_spread(np.linspace(0.9, 1.1, 101))
    assert spread["min"] == pytest.approx(0.9) and spread["max"] == pytest.approx(1.1)
    assert spread["median"] == pytest.approx(1.0) and spread["p5"] == pytest.approx(0.91)
    assert spread["max_over_min"] == pytest.approx(1.1 / 0.9) and spread["count"] == 101
    with pytest.raises(ValueError, match="positive lambdas"):
        lambda_spread([1.0, float("nan")])
