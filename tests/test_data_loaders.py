"""Loaders: real-file row counts, the malformed-row / unknown-item / missing-image policies, the three formats."""

from __future__ import annotations

import gzip
import json
import pickle
import time
import warnings

import numpy as np
import pytest
from conftest import shared_path, solid_image
from data_utils import small_movielens, write_movielens

from hanorec_trl.data import (
    DataFormatError,
    MissingImageWarning,
    UnknownItemError,
    load_microlens,
    load_movielens_1m,
    load_netflix_llmrec,
)
from hanorec_trl.data.recdata import PLACEHOLDER_COLOR


def _only_missing_image_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, MissingImageWarning)]


# ------------------------------------------------------------------------------------------------------ MovieLens


def test_movielens_real_subset_counts():
    folder = shared_path("data", "ml-1m")
    start = time.perf_counter()
    with pytest.warns(MissingImageWarning) as record:
        data = load_movielens_1m(folder)
    elapsed = time.perf_counter() - start
    print(f"load_movielens_1m on the real subset: {elapsed:.2f} s")
    assert elapsed < 15, "the loader should take a few seconds at most"
    assert data.num_interactions == 487_650
    assert data.num_items == 3_883
    assert data.num_users == 2_999
    assert sum(p is not None for p in data.image_paths.values()) == 3_872
    messages = _only_missing_image_warnings(record)
    assert len(messages) == 1 and "11 of 3883 items" in messages[0] and "'770'" in messages[0]
    # ISO-8859-1 titles, genres, time order
    assert data.title("73") == "Misérables, Les (1995)"
    assert data.genres["1"] == ("Animation", "Children's", "Comedy")
    assert data.item_rows[data.item_ids[10]] == 10
    # the same items, interactions and order as before issue 28's reading rules (fingerprint measured then)
    assert data.fingerprint() == "ac2b6f8defe365796082c5323a74f84a76f9a47417fd6ec7385fa62e987c9a65"
    assert all(type(t) is int for t in data.timestamps)
    stamps = {(u, i): t for u, i, t in zip(data.users, data.items, data.timestamps) if u == "1"}
    seq = data.user_sequences()["1"]
    assert [stamps[("1", i)] for i in seq] == sorted(stamps[("1", i)] for i in seq)
    # a missing poster gives the grey placeholder; a present one the real poster
    assert data.image("770").getpixel((0, 0)) == PLACEHOLDER_COLOR
    poster = data.image("1")
    assert poster.size[0] > 100 and poster.filename.endswith("1.jpg")


