"""The compact SASRec baseline (hanorec_trl.sasrec): learns a deterministic next-item rule, is seeded, refuses bad
input, and plugs into the baseline registry and evaluate_baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hanorec_trl.baselines import BASELINES, LABELS, TrainingInteractions, evaluate_baseline
from hanorec_trl.data.protocol import SequenceExample
from hanorec_trl.sasrec import UNKNOWN_ITEM_SCORE, SASRec

NUM_ITEMS = 30
SMALL = dict(hidden=32, num_blocks=2, max_len=12, dropout=0.0, num_negatives=None, epochs=12, batch_size=16,
             lr=5e-3, progress=False)


def _item(k: int) -> str:
    return f"i{k % NUM_ITEMS}"


def _world(seed: int = 0) -> TrainingInteractions:
    """Item i is always followed by item i+1 (mod 30); 60 users start anywhere and watch 12-20 items."""
    rng = np.random.default_rng(seed)
    sequences = {}
    for u in range(60):
        start, length = int(rng.integers(NUM_ITEMS)), int(rng.integers(12, 21))
        sequences[f"u{u}"] = [_item(start + t) for t in range(length)]
    return TrainingInteractions(sequences=sequences, item_ids=[_item(k) for k in range(NUM_ITEMS)])


def _examples(count: int = 40, seed: int = 1) -> list[SequenceExample]:
    """5-item histories of the rule; the true next item among 9 other items, at a random slot."""
    rng = np.random.default_rng(seed)
    examples = []
    for n in range(count):
        start = int(rng.integers(NUM_ITEMS))
        history = tuple(_item(start + t) for t in range(5))
        target = _item(start + 5)
        others = [_item(k) for k in rng.permutation(NUM_ITEMS).tolist() if _item(k) != target][:9]
        slot = int(rng.integers(10))
        candidates = tuple(others[:slot] + [target] + others[slot:])
        examples.append(SequenceExample(sequence_id=f"t{n}:5", user=f"t{n}", history=history, target=target,
                                        candidates=candidates, target_index=slot, auc_unwatched=(),
                                        auc_item=target if n % 2 else others[0], auc_label=n % 2))
    return examples


@pytest.fixture(scope="module")
def fitted() -> SASRec:
    return SASRec(**SMALL).fit(_world())


def test_learns_the_next_item_rule(fitted):
    result = evaluate_baseline(fitted, _examples())
    assert result["metrics"]["hr@1"] >= 0.9, result["metrics"]
    assert result["metrics"]["auc"] >= 0.9
    assert fitted.loss_history[-1] < fitted.loss_history[0]


def test_same_seed_same_scores_and_global_rng_untouched(fitted):
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    again = SASRec(**SMALL).fit(_world())
    assert torch.equal(state, torch.random.get_rng_state()) and torch.get_num_threads() == threads
    for ex in _examples(10):
        np.testing.assert_array_equal(fitted.score(ex.history, ex.candidates), again.score(ex.history, ex.candidates))
    other = SASRec(**{**SMALL, "seed": 1, "epochs": 1}).fit(_world())
    ex = _examples(1)[0]
    assert not np.array_equal(fitted.score(ex.history, ex.candidates), other.score(ex.history, ex.candidates))


def test_sampled_softmax_default_loss_also_learns():
    model = SASRec(**{**SMALL, "num_negatives": 8}).fit(_world())
    assert evaluate_baseline(model, _examples())["metrics"]["hr@1"] >= 0.8


def test_unknown_items_and_empty_history(fitted):
    scores = fitted.score(["i1", "i2"], ["i3", "never-seen", "i7"])
    assert scores[1] == UNKNOWN_ITEM_SCORE and scores[0] > scores[2] > scores[1]
    # an empty or wholly unknown history scores by the learned item bias alone
    np.testing.assert_array_equal(fitted.score([], ["i3", "i7"]), fitted.score(["nope"], ["i3", "i7"]))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no user has two or more training interactions"):
        SASRec(progress=False).fit(TrainingInteractions(sequences={}, item_ids=["a", "b"]))
    with pytest.raises(ValueError, match="no user has two or more"):
        SASRec(progress=False).fit(TrainingInteractions(sequences={"u": ["a"]}, item_ids=["a", "b"]))
    with pytest.raises(RuntimeError, match="fit"):
        SASRec().score(["a"], ["b"])
    with pytest.raises(ValueError, match="multiple of num_heads"):
        SASRec(hidden=30, num_heads=4)
    with pytest.raises(ValueError, match="num_negatives"):
        SASRec(num_negatives=0)


def test_registered_as_a_baseline():
    from hanorec_trl.baselines import DEFAULT_BASELINES, fit_baseline

    assert BASELINES["sasrec"] is SASRec and LABELS["sasrec"] == "SASRec"
    assert "sasrec" not in DEFAULT_BASELINES  # minutes to fit on the full data
    assert isinstance(fit_baseline("sasrec", _world(), **{**SMALL, "epochs": 1}), SASRec)


def test_data_matched_fit_learns_only_the_windows():
    """The users' full sequences follow i -> i+1; the LLM's training windows (data-matched) follow i -> i+2. A fit on
    the windows must rank i+2 first; a fit that silently used every interaction would rank i+1 first."""
    full = _world()
    windows = [SequenceExample(sequence_id=f"w{n}:5", user=f"w{n}", history=tuple(_item(s + 2 * t) for t in range(5)),
                               target=_item(s + 10), candidates=(_item(s + 10), _item(s + 1)), target_index=0,
                               auc_unwatched=(), auc_item=_item(s + 10), auc_label=1)
               for n, s in enumerate(list(range(NUM_ITEMS)) * 4)]
    matched = TrainingInteractions.from_examples(windows, full.item_ids)
    assert matched.num_interactions == 6 * len(windows)
    by_windows = SASRec(**{**SMALL, "epochs": 20}).fit(matched)
    by_users = SASRec(**SMALL).fit(full)
    history = tuple(_item(3 + 2 * t) for t in range(5))  # 3 5 7 9 11: next by the windows' rule 13, by the users' 12
    assert int(np.argmax(by_windows.score(history, [_item(13), _item(12)]))) == 0
    history = tuple(_item(3 + t) for t in range(5))  # 3 4 5 6 7: the users' rule says 8
    assert int(np.argmax(by_users.score(history, [_item(8), _item(9)]))) == 0


def test_item_embeddings_are_the_learned_table(fitted):
    rows = fitted.item_embeddings(["i3", "i0"])
    assert rows.shape == (2, SMALL["hidden"]) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0], fitted.net.items.weight[fitted.index["i3"]].detach().numpy())
    with pytest.raises(KeyError, match="not in the training catalogue"):
        fitted.item_embeddings(["nope"])
