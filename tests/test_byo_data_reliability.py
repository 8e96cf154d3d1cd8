"""Issue 28, bring-your-own data: ``load_interactions`` never reinterprets a table in silence.

Each test is a case a careless user or a hostile file produced (docs/reliability.md, "Bring-your-own data"): the
load is refused with a message naming the file / row / field, or the data keeps exactly what the file says.
"""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal

import pandas as pd
import pytest
from data_utils import write_movielens

from hanorec_trl.data import DataFormatError, load_interactions, load_microlens, load_netflix_llmrec
from hanorec_trl.data.movielens import read_movielens_movies

ITEMS = "item_id,title\nA,Alpha\nB,Beta\nC,Gamma\n"


def table(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def load(tmp_path, interactions: str, items: str = ITEMS, **kwargs):
    """``load_interactions`` on two CSV files written from text (``time_col='when'`` when the table has it)."""
    inter = table(tmp_path / "orders.csv", interactions)
    catalogue = table(tmp_path / "items.csv", items)
    if "when" in interactions.splitlines()[0].split(","):
        kwargs.setdefault("time_col", "when")
    return load_interactions(inter, catalogue, images=False, **kwargs)


# ------------------------------------------------------------------------------------- the item table and columns


def test_a_repeated_header_row_inside_a_table_is_refused_naming_its_line(tmp_path):
    items = "item_id,title\nA,Alpha\nB,Beta\nitem_id,title\nC,Gamma\n"  # two exports joined
    with pytest.raises(DataFormatError, match=r"items\.csv:4: the header row appears again"):
        load(tmp_path, "user_id,item_id\nu,A\n", items)
    frame = pd.DataFrame({"item_id": ["A", "item_id"], "title": ["Alpha", "title"]})
    with pytest.raises(DataFormatError, match="items DataFrame row 1: the header row appears again"):
        load_interactions(pd.DataFrame({"user_id": ["u"], "item_id": ["A"]}), frame, images=False)
    with pytest.raises(DataFormatError, match=r"orders\.csv:3: the header row appears again"):
        load(tmp_path, "user_id,item_id\nu,A\nuser_id,item_id\nu,B\n")


def test_a_column_named_twice_is_refused_in_every_table_form(tmp_path):
    with pytest.raises(DataFormatError, match=r"items\.csv:1: column\(s\) 'title' appear more than once"):
        load(tmp_path, "user_id,item_id\nu,A\n", "item_id,title,title\nA,Alpha,Other\n")
    frame = pd.DataFrame([["A", "Alpha", "Other"]], columns=["item_id", "title", "title"])
    with pytest.raises(DataFormatError, match=r"items DataFrame: column\(s\) 'title' appear more than once"):
        load_interactions(pd.DataFrame({"user_id": ["u"], "item_id": ["A"]}), frame, images=False)
    (tmp_path / "items.jsonl").write_text('{"item_id": "A", "title": "Alpha"}\n{"item_id": "B", "title": "x", '
                                          '"title": "y"}\n')
    with pytest.raises(DataFormatError, match=r"items\.jsonl:2: key\(s\) 'title' appear more than once"):
        load_interactions(table(tmp_path / "o.csv", "user_id,item_id\nu,A\n"), tmp_path / "items.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([["A"], ["Alpha"], ["Other"]], names=["item_id", "title", "title"]),
                   tmp_path / "items.parquet")
    with pytest.raises(DataFormatError, match=r"items\.parquet: column\(s\) 'title' appear more than once"):
        load_interactions(table(tmp_path / "o.csv", "user_id,item_id\nu,A\n"), tmp_path / "items.parquet")


def test_a_duplicate_item_id_is_refused_naming_both_lines(tmp_path):
    with pytest.raises(DataFormatError, match=r"items\.csv:4: item id 'A' appears twice in the item table \(first "
                                              r"at .*items\.csv:2\)"):
        load(tmp_path, "user_id,item_id\nu,A\n", "item_id,title\nA,Alpha\nB,Beta\nA,Later title\n")


def test_the_item_tables_own_id_column_is_used(tmp_path):
    """``items_item_col`` names the item table's id column when it differs from the interaction table's."""
    data = load(tmp_path, "customer,sku\nu,B\nu,A\n", "product_sku,title,sku\nA,Alpha,x1\nB,Beta,x2\n",
                user_col="customer", item_col="sku", items_item_col="product_sku")
    assert data.item_ids == ["A", "B"] and data.title("B") == "Beta" and data.items == ["B", "A"]


@pytest.mark.parametrize("bad, shown", [('["A", "B"]', "list"), ("true", "boolean"), ('{"id": "A"}', "dict")])
def test_json_lines_ids_that_are_lists_booleans_or_objects_are_refused_naming_the_line(tmp_path, bad, shown):
    (tmp_path / "items.jsonl").write_text('{"item_id": "A", "title": "Alpha"}\n'
                                          f'{{"item_id": {bad}, "title": "Beta"}}\n')
    with pytest.raises(DataFormatError, match=rf"items\.jsonl:2: column 'item_id' is a {shown}"):
        load_interactions(table(tmp_path / "o.csv", "user_id,item_id\nu,A\n"), tmp_path / "items.jsonl")
    (tmp_path / "orders.jsonl").write_text('{"user_id": "u", "item_id": "A"}\n'
                                           f'{{"user_id": {bad}, "item_id": "A"}}\n')
    with pytest.raises(DataFormatError, match=rf"orders\.jsonl:2: column 'user_id' is a {shown}"):
        load_interactions(tmp_path / "orders.jsonl", table(tmp_path / "i.csv", ITEMS))


def test_a_bad_first_json_lines_row_names_the_file_and_the_line(tmp_path):
    (tmp_path / "items.jsonl").write_text('\n{"item_id": "A", "title": \n{"item_id": "B", "title": "Beta"}\n')
    with pytest.raises(DataFormatError, match=r"items\.jsonl:2: not a JSON object"):
        load_interactions(table(tmp_path / "o.csv", "user_id,item_id\nu,A\n"), tmp_path / "items.jsonl")


# ------------------------------------------------------------------------------------------------------- encoding


def test_one_stray_cp1252_byte_is_refused_naming_the_line_not_decoded_as_cp1252(tmp_path):
    items = "item_id,title\nA,Café Society\nB,Beta\n".encode() + b"C,Na\xefve\n"  # UTF-8 file, one cp1252 byte
    (tmp_path / "items.csv").write_bytes(items)
    inter = table(tmp_path / "orders.csv", "user_id,item_id\nu,A\n")
    with pytest.raises(DataFormatError, match=r"items\.csv:4: 1 line\(s\) are not valid utf-8 text \(lines 4; "
                                              r"first: byte 0xef at byte 5 of line 4"):
        load_interactions(inter, tmp_path / "items.csv", images=False)
    latin = table(tmp_path / "latin.csv", "item_id,title\nA,Café\n", encoding="cp1252")
    assert load_interactions(inter, latin, images=False, encoding="cp1252").title("A") == "Café"
    utf8 = table(tmp_path / "utf8.csv", "\ufeffitem_id,title\nA,Café Society\n")  # with a byte-order mark
    assert load_interactions(inter, utf8, images=False).title("A") == "Café Society"
    with pytest.raises(ValueError, match="encoding=None: name the file's text encoding"):
        load_interactions(inter, utf8, images=False, encoding=None)


def test_movielens_detection_refuses_a_utf8_file_with_a_stray_byte(tmp_path):
    """MovieLens keeps recognising its original ISO-8859-1 release, but a UTF-8 copy with one stray byte is refused
    rather than decoded as Windows-1252 (every UTF-8 title would become mojibake, 'CafÃ©')."""
    path = tmp_path / "movies.dat"
    path.write_bytes("1::Café (2001)::Comedy\n".encode() + b"2::L\xe9on (1994)::Drama\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: 1 line\(s\) are not valid utf-8 text .*mixed "
                                              "encodings are not guessed"):
        read_movielens_movies(path)
    assert read_movielens_movies(path, encoding="cp1252")[1]["1"] == "CafÃ© (2001)"  # the user's explicit choice


# ---------------------------------------------------------------------------------------------------------- times


def test_fractional_timestamps_are_kept_exactly(tmp_path):
    data = load(tmp_path, "user_id,item_id,when\nu,A,1.9\nu,B,1.1\nu,C,1.50\n")
    assert data.timestamps == [Decimal("1.9"), Decimal("1.1"), Decimal("1.5")]
    assert data.user_sequences()["u"] == ["B", "C", "A"]  # time order, not file order
    frame = pd.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["A", "B", "C"], "when": [1.9, 1.1, 1.5]})
    assert load_interactions(frame, table(tmp_path / "i.csv", ITEMS), time_col="when",
                             images=False).fingerprint() == data.fingerprint()  # float 1.9 is the text 1.9
    iso = load(tmp_path, "user_id,item_id,when\nu,A,2024-05-01T12:00:00.1234567Z\nu,B,2024-05-01T12:00:00.1234561Z\n")
    assert iso.user_sequences()["u"] == ["B", "A"]  # sub-microsecond digits are not dropped