def test_malformed_rating_line_names_file_and_line(tmp_path):
    folder = small_movielens(tmp_path / "ml")
    lines = (folder / "ratings.dat").read_text().splitlines()
    lines[2] = "1::3::4"  # a field short
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat:3: expected 'UserID::MovieID::Rating::Timestamp'"):
        load_movielens_1m(folder)
    for bad in ("1::3::4::yesterday", "1::3::four::1003"):
        lines[2] = bad
        (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
        with pytest.raises(DataFormatError, match=r"ratings\.dat:3: .*numbers"):
            load_movielens_1m(folder)


def test_malformed_or_duplicate_movie_line(tmp_path):
    folder = write_movielens(tmp_path / "a", ["1::1::4::5"], ["1::A (1990)::Drama", "2::B (1991)"])
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: expected 'MovieID::Title \(Year\)::Genres'"):
        load_movielens_1m(folder, images=False)
    folder = write_movielens(tmp_path / "b", ["1::1::4::5"], ["1::A (1990)::Drama", "1::B (1991)::Drama"])
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: item id '1' appears twice"):
        load_movielens_1m(folder, images=False)


def test_unknown_items_error_or_documented_drop(tmp_path):
    folder = write_movielens(tmp_path / "ml", ["1::1::4::5", "1::77::4::6", "2::78::3::7"], ["1::A (1990)::Drama"])
    with pytest.raises(UnknownItemError, match=r"2 interaction\(s\).*2 item id\(s\).*'77', '78'"):
        load_movielens_1m(folder, images=False)
    with pytest.warns(UserWarning, match="'77', '78'.*dropping"):
        data = load_movielens_1m(folder, images=False, drop_unknown_items=True)
    assert data.items == ["1"] and data.users == ["1"] and data.timestamps == [5]


def test_missing_poster_one_warning_and_strict_error(tmp_path):
    folder = small_movielens(tmp_path / "ml", num_items=5, poster_ids=("1", "2", "4"))
    with pytest.warns(MissingImageWarning) as record:
        data = load_movielens_1m(folder)
    messages = _only_missing_image_warnings(record)
    assert len(messages) == 1
    assert "2 of 5 items" in messages[0] and "'3', '5'" in messages[0] and "placeholder" in messages[0]
    assert data.image_path("3") is None and data.image_path("1") is not None
    assert data.image("3").getpixel((10, 10)) == PLACEHOLDER_COLOR
    with pytest.raises(DataFormatError, match=r"2 of 5 items have no image file.*'3', '5'"):
        load_movielens_1m(folder, strict_images=True)


def test_unreadable_poster_is_reported_and_replaced(tmp_path):
    folder = small_movielens(tmp_path / "ml")
    (folder / "posters" / "2.jpg").write_bytes(b"this is not a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every poster file exists: no warning at load time
        data = load_movielens_1m(folder)
    with pytest.warns(MissingImageWarning, match=r"1 item image\(s\) could not be read \(items '2'"):
        bad = data.verify_images()
    assert bad == ["2"]
    assert data.image_path("2") is None
    assert data.image("2").getpixel((0, 0)) == PLACEHOLDER_COLOR
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.verify_images() == []  # reported once
    strict = load_movielens_1m(folder, strict_images=True)
    with pytest.raises(DataFormatError, match=r"could not be read \(items '2'"):
        strict.image("2")


def test_gzip_ratings_patterns_and_text_only(tmp_path):
    folder = small_movielens(tmp_path / "ml")
    raw = (folder / "ratings.dat").read_bytes()
    (folder / "ratings.dat").unlink()
    (folder / "ratings_subset.dat.gz").write_bytes(gzip.compress(raw))
    data = load_movielens_1m(folder)
    assert data.num_interactions == 8 and data.sources["ratings"].endswith("ratings_subset.dat.gz")
    # ties and order: user 2 rated in decreasing timestamps, so the time order reverses the file order
    assert data.user_sequences()["2"] == ["4", "3", "2", "1"]
    (folder / "ratings_other.dat.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(FileNotFoundError, match="several ratings files"):
        load_movielens_1m(folder)
    data = load_movielens_1m(folder, ratings_file="ratings_other.dat.gz", min_rating=4)
    assert set(data.users) == {"1"}
    # a user-given poster pattern with a sub-folder
    (folder / "art" / "big").mkdir(parents=True)
    for i in ("1", "2", "3", "4"):
        solid_image(int(i), size=32).save(folder / "art" / "big" / f"poster_{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_movielens_1m(
            folder, ratings_file="ratings_other.dat.gz", image_dir="art", image_pattern="big/poster_{item_id}.png"
        )
        assert data.image("3").size == (32, 32)
        text_only = load_movielens_1m(folder, ratings_file="ratings_other.dat.gz", image_dir="nowhere", images=False)
    assert not text_only.has_images and text_only.image_path("1") is None


def test_fingerprint_tracks_content(tmp_path):
    a = load_movielens_1m(small_movielens(tmp_path / "a"), images=False)
    b = load_movielens_1m(small_movielens(tmp_path / "b"), images=False)
    assert a.fingerprint() == b.fingerprint()
    lines = (tmp_path / "b" / "ratings.dat").read_text().splitlines()
    lines[0] = lines[0].replace("::1001", "::1009")
    (tmp_path / "b" / "ratings.dat").write_text("\n".join(lines) + "\n")
    assert load_movielens_1m(tmp_path / "b", images=False).fingerprint() != a.fingerprint()


# ------------------------------------------------------------------------------------------------------- MicroLens


@pytest.fixture(scope="module")
def microlens_titles():
    return shared_path("data", "microlens", "MicroLens-50k_titles.csv")


def _microlens_folder(tmp_path, titles_path, crlf: bool):
    folder = tmp_path / ("crlf" if crlf else "lf")
    folder.mkdir()
    text = titles_path.read_bytes()
    (folder / "MicroLens-50k_titles.csv").write_bytes(text.replace(b"\n", b"\r\n") if crlf else text)
    rng = np.random.default_rng(0)
    items = rng.choice(np.arange(1, 200), size=40, replace=False)
    rows = ["user,item,timestamp"]
    for u in range(1, 6):
        for k, item in enumerate(rng.choice(items, size=8, replace=False)):
            rows.append(f"{u},{item},{1_650_000_000_000 + 1000 * (8 - k) + u}")  # newest first in the file
    (folder / "MicroLens-50k_pairs.csv").write_text("\r\n".join(rows) + "\r\n" if crlf else "\n".join(rows) + "\n")
    (folder / "covers").mkdir()
    for item in items[:30]:
        solid_image(int(item)).save(folder / "covers" / f"{item}.jpg")
    return folder, items


def test_microlens_real_titles_generated_pairs(tmp_path, microlens_titles):
    results = []
    for crlf in (False, True):
        folder, items = _microlens_folder(tmp_path, microlens_titles, crlf)
        with pytest.warns(MissingImageWarning, match=r"19190 of 19220 items have no image file"):
            data = load_microlens(folder)
        results.append(data)
        assert data.num_items == 19_220 and data.num_interactions == 40 and data.num_users == 5
        assert data.title("1").startswith("Gu long song gaga bad, even three hundred years old")
        assert data.image_path(str(items[0])) is not None
        seq = data.user_sequences()["1"]
        file_order = [i for u, i in zip(data.users, data.items) if u == "1"]
        assert seq == file_order[::-1]  # sorted by timestamp
    assert results[0].titles == results[1].titles  # CRLF and LF give the same table
    assert results[0].fingerprint() == results[1].fingerprint()


def test_microlens_malformed_pair_and_tsv(tmp_path, microlens_titles):
    folder, _ = _microlens_folder(tmp_path, microlens_titles, crlf=False)
    pairs = (folder / "MicroLens-50k_pairs.csv").read_text().splitlines()
    pairs[4] = "3,17"
    (folder / "MicroLens-50k_pairs.csv").write_text("\n".join(pairs) + "\n")
    with pytest.raises(DataFormatError, match=r"MicroLens-50k_pairs\.csv:5: expected 3 fields"):
        load_microlens(folder, images=False)
    (folder / "MicroLens-50k_pairs.csv").unlink()
    (folder / "MicroLens-50k_pairs.tsv").write_text("7\t5 9 11 5\n8\t3 4\n")
    data = load_microlens(folder, images=False)
    assert data.timestamps is None and data.user_sequences() == {"7": ["5", "9", "11", "5"], "8": ["3", "4"]}
    (folder / "MicroLens-50k_pairs.tsv").write_text("7\t5 9\n8 3 4\n")
    with pytest.raises(DataFormatError, match=r"MicroLens-50k_pairs\.tsv:2: expected 'user<TAB>item item"):
        load_microlens(folder, images=False)


# ----------------------------------------------------------------------------------------------- Netflix / LLMRec


def test_llmrec_format_example():
    folder = shared_path("data", "llmrec-format-example")
    with pytest.warns(MissingImageWarning, match=r"9724 of 9724 items"):
        data = load_netflix_llmrec(folder)
    assert data.num_items == 9_724 and data.num_users == 610 and data.num_interactions == 100_836
    assert data.timestamps is None
    assert data.title("0") == "Toy Story (1995)" and data.genres["0"][:2] == ("Adventure", "Animation")
    assert data.title("10") == "American President, The (1995)"  # a quoted title with a comma
    assert data.user_sequences()["0"][:5] == ["0", "2", "5", "43", "46"]  # file (column) order
    text_only = load_netflix_llmrec(folder, images=False)
    assert text_only.fingerprint() == data.fingerprint()


def _llmrec_netflix_folder(tmp_path):
    folder = tmp_path / "netflix"
    (folder / "posters").mkdir(parents=True)
    attributes = [
        "0,2003,Dinosaur Planet",
        "1,2004,Isle of Man TT 2004 Review",
        '2,1974,"At Home Among Strangers, A Stranger Among His Own"',
        "3,NULL,Character",
        "4,1994,Paula Abdul's Get Up & Dance",
    ]
    (folder / "item_attribute.csv").write_text("\n".join(attributes) + "\n")
    (folder / "train.json").write_text(json.dumps({"0": [3, 1], "1": [4]}))
    (folder / "val.json").write_text(json.dumps({"0": [0], "1": []}))
    (folder / "test.json").write_text(json.dumps({"0": [2], "1": [2]}))
    for i in range(5):
        solid_image(i).save(folder / "posters" / f"{i}.jpg")
    return folder


def test_llmrec_netflix_layout_json_order_and_posters(tmp_path):
    folder = _llmrec_netflix_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_netflix_llmrec(folder)
    assert data.sources["item_layout"] == "id,year,title"
    assert data.title("2") == "At Home Among Strangers, A Stranger Among His Own (1974)"
    assert data.title("3") == "Character"  # NULL year: no suffix
    assert data.user_sequences() == {"0": ["3", "1", "0", "2"], "1": ["4", "2"]}  # train, then val, then test
    assert data.image("4").size == (56, 56)
    plain = load_netflix_llmrec(folder, title_with_year=False)
    assert plain.title("0") == "Dinosaur Planet"


def test_llmrec_train_mat_without_scipy_and_refuses_other_pickles(tmp_path):
    folder = _llmrec_netflix_folder(tmp_path)
    (folder / "train.json").unlink()
    example = shared_path("data", "llmrec-format-example", "train_mat").read_bytes()
    assert b"scipy.sparse._csr" in example  # the real file is a pickled scipy CSR matrix

    class Evil:
        def __reduce__(self):
            return (print, ("pickle payload ran",))

    (folder / "train_mat").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(
        DataFormatError, match=r"train_mat: cannot read the pickled interaction matrix.*builtins\.print"
    ):
        load_netflix_llmrec(folder)
    (folder / "train_mat").write_bytes(example)  # 610 x 9724: item ids beyond this 5-item table
    with pytest.raises(UnknownItemError, match=r"not in the item table: '5', '6'"):
        load_netflix_llmrec(folder, images=False)


def test_netflix_prize_titles_as_attribute_file(tmp_path):
    titles = shared_path("data", "netflix", "movie_titles.csv")
    folder = tmp_path / "nf"
    folder.mkdir()
    (folder / "item_attribute.csv").write_bytes(titles.read_bytes())
    (folder / "train.json").write_text(json.dumps({"0": [1, 72, 17770]}))
    data = load_netflix_llmrec(folder, images=False)
    assert data.num_items == 17_770
    assert data.title("72") == "At Home Among Strangers, A Stranger Among His Own (1974)"
    assert data.title("17770") == "Alien Hunter (2003)"
    (folder / "item_attribute.csv").write_text("1,2003,Dinosaur Planet\n2,19x4,Broken\n")
    with pytest.raises(DataFormatError, match=r"item_attribute\.csv:2: expected a year"):
        load_netflix_llmrec(folder, images=False, attribute_columns=("id", "year", "title"))
