"""Position-free ranking evaluation: a model that only prefers the first-listed candidate scores chance, a model with
a known preference ranks the same whatever the stored candidate order, and the position diagnostic flags the first.

The stand-in models replace the scoring call (they read the candidate texts in the order the prompt lists them), so
these tests check the evaluation's aggregation, not a network."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

from hanorec_trl.data import build_ranking_eval_dataset, build_split, load_movielens_1m, write_synthetic_movielens
from hanorec_trl.evaluation import RecEvalConfig, evaluate_recommender, position_diagnostic
from hanorec_trl.evaluation import evaluate as evaluate_module


@pytest.fixture(scope="module")
def data_and_examples(tmp_path_factory):
    data = load_movielens_1m(write_synthetic_movielens(tmp_path_factory.mktemp("syn") / "data"), images=False)
    split = build_split(data)
    return data, split.train + split.validation + split.test


def _taste(text: str) -> float:
    """A fixed preference per title, unrelated to the target or the slot."""
    return (zlib.crc32(text.encode()) % 1000) / 1000.0


def _install(monkeypatch, slot_weight: float, taste_weight: float):
    """Replace likelihood scoring by a stand-in: score = -slot_weight * slot + taste_weight * taste(title)."""

    def fake_score_candidates(model, processing_class, prompts, completions, images=None, **kwargs):
        return [[np.array([-slot_weight * slot + taste_weight * _taste(text)]) for slot, text in enumerate(cands)]
                for cands in completions]

    monkeypatch.setattr(evaluate_module, "score_candidates", fake_score_candidates)


CONFIG = RecEvalConfig(vision_cache=False, progress=False)


def test_first_listed_preference_scores_chance_and_is_flagged(monkeypatch, data_and_examples):
    data, examples = data_and_examples
    # adversarial stored order: the target is always listed first
    first = [dataclasses.replace(ex, candidates=(ex.target, *[c for c in ex.candidates if c != ex.target]),
                                 target_index=0) for ex in examples]
    _install(monkeypatch, slot_weight=10.0, taste_weight=1e-3)
    old = evaluate_recommender(None, None, build_ranking_eval_dataset(first, data, with_images=False, permutations=1),
                               config=CONFIG)
    assert old["hr@1"] == 1.0  # one stored order: the position ranker looks perfect
    new = evaluate_recommender(None, None, build_ranking_eval_dataset(first, data, with_images=False), config=CONFIG)
    assert new["num_ranking_rows"] == len(examples) and new["num_prompt_rows"] == 10 * len(examples)
    assert 0.04 < new["hr@1"] < 0.17  # chance (0.1) over ~250 examples
    assert 0.38 < new["ndcg@10"] < 0.53  # chance: 0.454
    assert new["position_top_first"] == 1.0 and new["position_spearman"] < -0.99  # the diagnostic flags it


def test_known_preference_ranks_the_same_in_any_stored_order(monkeypatch, data_and_examples):
    data, examples = data_and_examples
    examples = examples[:40]
    rng = np.random.default_rng(0)
    shuffled = []
    for ex in examples:
        order = [ex.candidates[k] for k in rng.permutation(len(ex.candidates))]
        shuffled.append(dataclasses.replace(ex, candidates=tuple(order), target_index=order.index(ex.target)))
    _install(monkeypatch, slot_weight=3.0, taste_weight=1.0)  # strong position effect plus a real preference
    results = []
    for variant in (examples, shuffled):
        rows = build_ranking_eval_dataset(variant, data, with_images=False)
        results.append(evaluate_module.evaluate_ranking(None, None, rows, CONFIG))
    (metrics_a, per_row_a), (metrics_b, per_row_b) = results
    assert per_row_a["ranks"] == per_row_b["ranks"]
    expected = [1 + sum(_taste(f'"{data.title(c)}"') >= _taste(f'"{data.title(ex.target)}"')
                        for c in ex.candidates if c != ex.target) for ex in examples]
    assert per_row_a["ranks"] == expected  # the preference alone decides
    # with a single stored order the same model's ranks depend on the order
    single = [evaluate_module.evaluate_ranking(None, None, build_ranking_eval_dataset(v, data, with_images=False,
                                                                                      permutations=1), CONFIG)
              for v in (examples, shuffled)]
    assert single[0][1]["ranks"] != single[1][1]["ranks"]


def test_generation_votes_over_orders(monkeypatch, data_and_examples):
    data, examples = data_and_examples
    examples = examples[:20]

    def fake_generate(model, processing_class, prompts, images, **kwargs):
        answers = []
        for prompt in prompts:  # the stand-in answers its favourite title among those listed
            titles = [line.strip('"') for line in prompt[0]["content"].split("candidate movies:\n")[1].splitlines()
                      if line.strip()]
            answers.append(f'"{max(titles, key=lambda t: _taste(chr(34) + t + chr(34)))}"')
        return answers

    monkeypatch.setattr(evaluate_module, "generate_answers", fake_generate)
    config = RecEvalConfig(vision_cache=False, progress=False, ranking_mode="generation")
    rows = build_ranking_eval_dataset(examples, data, with_images=False, permutations=4)
    metrics, per_row = evaluate_module.evaluate_ranking(None, None, rows, config)
    for ex, rank in zip(examples, per_row["ranks"]):
        favourite = max(ex.candidates, key=lambda c: _taste(f'"{data.title(c)}"'))
        assert (rank == 1) == (favourite == ex.target)
    assert metrics["parse_failure_rate"] == 0.0


def test_rows_of_one_sequence_must_list_the_same_candidates(monkeypatch, data_and_examples):
    data, examples = data_and_examples
    rows = list(build_ranking_eval_dataset(examples[:1], data, with_images=False, permutations=2))
    rows[1] = {**rows[1], "candidate_items": rows[1]["candidate_items"][:-1] + ["other"]}
    _install(monkeypatch, 1.0, 1.0)
    with pytest.raises(ValueError, match="share sequence_id"):
        evaluate_module.evaluate_ranking(None, None, rows, CONFIG)


def test_position_diagnostic_by_hand():
    d = position_diagnostic([[3.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    assert d["position_top_first"] == pytest.approx((1 + 0.5 + 0) / 3)
    # Spearman(score, slot): -1, -0.866 (average ranks of a tie), +0.5
    assert d["position_spearman"] == pytest.approx((-1 - np.sqrt(3) / 2 + 0.5) / 3)
    assert np.isnan(position_diagnostic([[1.0, 1.0]])["position_spearman"])
