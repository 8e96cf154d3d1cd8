"""CF item vectors for item tokens: fitted on training interactions only, deterministic, SASRec's table read right."""

from __future__ import annotations

import numpy as np
import pytest
from item_token_utils import small_world

from hanorec_trl.baselines import SASRec, TrainingInteractions
from hanorec_trl.item_tokens import CFEmbeddings, cf_for_split, cf_from_interactions, cf_from_sasrec


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("cf") / "data")


def _cut_by_hand(data, split) -> dict[str, list[str]]:
    """Each user's sequence up to (not including) their earliest validation/test target, computed here."""
    sequences = {u: list(s) for u, s in data.user_sequences().items()}
    for ex in (*split.validation, *split.test):
        end = int(ex.sequence_id.rsplit(":", 1)[1])
        sequences[ex.user] = sequences[ex.user][:end]
    return sequences


def test_split_cf_never_sees_a_held_out_target(world):
    data, split, cf, _ = world
    by_hand = cf_from_interactions(TrainingInteractions(_cut_by_hand(data, split), list(data.item_ids)), dim=8)
    np.testing.assert_array_equal(cf.table, by_hand.table)
    assert cf.rows == by_hand.rows
    # the same fit on every interaction (test targets included) differs: the test above has power
    leaked = cf_from_interactions(TrainingInteractions(data.user_sequences(), list(data.item_ids)), dim=8)
    assert not np.allclose(leaked.table[[leaked.rows[i] for i in cf.rows]], cf.table, atol=1e-4)


def test_svd_is_deterministic_and_sees_co_occurrence(world):
    data, split, cf, _ = world
    again = cf_for_split(data, split, dim=8)
    np.testing.assert_array_equal(cf.table, again.table)
    training = TrainingInteractions.from_split(data, split)
    # E @ E.T approximates the item-item cosine: items that share users are closer than items that never do
    items = sorted(cf.rows)
    users = {i: {u for u, s in training.sequences.items() if i in s} for i in items}
    gram = cf.table @ cf.table.T
    shared = [gram[cf.rows[a], cf.rows[b]] for a in items for b in items if a < b and users[a] & users[b]]
    disjoint = [gram[cf.rows[a], cf.rows[b]] for a in items for b in items if a < b and not users[a] & users[b]]
    assert np.mean(shared) > np.mean(disjoint) + 0.05


def test_sasrec_table_is_the_one_its_scores_use(world):
    data, split, _, _ = world
    training = TrainingInteractions.from_split(data, split)
    model = SASRec(hidden=8, epochs=1, progress=False).fit(training)
    cf = cf_from_sasrec(model)
    assert cf.dim == 8 and set(cf.rows) >= set(training.sequences[next(iter(training.sequences))])
    history = list(split.test[0].history)
    candidates = sorted(cf.rows)[:20]
    # score(history) - score(no history) = E[c] @ h: linear in the table rows (exactly, up to float32)
    gap = model.score(history, candidates) - model.score([], candidates)
    rows = cf.table[[cf.rows[c] for c in candidates]].astype(np.float64)
    h, *_ = np.linalg.lstsq(rows, gap, rcond=None)
    assert np.abs(rows @ h - gap).max() < 1e-4 * max(1.0, np.abs(gap).max())
    with pytest.raises(ValueError, match="not fitted"):
        cf_from_sasrec(SASRec())


def test_cf_embeddings_checks_and_round_trip(world, tmp_path):
    _, _, cf, _ = world
    vectors, known = cf.lookup([next(iter(cf.rows)), "no-such-item"])
    assert known.tolist() == [True, False] and not vectors[1].any()
    cf.save(tmp_path / "cf.npz")
    back = CFEmbeddings.load(tmp_path / "cf.npz")
    assert back.rows == cf.rows and back.source == cf.source
    np.testing.assert_array_equal(back.table, cf.table)
    with pytest.raises(ValueError, match="rows outside"):
        CFEmbeddings(np.zeros((2, 3)), {"a": 5}, "x")
    with pytest.raises(ValueError, match="NaN"):
        CFEmbeddings(np.full((2, 3), np.nan), {"a": 0}, "x")
