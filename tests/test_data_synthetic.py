"""The synthetic generator: deterministic, MovieLens-format, and both modalities carry the genre signal."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

from hanorec_trl.data import SyntheticConfig, load_movielens_1m, write_synthetic_movielens
from hanorec_trl.data.synthetic import GENRES


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = write_synthetic_movielens(tmp_path_factory.mktemp("syn") / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every item has a poster: no warning
        return folder, load_movielens_1m(folder)


def test_deterministic_and_seed_dependent(tmp_path, synthetic):
    folder, _ = synthetic
    again = write_synthetic_movielens(tmp_path / "again")
    assert _digest(again) == _digest(folder)  # byte-identical, posters included
    other = write_synthetic_movielens(tmp_path / "other", SyntheticConfig(seed=1))
    assert (other / "ratings.dat").read_bytes() != (folder / "ratings.dat").read_bytes()
    assert (other / "movies.dat").read_bytes() != (folder / "movies.dat").read_bytes()


def test_loads_through_the_movielens_loader(synthetic):
    folder, data = synthetic
    cfg = SyntheticConfig()
    assert data.num_items == cfg.num_items and data.num_users == cfg.num_users
    assert all(p is not None for p in data.image_paths.values())
    assert data.image(data.item_ids[0]).size == (cfg.poster_size, cfg.poster_size)
    lengths = [len(s) for s in data.user_sequences().values()]
    assert min(lengths) >= cfg.min_interactions and max(lengths) <= cfg.max_interactions
    assert min(lengths) < 6 < max(lengths)  # some users exercise the protocol's "fewer than 6" filter
    for seq in data.user_sequences().values():
        assert len(set(seq)) == len(seq)  # no repeated item per user
    assert (folder / "users.dat").read_text().count("\n") == cfg.num_users


def test_titles_and_posters_carry_the_genre(synthetic):
    _, data = synthetic
    names = [g[0] for g in GENRES]
    words = {g[0]: set(" ".join(g[3]).split()) for g in GENRES}
    for item in data.item_ids:  # every title has a word of its primary genre
        assert set(data.title(item).replace(":", " ").split()) & words[data.genres[item][0]], data.title(item)
    # a nearest-centroid classifier on 8x8 thumbnails, fitted on half the posters, finds the genre of the others
    thumbs = np.stack([np.asarray(data.image(i).resize((8, 8)), dtype=np.float32).ravel() for i in data.item_ids])
    labels = np.array([names.index(data.genres[i][0]) for i in data.item_ids])
    half = len(labels) // 2
    centroids = np.stack(
        [
            thumbs[:half][labels[:half] == g].mean(0) if (labels[:half] == g).any() else np.full(thumbs.shape[1], 1e9)
            for g in range(len(names))
        ]
    )
    predicted = np.argmin(((thumbs[half:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == labels[half:]).mean()
    assert accuracy > 0.8, accuracy  # chance is about 1/18


def test_near_duplicates_and_sequential_signal(synthetic):
    _, data = synthetic
    titles = {data.title(i): i for i in data.item_ids}
    sequels = []
    for title, item in titles.items():
        stem = title.rsplit(" (", 1)[0]
        for base_title, base in titles.items():
            if base != item and stem.startswith(base_title.rsplit(" (", 1)[0] + " "):
                sequels.append((base, item))
    assert len(sequels) >= 0.1 * data.num_items
    diffs = [
        np.abs(np.asarray(data.image(a), dtype=np.float32) - np.asarray(data.image(b), dtype=np.float32)).mean()
        for a, b in sequels[:20]
    ]
    random_pairs = [
        np.abs(np.asarray(data.image(a), dtype=np.float32) - np.asarray(data.image(b), dtype=np.float32)).mean()
        for a, b in zip(data.item_ids[:20], data.item_ids[20:40])
    ]
    assert np.mean(diffs) < 0.5 * np.mean(random_pairs)  # a sequel's poster nearly copies its original's
    # consecutive items share a genre far more often than random pairs of items do
    rng = np.random.default_rng(0)
    consecutive = random = total = 0
    for seq in data.user_sequences().values():
        for a, b in zip(seq, seq[1:]):
            consecutive += bool(set(data.genres[a]) & set(data.genres[b]))
            x, y = rng.choice(data.item_ids, size=2, replace=False)
            random += bool(set(data.genres[x]) & set(data.genres[y]))
            total += 1
    assert consecutive / total > 2 * random / total


def test_refuses_to_overwrite(tmp_path):
    folder = write_synthetic_movielens(tmp_path / "s", SyntheticConfig(num_users=10, num_items=40, max_interactions=20))
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        write_synthetic_movielens(folder)
    write_synthetic_movielens(folder, SyntheticConfig(num_users=12, num_items=40, max_interactions=20), overwrite=True)
    assert load_movielens_1m(folder).num_users == 12
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        write_synthetic_movielens(other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="num_genres"):
        SyntheticConfig(num_genres=40)