def test_large_integer_timestamps_never_go_through_a_float(tmp_path):
    big = 1_700_000_000_000_000_001  # nanoseconds; as a float it equals big - 1
    data = load(tmp_path, f"user_id,item_id,when\nu,A,{big}\nu,B,{big - 1}\n")
    assert data.timestamps == [big, big - 1] and data.user_sequences()["u"] == ["B", "A"]
    (tmp_path / "o.jsonl").write_text(f'{{"user_id": "u", "item_id": "A", "when": {big}}}\n'
                                      f'{{"user_id": "u", "item_id": "B", "when": {big - 1}}}\n')
    assert load_interactions(tmp_path / "o.jsonl", tmp_path / "items.csv", time_col="when",
                             images=False).timestamps == [big, big - 1]


def test_a_column_mixing_time_scales_is_refused_naming_a_row_of_each(tmp_path):
    mixed = "user_id,item_id,when\nu,A,2024-05-01T12:00:00\nu,B,17\nu,C,1714564800000\n"
    with pytest.raises(DataFormatError, match=r"when mixes time scales: ISO dates from .*orders\.csv:2 "
                                              r"\('2024-05-01T12:00:00'\); plain numbers from .*orders\.csv:3 "
                                              r"\('17'\); milliseconds from .*orders\.csv:4"):
        load(tmp_path, mixed)
    seconds_and_ms = "user_id,item_id,when\nu,A,1714564800\nu,B,1714564800000\n"
    with pytest.raises(DataFormatError, match=r"seconds from .*orders\.csv:2 .*milliseconds from .*orders\.csv:3"):
        load(tmp_path, seconds_and_ms)
    with pytest.raises(DataFormatError, match=r"orders\.csv:3: when '1714564800000' is not in time_unit='s' "
                                              r"\(seconds\): it reads as milliseconds"):
        load(tmp_path, seconds_and_ms, time_unit="s")
    data = load(tmp_path, "user_id,item_id,when\nu,A,1714564800000\nu,B,1714564799999\n", time_unit="ms")
    assert data.sources["time_unit"] == "ms" and data.user_sequences()["u"] == ["B", "A"]
    assert load(tmp_path, "user_id,item_id,when\nu,A,7\nu,B,1714564800\n", time_unit="number").timestamps == [
        7, 1714564800]  # a declared plain-number column orders by value, whatever the sizes


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "1e400", "99999999999999999999"])
def test_a_time_that_is_not_finite_or_too_large_is_refused_naming_file_and_line(tmp_path, bad):
    with pytest.raises(DataFormatError, match=r"orders\.csv:3: when "):
        load(tmp_path, f"user_id,item_id,when\nu,A,1\nu,B,{bad}\n")


