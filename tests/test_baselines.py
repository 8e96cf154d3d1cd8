"""Classical baselines on hand-computed cases: what they learn from, their scores, and their metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hanorec_trl.baselines import (
    DATA_MATCHED,
    FULL_DATA,
    ItemKNN,
    LastItemMarkov,
    ListPosition,
    Popularity,
    TrainingInteractions,
    baseline_label,
    evaluate_baseline,
    expected_random_metrics,
    fit_baseline,
)
from hanorec_trl.data import RecData, RecSplit, SequenceExample
from hanorec_trl.data.protocol import ProtocolConfig


def _example(user, end, history, target, candidates, label=1, auc_item=None):
    return SequenceExample(sequence_id=f"{user}:{end}", user=user, history=tuple(history), target=target,
                           candidates=tuple(candidates), target_index=candidates.index(target), auc_unwatched=(),
                           auc_item=auc_item or target, auc_label=label)


@pytest.fixture
def world():
    # user a: 1 2 3 4; user b: 1 2 3 5; user c: 2 3 9 (test target 9, then 4 afterwards)
    sequences = {"a": ["1", "2", "3", "4"], "b": ["1", "2", "3", "5"], "c": ["2", "3", "9", "4"]}
    users = [u for u, seq in sequences.items() for _ in seq]
    items = [i for seq in sequences.values() for i in seq]
    timestamps = [t for seq in sequences.values() for t in range(len(seq))]
    item_ids = [str(i) for i in range(1, 10)]
    data = RecData(name="toy", users=users, items=items, timestamps=timestamps, item_ids=item_ids,
                   titles={i: f"title {i}" for i in item_ids})
    test = _example("c", 2, ["2", "3"], "9", ["4", "9", "6"])
    train = _example("a", 3, ["2", "3"], "4", ["4", "7", "8"])
    split = RecSplit(train=[train], validation=[], test=[test], config=ProtocolConfig(min_interactions=3,
                     sequence_length=3, num_candidates=3, auc_num_unwatched=0), dataset_name="toy",
                     fingerprint=data.fingerprint())
    return data, split


def test_training_interactions_stop_before_each_evaluated_target(world):
    data, split = world
    training = TrainingInteractions.from_split(data, split)
    assert training.sequences == {"a": ["1", "2", "3", "4"], "b": ["1", "2", "3", "5"], "c": ["2", "3"]}
    assert training.num_interactions == 10
    wrong = RecSplit(train=[], validation=[], test=[_example("c", 1, ["2"], "9", ["9", "4"])], config=split.config,
                     dataset_name="toy", fingerprint="x")
    with pytest.raises(ValueError, match="is not item 1 of user 'c'"):
        TrainingInteractions.from_split(data, wrong)


def test_scores_by_hand(world):
    data, split = world
    training = TrainingInteractions.from_split(data, split)
    # popularity: 2 and 3 three times, 1 twice, 4 and 5 once (c's 4 comes after its test target), 9 never
    popularity = Popularity().fit(training)
    assert popularity.score([], ["3", "1", "4", "9"]).tolist() == [3, 2, 1, 0]
    # Markov: after 3 came 4 (user a) and 5 (user b) once each; popularity only breaks ties
    markov = LastItemMarkov().fit(training)
    s = markov.score(["2", "3"], ["4", "5", "1", "9"])
    assert math.isclose(s[0], 1 + 1e-6 / 3) and math.isclose(s[1], 1 + 1e-6 / 3)
    assert math.isclose(s[2], 2e-6 / 3) and s[3] == 0.0
    # item-kNN: users of 4 = {a}, of 5 = {b}, of 2 = of 3 = {a, b, c}: cos(2, 4) = 1/sqrt(3)
    knn = ItemKNN().fit(training)
    s = knn.score(["2", "3"], ["4", "1", "9"])
    assert math.isclose(s[0], 2 / math.sqrt(3) + 1e-6 / 3)
    assert math.isclose(s[1], 2 * 2 / math.sqrt(3 * 2) + 2e-6 / 3)  # users of 1 = {a, b}
    assert s[2] == 0.0
    assert ListPosition().fit(training).score(["2"], ["x", "y", "z"]).tolist() == [0.0, -1.0, -2.0]


def test_metrics_by_hand(world):
    data, split = world
    training = TrainingInteractions.from_split(data, split)
    # test example: candidates 4, 9 (target), 6; popularity 1, 0, 0 -> target ties with 6 -> pessimistic rank 3
    result = evaluate_baseline(fit_baseline("popularity", training), split.test, ks=(1, 2, 3))
    assert result["per_row"]["ranking"]["ranks"] == [3]
    assert result["metrics"]["hr@2"] == 0.0 and result["metrics"]["hr@3"] == 1.0
    assert math.isclose(result["metrics"]["ndcg@3"], 1 / math.log2(4))
    # position: the target sits in slot 1 -> rank 2
    assert evaluate_baseline(fit_baseline("position", training), split.test)["per_row"]["ranking"]["ranks"] == [2]
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baseline("sasrec-typo", training)


def test_auc_of_a_baseline_ranks_the_auc_items(world):
    data, split = world
    training = TrainingInteractions.from_split(data, split)
    examples = [_example("c", 2, ["2", "3"], "9", ["4", "9", "6"], label=1, auc_item="3"),
                _example("c", 2, ["2", "3"], "9", ["4", "9", "6"], label=0, auc_item="4"),
                _example("c", 2, ["2", "3"], "9", ["4", "9", "6"], label=0, auc_item="1")]
    result = evaluate_baseline(fit_baseline("popularity", training), examples)
    assert result["per_row"]["auc"]["p_yes"] == [3.0, 1.0, 2.0] and result["metrics"]["auc"] == 1.0


def test_expected_random_metrics_are_exact():
    examples = [_example("u", 5, ["1"], "3", ["1", "2", "3", "4"]), _example("v", 5, ["1"], "2", ["2", "5"])]
    result = expected_random_metrics(examples, ks=(1, 2))
    assert result["metrics"]["hr@1"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert result["metrics"]["hr@2"] == pytest.approx((2 / 4 + 2 / 2) / 2)
    gain_4 = (1 + 1 / math.log2(3)) / 4
    gain_2 = (1 + 1 / math.log2(3)) / 2
    assert result["metrics"]["ndcg@2"] == pytest.approx((gain_4 + gain_2) / 2)
    assert result["metrics"]["auc"] == 0.5
    # the same expectation by brute force over every ranking of the 4 candidates
    ranks = np.arange(1, 5)
    assert np.mean(ranks <= 2) == pytest.approx(result["per_row"]["expected_hits"]["2"][0])


def test_data_matched_training_holds_only_the_windows(world):
    data, split = world
    # two overlapping training windows of user a (1 2 3, then 2 3 4) and one of b; users' other items are not in any
    windows = [_example("a", 2, ["1", "2"], "3", ["3", "7", "8"]), _example("a", 3, ["2", "3"], "4", ["4", "7", "8"]),
               _example("b", 3, ["2", "3"], "5", ["5", "7", "8"])]
    matched = TrainingInteractions.from_examples(windows, data.item_ids)
    assert matched.sequences == {"a:2": ["1", "2", "3"], "a:3": ["2", "3", "4"], "b:3": ["2", "3", "5"]}
    assert matched.source == DATA_MATCHED and TrainingInteractions.from_split(data, split).source == FULL_DATA
    assert matched.summary() == {"source": DATA_MATCHED, "sequences": 3, "interactions": 9}
    # popularity counts mentions in the windows: 2 and 3 three times, 1 once (twice in the full data), 9 never
    popularity = fit_baseline("popularity", matched)
    assert popularity.score([], ["2", "3", "1", "4", "5", "9"]).tolist() == [3, 3, 1, 1, 1, 0]
    # Markov: transitions inside windows only (3 -> 4 once, 3 -> 5 once, 2 -> 3 three times; never 3 -> 2)
    markov = fit_baseline("markov", matched)
    assert dict(markov.transitions["2"]) == {"3": 3} and dict(markov.transitions["3"]) == {"4": 1, "5": 1}
    # item-kNN: each window is a "user": windows of 1 = {a:2}, of 3 = all three -> cos(1, 3) = 1/sqrt(3)
    knn = fit_baseline("item_knn", matched)
    assert math.isclose(knn._cosine("1", "3"), 1 / math.sqrt(3))
    assert baseline_label("item_knn", matched) == "item-kNN (data-matched)"
    result = evaluate_baseline(popularity, split.test)
    assert result["per_row"]["ranking"]["ranks"] == [3]  # 4 (once), 9 (never), 6 (never): the target ties last


def test_data_matched_refuses_bad_windows(world):
    data, _ = world
    window = _example("a", 3, ["2", "3"], "4", ["4", "7", "8"])
    with pytest.raises(ValueError, match="no examples"):
        TrainingInteractions.from_examples([], data.item_ids)
    with pytest.raises(ValueError, match="occurs twice"):
        TrainingInteractions.from_examples([window, window], data.item_ids)
    with pytest.raises(ValueError, match=r"a:3: items \['4'\] are not in the item catalogue"):
        TrainingInteractions.from_examples([window], ["2", "3"])


def test_fit_baseline_options_and_training_type(world):
    data, split = world
    training = TrainingInteractions.from_split(data, split)
    with pytest.raises(TypeError, match="takes no options"):
        fit_baseline("popularity", training, epochs=3)
    with pytest.raises(TypeError, match="must be a TrainingInteractions"):
        fit_baseline("popularity", split.train)
    sasrec = fit_baseline("sasrec", training, epochs=1, hidden=8, max_len=4, progress=False)
    assert sasrec.epochs == 1 and len(sasrec.loss_history) == 1
    assert len(evaluate_baseline(sasrec, split.test)["per_row"]["ranking"]["ranks"]) == 1


def test_evaluate_baselines_scores_full_and_data_matched_fits_on_the_same_rows(world):
    from hanorec_trl.baselines import evaluate_baselines

    data, split = world
    windows = [_example("a", 2, ["1", "2"], "3", ["3", "7", "8"])]  # the LLM's only window: 9 is never mentioned
    out = evaluate_baselines(["random", "position", "popularity"], data, split, split.test, matched_windows=windows)
    assert list(out) == ["baseline-random", "baseline-position", "baseline-popularity", "baseline-popularity-matched"]
    assert out["baseline-popularity"]["label"] == "popularity (full data)"
    assert out["baseline-popularity-matched"]["label"] == "popularity (data-matched)"
    # the same test row; the two fits differ: full data has seen 4 twice, the window never saw 4, 9 or 6
    assert out["baseline-popularity"]["per_row"]["ranking"]["ranks"] == [3]
    assert out["baseline-popularity"]["per_row"]["ranking"]["scores"][0][0] > 0  # 4: seen in the full data
    assert out["baseline-popularity-matched"]["per_row"]["ranking"]["scores"] == [[0.0, 0.0, 0.0]]
    full = fit_baseline("popularity", TrainingInteractions.from_split(data, split))
    assert out["baseline-popularity"]["metrics"] == evaluate_baseline(full, split.test)["metrics"]
    matched = fit_baseline("popularity", TrainingInteractions.from_examples(windows, data.item_ids))
    assert out["baseline-popularity-matched"]["metrics"] == evaluate_baseline(matched, split.test)["metrics"]
    assert evaluate_baselines(["popularity"], data, split, split.test)["baseline-popularity"]["label"] == "popularity"
