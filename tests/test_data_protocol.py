"""The protocol: filtering, the most recent window, 8:1:1, candidates never seen, balanced AUC, frozen JSONL."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter

import numpy as np
import pytest
from conftest import shared_path

from hanorec_trl.data import (
    ProtocolConfig,
    SplitMismatchError,
    SyntheticConfig,
    build_split,
    export_recbole,
    freeze_split,
    load_movielens_1m,
    load_split,
    write_synthetic_movielens,
)
from hanorec_trl.data.protocol import leave_last_out_windows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_movielens_1m(write_synthetic_movielens(tmp_path_factory.mktemp("syn") / "data"))


@pytest.fixture(scope="module")
def split(data):
    return build_split(data)


def _all(split):
    return split.train + split.validation + split.test


def _check_examples(split, data, cfg):
    sequences = data.user_sequences()
    for ex in _all(split):
        seq = sequences[ex.user]
        assert len(seq) >= cfg.min_interactions
        seen = data.interacted(ex.user)
        assert len(ex.candidates) == cfg.num_candidates == len(set(ex.candidates))
        assert ex.candidates[ex.target_index] == ex.target and ex.candidates.count(ex.target) == 1
        negatives = [c for c in ex.candidates if c != ex.target]
        assert not set(negatives) & seen, "a candidate negative was interacted with by the user"
        assert not set(negatives) & set(ex.history)
        assert len(ex.auc_unwatched) == cfg.auc_num_unwatched and not set(ex.auc_unwatched) & seen
        if ex.auc_label == 1:
            assert ex.auc_item == ex.target
        else:
            assert ex.auc_item not in seen
        assert all(item in data.titles for item in (*ex.history, *ex.candidates, *ex.auc_unwatched, ex.auc_item))


def test_most_recent_window_filter_and_8_1_1(data, split):
    cfg = split.config
    sequences = data.user_sequences()
    eligible = [u for u, s in sequences.items() if len(s) >= 6]
    assert split.stats["num_users_dropped"] == len(sequences) - len(eligible) > 0
    users = [ex.user for ex in _all(split)]
    assert sorted(users) == sorted(eligible)  # one sequence per kept user, none for dropped users
    for ex in _all(split):
        assert list(ex.history) + [ex.target] == sequences[ex.user][-6:]
    n = len(eligible)
    assert split.counts() == {"train": n - 2 * (n // 10), "validation": n // 10, "test": n // 10}
    _check_examples(split, data, cfg)


def test_candidates_shuffled_and_auc_balanced(split):
    positions = Counter(ex.target_index for ex in split.train)
    assert len(positions) == 10 and max(positions.values()) < 0.25 * len(split.train)
    for _, examples in split.parts():
        ones = sum(ex.auc_label for ex in examples)
        assert ones - (len(examples) - ones) in (0, 1)


def test_real_movielens_split():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = load_movielens_1m(shared_path("data", "ml-1m"))
    split = build_split(real)
    assert split.counts() == {"train": 2401, "validation": 299, "test": 299}
    _check_examples(split, real, split.config)


def test_same_seed_byte_identical_jsonl(tmp_path, data, split):
    a = freeze_split(split, tmp_path / "a")
    b = freeze_split(build_split(data, ProtocolConfig(seed=0)), tmp_path / "b")
    c = freeze_split(build_split(data, ProtocolConfig(seed=1)), tmp_path / "c")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["dataset"]["fingerprint"] == data.fingerprint()
    assert manifest["seed"] == 0 and manifest["counts"] == split.counts()
    assert manifest["protocol"]["num_candidates"] == 10
    first = json.loads((a / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {
        "sequence_id",
        "user",
        "history",
        "target",
        "candidates",
        "target_index",
        "auc_unwatched",
        "auc_item",
        "auc_label",
    }


def _reference_assignment(data, seed):
    """The 8:1:1 split of the protocol, computed here from its definition: one sequence per kept user (in the data's
    user order), ranked by a permutation drawn from the first of three generators spawned from ``seed``; the first
    n - 2 * (n // 10) ranks are train, the next n // 10 validation, the rest test."""
    ids = [f"{user}:{len(seq) - 1}" for user, seq in data.user_sequences().items() if len(seq) >= 6]
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    ranked = [ids[k] for k in rng.permutation(len(ids))]
    n_train = len(ids) - 2 * (len(ids) // 10)
    return {"train": set(ranked[:n_train]), "validation": set(ranked[n_train:n_train + len(ids) // 10]),
            "test": set(ranked[n_train + len(ids) // 10:])}


def test_split_assignment_follows_the_seeded_permutation(data):
    """The seed decides which sequences go to validation and test (not only their candidates)."""
    assignments = {}
    for seed in (0, 1):
        split = build_split(data, ProtocolConfig(seed=seed))
        got = {name: {ex.sequence_id for ex in examples} for name, examples in split.parts()}
        expected = _reference_assignment(data, seed)
        assert {k: len(v) for k, v in got.items()} == {k: len(v) for k, v in expected.items()} == split.counts()
        for name in got:
            assert got[name] == expected[name], f"seed {seed}: the {name} sequences differ from the reference"
        assignments[seed] = got
    n = sum(len(v) for v in assignments[0].values())
    assert {k: len(v) for k, v in assignments[0].items()} == {k: len(v) for k, v in assignments[1].items()}
    assert len(assignments[0]["test"]) == n // 10 > 0
    assert assignments[0]["test"] != assignments[1]["test"]
    assert assignments[0]["validation"] != assignments[1]["validation"]
    by_user = [build_split(data, ProtocolConfig(sliding_windows=True, split_by="user", seed=seed)) for seed in (0, 1)]
    test_users = [{ex.user for ex in split.test} for split in by_user]
    assert len(test_users[0]) == len(test_users[1]) > 0 and test_users[0] != test_users[1]


def test_load_split_round_trip_and_fingerprint_check(tmp_path, data, split):
    folder = freeze_split(split, tmp_path / "split")
    loaded = load_split(folder, data)
    assert loaded.train == split.train and loaded.test == split.test and loaded.config == split.config
    other = load_movielens_1m(write_synthetic_movielens(tmp_path / "other", SyntheticConfig(seed=5)))
    with pytest.raises(SplitMismatchError, match="fingerprint"):
        load_split(folder, other)
    lines = (folder / "test.jsonl").read_text().splitlines()
    (folder / "test.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(SplitMismatchError, match=r"test\.jsonl was modified"):
        load_split(folder, data)


def test_freeze_refuses_to_overwrite(tmp_path, split):
    folder = freeze_split(split, tmp_path / "split")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        freeze_split(split, folder)
    freeze_split(split, folder, overwrite=True)
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "table.csv").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        freeze_split(split, foreign, overwrite=True)
    assert (foreign / "table.csv").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "split"]  # no temporary folder left behind


def test_sliding_windows_and_split_by_user(data):
    cfg = ProtocolConfig(sliding_windows=True, split_by="user", seed=3, evaluation_windows="all")
    split = build_split(data, cfg)
    sequences = data.user_sequences()
    expected = sum(len(s) - 5 for s in sequences.values() if len(s) >= 6)
    assert sum(split.counts().values()) == expected == split.stats["num_windows"]
    # default: one evaluation row per validation/test user, their most recent window; training keeps every window
    last = build_split(data, ProtocolConfig(sliding_windows=True, split_by="user", seed=3))
    assert [ex.sequence_id for ex in last.train] == [ex.sequence_id for ex in split.train]
    for name in ("validation", "test"):
        everything, latest = getattr(split, name), getattr(last, name)
        users = {ex.user for ex in everything}
        assert sorted(ex.user for ex in latest) == sorted(users)
        for ex in latest:
            assert int(ex.sequence_id.split(":")[1]) == len(sequences[ex.user]) - 1
    owners = {}
    for part, examples in split.parts():
        for ex in examples:
            assert owners.setdefault(ex.user, part) == part  # all windows of a user in one part
            end = int(ex.sequence_id.split(":")[1])
            assert list(ex.history) + [ex.target] == sequences[ex.user][end - 5 : end + 1]
    _check_examples(split, data, cfg)
    capped = build_split(data, ProtocolConfig(sliding_windows=True, max_windows_per_user=2))
    assert max(Counter(ex.user for ex in _all(capped)).values()) == 2


def test_export_recbole(tmp_path, data, split):
    folder = export_recbole(split, data, tmp_path / "recbole", dataset_name="synthetic")
    rows = (folder / "synthetic.test.inter").read_text().splitlines()
    assert rows[0] == "user_id:token\titem_id_list:token_seq\titem_id:token"
    assert len(rows) == 1 + len(split.test)
    user, history, target = rows[1].split("\t")
    ex = split.test[0]
    assert (user, history.split(" "), target) == (ex.user, list(ex.history), ex.target)
    items = (folder / "synthetic.item").read_text().splitlines()
    assert len(items) == 1 + data.num_items and items[1] == f"{data.item_ids[0]}\t{data.title(data.item_ids[0])}"
    assert "benchmark_filename: [train, valid, test]" in (folder / "synthetic.yaml").read_text()
    with pytest.raises(FileExistsError):
        export_recbole(split, data, folder)


def test_bad_settings_are_refused(data):
    with pytest.raises(ValueError, match="split_ratios"):
        ProtocolConfig(split_ratios=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="min_interactions"):
        ProtocolConfig(min_interactions=3)
    with pytest.raises(ValueError, match="items they never interacted with"):
        build_split(data, ProtocolConfig(num_candidates=data.num_items))


# ------------------------------------------------------------------------------------------------------------------
# Leave-last-out: every user tested on their most recent window
# ------------------------------------------------------------------------------------------------------------------


def _covered(example):
    """The (user, position) interactions a window shows: its history and its target."""
    end = int(example.sequence_id.rsplit(":", 1)[1])
    return {(example.user, pos) for pos in range(end - len(example.history), end + 1)}


def _leaks(split):
    """The definition of "no test target in any training window" the protocol guarantees, checked literally:
    no training or validation window shows (as its target or in its history) the interaction that is a test target,
    and no training window shows a validation target. Returns the offending (window, target) pairs."""
    test_targets = {(ex.user, int(ex.sequence_id.rsplit(":", 1)[1])): ex.sequence_id for ex in split.test}
    validation_targets = {(ex.user, int(ex.sequence_id.rsplit(":", 1)[1])): ex.sequence_id for ex in split.validation}
    leaks = []
    for part, targets in ((split.train, {**test_targets, **validation_targets}), (split.validation, test_targets)):
        for ex in part:
            leaks += [(ex.sequence_id, targets[p]) for p in _covered(ex) if p in targets]
    return leaks


LLO = dict(split_by="leave_last_out", sliding_windows=True)


def test_leave_last_out_tests_every_user_on_the_most_recent_window(data):
    cfg = ProtocolConfig(**LLO)
    split = build_split(data, cfg)
    sequences = data.user_sequences()
    kept = [u for u, s in sequences.items() if len(s) >= cfg.min_interactions]
    assert sorted(ex.user for ex in split.test) == sorted(kept)  # every kept user once
    for ex in split.test:
        assert list(ex.history) + [ex.target] == sequences[ex.user][-6:]
    for ex in split.validation:
        assert list(ex.history) + [ex.target] == sequences[ex.user][-7:-1]
    assert sorted(ex.user for ex in split.validation) == sorted(u for u in kept if len(sequences[u]) >= 7)
    # training: every earlier window (stride 1), the most recent ending two items before the user's last
    expected_train = {f"{u}:{end}" for u in kept for end in range(5, len(sequences[u]) - 2)}
    assert {ex.sequence_id for ex in split.train} == expected_train
    assert _leaks(split) == []
    # the data have no repeated (user, item): a test target is not even an item of the user's training windows
    items_of = {}
    for ex in split.train + split.validation:
        items_of.setdefault(ex.user, set()).update((*ex.history, ex.target))
    assert all(ex.target not in items_of.get(ex.user, set()) for ex in split.test)
    _check_examples(split, data, cfg)
    # the baselines' full data stops before each user's validation target (before the test target without one)
    from hanorec_trl.data.interactions import TrainingInteractions

    learned = TrainingInteractions.from_split(data, split).sequences
    assert all(learned[u] == s[: len(s) - (2 if len(s) >= 7 else 1)] for u, s in sequences.items() if u in kept)


def test_the_leak_check_catches_a_window_reaching_a_test_target(data):
    """The check above is not vacuous: the 8:1:1 split of sliding windows by sequence (the paper's, which the docs
    warn about) puts test targets into training histories, and a training window ending at the validation target
    (the off-by-one a leave-last-out bug would make) is caught too."""
    paper_windows = build_split(data, ProtocolConfig(sliding_windows=True, evaluation_windows="all"))
    assert _leaks(paper_windows)
    split = build_split(data, ProtocolConfig(**LLO))
    validation = split.validation[0]
    end = int(validation.sequence_id.rsplit(":", 1)[1])
    shifted = dataclasses.replace(validation, sequence_id=f"{validation.user}:{end}")
    split.train.append(shifted)
    assert _leaks(split) == [(shifted.sequence_id, validation.sequence_id)]


def test_leave_last_out_window_counts_and_limits(data):
    sequences = data.user_sequences()
    kept = [s for s in sequences.values() if len(s) >= 6]
    one = build_split(data, ProtocolConfig(split_by="leave_last_out"))  # no sliding windows: one training window
    assert one.counts() == {"train": sum(len(s) >= 8 for s in kept), "validation": sum(len(s) >= 7 for s in kept),
                            "test": len(kept)}
    assert all(int(ex.sequence_id.split(":")[1]) == len(sequences[ex.user]) - 3 for ex in one.train)
    capped = build_split(data, ProtocolConfig(**LLO, max_windows_per_user=2))  # the cap counts training windows
    per_user = Counter(ex.user for ex in capped.train)
    assert max(per_user.values()) == 2 and len(capped.test) == len(kept)
    assert all(int(ex.sequence_id.split(":")[1]) >= len(sequences[ex.user]) - 4 for ex in capped.train)
    strided = build_split(data, ProtocolConfig(**LLO, window_stride=3))
    assert all((len(sequences[ex.user]) - 3 - int(ex.sequence_id.split(":")[1])) % 3 == 0 for ex in strided.train)
    assert _leaks(capped) == _leaks(strided) == _leaks(one) == []
    assert leave_last_out_windows(8, ProtocolConfig(**LLO)) == [(5, 0), (6, 1), (7, 2)]
    assert leave_last_out_windows(6, ProtocolConfig(**LLO)) == [(5, 2)]


def test_leave_last_out_freezes_and_refuses_settings_that_do_not_apply(tmp_path, data):
    split = build_split(data, ProtocolConfig(**LLO, max_windows_per_user=3))
    loaded = load_split(freeze_split(split, tmp_path / "llo"), data)
    assert loaded.config == split.config and loaded.test == split.test and loaded.train == split.train
    with pytest.raises(ValueError, match="split_ratios.*does not apply to split_by='leave_last_out'"):
        ProtocolConfig(split_by="leave_last_out", split_ratios=(0.6, 0.2, 0.2))
    with pytest.raises(ValueError, match="evaluation_windows='all' does not apply"):
        ProtocolConfig(**LLO, evaluation_windows="all")
    with pytest.raises(ValueError, match="split_by must be one of"):
        ProtocolConfig(split_by="last")


def test_real_movielens_leave_last_out():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = load_movielens_1m(shared_path("data", "ml-1m"), images=False)
    split = build_split(real, ProtocolConfig(**LLO, max_windows_per_user=4))
    assert split.counts() == {"train": 4 * 2999, "validation": 2999, "test": 2999}
    assert _leaks(split) == []