def test_nat_in_a_dataframe_is_refused_naming_the_row(tmp_path):
    frame = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["A", "B"],
                          "when": pd.to_datetime(["2024-05-01T12:00:00", None])})
    with pytest.raises(DataFormatError, match="interactions DataFrame row 1: when is missing"):
        load_interactions(frame, table(tmp_path / "i.csv", ITEMS), time_col="when", images=False)
    frame["when"] = pd.to_datetime(["2024-05-01T12:00:00.000000002", "2024-05-01T12:00:00.000000001"])
    data = load_interactions(frame, table(tmp_path / "i.csv", ITEMS), time_col="when", images=False)
    assert data.timestamps == [Decimal("1714564800.000000002"), Decimal("1714564800.000000001")]


def test_naive_dates_are_utc_whatever_the_machines_time_zone(tmp_path):
    """Two rows in New York's March daylight-saving gap: read in the machine's zone they swapped order."""
    rows = "user_id,item_id,when\nu,A,2024-03-10T02:30:00\nu,B,2024-03-10T03:10:00\n"
    saved = os.environ.get("TZ")
    fingerprints = []
    try:
        for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
            os.environ["TZ"] = zone
            time.tzset()
            data = load(tmp_path, rows)
            assert data.user_sequences()["u"] == ["A", "B"] and data.timestamps[0] == 1710037800
            fingerprints.append(data.fingerprint())
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert len(set(fingerprints)) == 1
    with pytest.raises(DataFormatError, match=r"orders\.csv:2: when '2024-03-10T02:30:00' does not exist in time "
                                              "zone America/New_York"):
        load(tmp_path, rows, time_zone="America/New_York")
    offsets = "user_id,item_id,when\nu,A,2024-03-10T03:30:00-04:00\nu,B,2024-03-10T01:50:00-05:00\n"
    assert load(tmp_path, offsets, time_zone="America/New_York").user_sequences()["u"] == ["B", "A"]
    with pytest.raises(ValueError, match="time_zone='Mars/Olympus' is not a known time zone"):
        load(tmp_path, rows, time_zone="Mars/Olympus")


