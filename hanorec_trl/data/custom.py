"""Any interaction table and item table into a :class:`~.recdata.RecData`: :func:`load_interactions`.

Files (CSV, TSV, Parquet, JSON Lines; chosen by suffix), pandas DataFrames or ``datasets.Dataset`` objects, with the
bad-row policy of the built-in loaders (:mod:`.reading`): a malformed row raises :class:`~.recdata.DataFormatError`
naming the file and the line (for in-memory tables, the table and the row), unknown items raise
:class:`~.recdata.UnknownItemError` (or are dropped with ``drop_unknown_items=True``), missing images get the
placeholder with one warning, control characters in titles are removed with one warning. ``docs/data.md`` has a worked
example.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from .reading import (
    _check_unique,
    _clean_titles,
    _csv_rows,
    _find_images,
    _read_text,
    _repeated_header,
    _resolve_unknown_items,
    _scalar_text,
    _split_lines,
)
from .recdata import DataFormatError, RecData
from .times import parse_times

__all__ = ["TABLE_SUFFIXES", "load_interactions"]

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".ndjson")
Rows = Iterator[tuple[str, dict[str, Any]]]  # (location 'file:line' or 'table row N', row)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown table format; use one of {', '.join(TABLE_SUFFIXES)} (text formats may end "
                     "in .gz)")


def _text_table(path: Path, sep: str | None, encoding: str) -> tuple[list[str], Rows]:
    """Header and rows of a delimited text file; quoted fields may span lines."""
    delimiter = sep if sep is not None else ("," if _suffix(path) == ".csv" else "\t")
    rows = iter(_csv_rows(path, delimiter=delimiter, text=_read_text(path, encoding)))
    first = next(rows, None)
    if first is None:
        raise DataFormatError(f"{path}:1: the file is empty (a header line naming the columns comes first)")
    header = [h.strip() for h in first[1]]
    _check_columns(header, f"{path}:1")

    def records() -> Rows:
        for lineno, row in rows:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataFormatError(f"{path}:{lineno}: expected {len(header)} fields ({', '.join(header)}), "
                                      f"got {len(row)}: {row!r}")
            yield f"{path}:{lineno}", dict(zip(header, row, strict=True))

    return header, records()


class _RepeatedKeys(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise _RepeatedKeys(", ".join(map(repr, repeated)))
    return dict(pairs)


def _json_lines_table(path: Path, encoding: str) -> tuple[list[str], Rows]:
    """Columns (the first object's keys) and rows of a JSON Lines file. Numbers with a fraction or an exponent are
    read exactly (``Decimal``, never a float); a key twice in one object is refused."""
    lines = _split_lines(_read_text(path, encoding))

    def records() -> Rows:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_float=Decimal, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
            except _RepeatedKeys as err:
                raise DataFormatError(f"{path}:{lineno}: key(s) {err} appear more than once in the object") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{lineno}", row

    rows = records()
    first = next(rows, None)
    if first is None:
        return [], iter(())
    return list(first[1]), itertools.chain([first], rows)


def _parquet_table(path: Path) -> tuple[list[str], Rows]:
    import pyarrow.parquet as pq

    try:
        _check_columns(pq.read_schema(path).names, str(path))  # to_pylist would keep the last of two equal names
        frame = pq.read_table(path)
    except DataFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader error is a bad file
        raise DataFormatError(f"{path}: cannot read the Parquet file ({err})") from err
    columns = frame.column_names
    # Parquet has no lines: row N counts from 1 like a text file's data lines (header = line 1)
    return columns, ((f"{path}:row {k + 1}", row) for k, row in enumerate(frame.to_pylist()))


def _check_columns(columns: list[str], where: str) -> None:
    """Refuse a table whose header names a column twice (every reader would keep one of them, silently)."""
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise DataFormatError(f"{where}: column(s) {', '.join(map(repr, repeated))} appear more than once in the "
                              f"header ({', '.join(columns)}); rename one")


def _refuse_repeated_header(columns: list[str], rows: Rows) -> Rows:
    """The rows, refusing one whose every cell is its column's name: the header again (two exports joined), which
    would otherwise become an item named like the item column."""
    for where, row in rows:
        if columns and all(isinstance(row.get(c), str) and row[c].strip() == c for c in columns):
            raise _repeated_header(where)
        yield where, row


def _records(table: Any, what: str, sep: str | None, encoding: str) -> tuple[str, list[str], Rows]:
    """(source name, columns, rows) of a path, DataFrame or Dataset: every table goes through the same column and
    header checks."""
    if isinstance(table, (str, Path)):
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"{what} table {path} does not exist")
        suffix = _suffix(path)
        if suffix == ".parquet":
            columns, rows = _parquet_table(path)
        elif suffix in (".jsonl", ".ndjson"):
            columns, rows = _json_lines_table(path, encoding)
        else:
            columns, rows = _text_table(path, sep, encoding)
        source = str(path)
    else:
        source, columns, rows = _memory_table(table, what)
    return source, columns, _refuse_repeated_header(columns, rows)


def _memory_table(table: Any, what: str) -> tuple[str, list[str], Rows]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(table, pd.DataFrame):
        name = f"{what} DataFrame"
        columns = [str(c) for c in table.columns]
        _check_columns(columns, name)
        return name, columns, (
            (f"{name} row {k}", {str(c): v for c, v in row.items()})
            for k, row in enumerate(table.to_dict(orient="records")))
    from datasets import Dataset

    if isinstance(table, Dataset):
        name = f"{what} Dataset"
        return name, list(table.column_names), ((f"{name} row {k}", row) for k, row in enumerate(table))
    raise TypeError(f"{what}: expected a file path, a pandas DataFrame or a datasets.Dataset, got "
                    f"{type(table).__name__}")


def _need(columns: list[str], wanted: dict[str, str | None], source: str) -> None:
    missing = [f"{role}={name!r}" for role, name in wanted.items() if name is not None and name not in columns]
    if missing:
        raise DataFormatError(f"{source}: no column {', '.join(missing)}; its columns are {', '.join(columns)}")


def load_interactions(
    interactions: Any,
    items: Any,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = None,
    time_unit: str | None = None,
    time_zone: str = "UTC",
    title_col: str = "title",
    items_item_col: str | None = None,
    image_dir: str | Path | None = None,
    image_pattern: str = "{item_id}.jpg",
    images: bool = True,
    sep: str | None = None,
    encoding: str = "utf-8",
    strict_images: bool = False,
    drop_unknown_items: bool = False,
    placeholder_size: tuple[int, int] = (56, 56),
    name: str | None = None,
) -> RecData:
    """Load any recommendation dataset: an interaction table and an item table.

    Args:
        interactions: one row per (user, item) interaction: a file (``.csv``, ``.tsv``/``.txt``, ``.parquet``,
            ``.jsonl``/``.ndjson``; the text formats may end in ``.gz``; a header line names the columns), a pandas
            ``DataFrame`` or a ``datasets.Dataset``.
        items: one row per item with its title, in the same forms.
        user_col / item_col: the user and item columns of ``interactions``.
        time_col: the time column (numbers, or ISO dates such as ``2024-05-01T12:00:00``); ``None``: the rows are in
            time order per user (the order of the table).
        time_unit: the column's one scale: ``"s"`` / ``"ms"`` / ``"us"`` / ``"ns"`` (Unix times), ``"number"``
            (numbers that only order the rows), ``"iso"`` (dates); ``None`` reads it off the values and refuses a
            column that mixes scales (:mod:`.times`). Times are kept exactly (fractions too, never truncated).
        time_zone: the zone of dates written without an offset (default ``"UTC"``, never the machine's zone).
        title_col: the title column of ``items``; ``items_item_col``: its item column (default: ``item_col``).
        image_dir / image_pattern: item images ``image_dir / image_pattern`` with ``{item_id}`` replaced (vision
            models); no ``image_dir``: every item gets the placeholder image.
        images: ``False`` loads titles only (text LLMs): no image lookups.
        sep: field separator of text tables (default: ``,`` for ``.csv``, tab for ``.tsv``/``.txt``).
        encoding: text encoding of text tables (default UTF-8; nothing is guessed): the first byte that does not
            decode is refused naming the file and the line.
        strict_images / drop_unknown_items / placeholder_size: as in the built-in loaders.
        name: the dataset's name (default: the interaction file's folder, or ``custom``).

    Returns the :class:`RecData` the built-in loaders return (``sources["time_unit"]``: the time column's scale).
    A bad row raises :class:`DataFormatError` naming the file and the line (``file:line``; in-memory tables: the
    table and the row number): ids and titles that are booleans, lists or objects, a column named twice, the header
    repeated inside a table, an item id twice in the item table (both rows named), a bad time.
    """
    item_key = items_item_col or item_col
    item_source, item_columns, item_rows = _records(items, "items", sep, encoding)
    _need(item_columns, {"items_item_col": item_key, "title_col": title_col}, item_source)
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for where, row in item_rows:
        item_id = _scalar_text(row.get(item_key), where, f"column {item_key!r}")
        if not item_id:
            raise DataFormatError(f"{where}: empty item id (column {item_key!r})")
        _check_unique(item_id, first_seen, where)
        title = _scalar_text(row.get(title_col), where, f"column {title_col!r}")
        if not title:
            raise DataFormatError(f"{where}: empty title for item {item_id!r} (column {title_col!r})")
        item_ids.append(item_id)
        titles[item_id] = title
    if not item_ids:
        raise DataFormatError(f"{item_source}: the item table has no rows")
    dataset_name = name or (Path(interactions).parent.name if isinstance(interactions, (str, Path)) else "") \
        or "custom"
    titles = _clean_titles(dataset_name, titles, item_source)

    source, columns, rows = _records(interactions, "interactions", sep, encoding)
    _need(columns, {"user_col": user_col, "item_col": item_col, "time_col": time_col}, source)
    users: list[str] = []
    seen_items: list[str] = []
    raw_times: list[tuple[str, Any]] = []
    for where, row in rows:
        user = _scalar_text(row.get(user_col), where, f"column {user_col!r}")
        item = _scalar_text(row.get(item_col), where, f"column {item_col!r}")
        if not user or not item:
            raise DataFormatError(f"{where}: empty user or item id ({user_col}={user!r}, {item_col}={item!r})")
        if time_col is not None:
            raw_times.append((where, row.get(time_col)))
        users.append(user)
        seen_items.append(item)
    if not users:
        raise DataFormatError(f"{source}: the interaction table has no rows")
    sources = {"interactions": source, "items": item_source}
    stamps = None
    if time_col is not None:
        stamps, sources["time_unit"] = parse_times(raw_times, time_col, time_unit, time_zone)
    users, seen_items, stamps = _resolve_unknown_items(dataset_name, users, seen_items, stamps, titles,
                                                       drop_unknown_items, source)
    image_paths = None
    if images:
        folder = Path(image_dir) if image_dir is not None else None
        image_paths = _find_images(dataset_name, item_ids, folder, image_pattern, strict_images) if folder else \
            {item: None for item in item_ids}
    return RecData(
        name=dataset_name, users=users, items=seen_items, timestamps=stamps, item_ids=item_ids, titles=titles,
        image_paths=image_paths, strict_images=strict_images, placeholder_size=placeholder_size, sources=sources,
    )