def test_the_time_column_orders_each_users_items(tmp_path):
    """With ``time_col`` the sequence follows the times, not the file order (and the times are kept)."""
    data = load(tmp_path, "user_id,item_id,when\nu,A,30\nu,B,10\nu,C,20\nv,A,5\n")
    assert data.timestamps == [30, 10, 20, 5] and data.sources["time_unit"] == "number"
    assert data.user_sequences() == {"u": ["B", "C", "A"], "v": ["A"]}


# ------------------------------------------------------------------------------- the built-in loaders, same rules


def test_built_in_loaders_share_the_rules(tmp_path):
    folder = tmp_path / "ml"
    (folder / "ml").mkdir(parents=True)
    (folder / "MicroLens-50k_titles.csv").write_text("item,title\n1,One\nitem,title\n2,Two\n")
    (folder / "MicroLens-50k_pairs.csv").write_text("user,item,timestamp\n1,1,1650000000000.9\n1,2,1650000000000.1\n")
    with pytest.raises(DataFormatError, match=r"MicroLens-50k_titles\.csv:3: the header row appears again"):
        load_microlens(folder, images=False)
    (folder / "MicroLens-50k_titles.csv").write_text("item,title\n1,One\n2,Two\n")
    data = load_microlens(folder, images=False)
    assert data.user_sequences()["1"] == ["2", "1"]  # 0.9 and 0.1 ms apart, not truncated to a tie
    netflix = tmp_path / "nf"
    netflix.mkdir()
    (netflix / "item_attribute.csv").write_text("0,2003,Dinosaur Planet\n1,2004,Isle of Man\n")
    (netflix / "train.json").write_text(json.dumps({"0": [0, True]}))
    with pytest.raises(DataFormatError, match=r"train\.json: an item of user '0' is a boolean"):
        load_netflix_llmrec(netflix, images=False)
    movies = write_movielens(tmp_path / "movies", ["1::1::4::5"], ["1::A (1990)::Drama", "1::B (1991)::Drama"])
    from hanorec_trl.data import load_movielens_1m

    with pytest.raises(DataFormatError, match=r"movies\.dat:2: item id '1' appears twice in the item table \(first "
                                              r"at .*movies\.dat:1\)"):
        load_movielens_1m(movies, images=False)
