"""Any interaction table and item table into a :class:`~.recdata.RecData`: :func:`load_interactions`.

Files (CSV, TSV, Parquet, JSON Lines; chosen by suffix), pandas DataFrames or ``datasets.Dataset`` objects, with the
bad-row policy of the built-in loaders (:mod:`.reading`): a malformed row raises :class:`~.recdata.DataFormatError`
naming the file and the line (for in-memory tables, the table and the row), unknown items raise
:class:`~.recdata.UnknownItemError` (or are dropped with ``drop_unknown_items=True``), missing images get the
placeholder with one warning, control characters in titles are removed with one warning. ``docs/data.md`` has a worked
example.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from .reading import _clean_titles, _csv_rows, _find_images, _read_text_lines, _resolve_unknown_items
from .recdata import DataFormatError, RecData

__all__ = ["TABLE_SUFFIXES", "load_interactions"]

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".ndjson")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown table format; use one of {', '.join(TABLE_SUFFIXES)} (text formats may end "
                     "in .gz)")


def _text_rows(path: Path, sep: str | None, encoding: str | None) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header and (line number, fields) of a delimited text file; quoted fields may span lines."""
    lines, _ = _read_text_lines(path, encoding)
    delimiter = sep if sep is not None else ("," if _suffix(path) == ".csv" else "\t")
    rows = iter(_csv_rows(path, delimiter=delimiter, text="\n".join(lines) + "\n"))
    first = next(rows, None)
    if first is None:
        raise DataFormatError(f"{path}:1: the file is empty (a header line naming the columns comes first)")
    return [h.strip() for h in first[1]], rows


def _records(table: Any, what: str, sep: str | None, encoding: str | None
             ) -> tuple[str, list[str], Iterator[tuple[str, dict[str, Any]]]]:
    """(source name, columns, (location 'file:line' or 'table row N', row dict) ...) of a path, DataFrame or Dataset."""
    if isinstance(table, (str, Path)):
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"{what} table {path} does not exist")
        suffix = _suffix(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                frame = pq.read_table(path)
            except Exception as err:  # noqa: BLE001 - any reader error is a bad file
                raise DataFormatError(f"{path}: cannot read the Parquet file ({err})") from err
            columns = frame.column_names
            # Parquet has no lines: row N counts from 1 like a text file's data lines (header = line 1)
            return str(path), columns, ((f"{path}:row {k + 1}", row) for k, row in enumerate(frame.to_pylist()))
        if suffix in (".jsonl", ".ndjson"):
            lines, _ = _read_text_lines(path, encoding)

            def json_rows() -> Iterator[tuple[str, dict[str, Any]]]:
                for lineno, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataFormatError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                    yield f"{path}:{lineno}", row

            first = next((json.loads(line) for line in lines if line.strip()), {}) if lines else {}
            return str(path), list(first) if isinstance(first, dict) else [], json_rows()
        header, rows = _text_rows(path, sep, encoding)

        def text_rows() -> Iterator[tuple[str, dict[str, Any]]]:
            for lineno, row in rows:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataFormatError(f"{path}:{lineno}: expected {len(header)} fields ({', '.join(header)}), "
                                          f"got {len(row)}: {row!r}")
                yield f"{path}:{lineno}", dict(zip(header, row, strict=True))

        return str(path), header, text_rows()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(table, pd.DataFrame):
        name = f"{what} DataFrame"
        return name, [str(c) for c in table.columns], (
            (f"{name} row {k}", {str(c): v for c, v in row.items()})
            for k, row in enumerate(table.to_dict(orient="records")))
    from datasets import Dataset

    if isinstance(table, Dataset):
        name = f"{what} Dataset"
        return name, list(table.column_names), ((f"{name} row {k}", row) for k, row in enumerate(table))
    raise TypeError(f"{what}: expected a file path, a pandas DataFrame or a datasets.Dataset, got "
                    f"{type(table).__name__}")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # ids read as floats by pandas (a column with gaps)
    return str(value).strip()


def _time(value: Any, where: str, column: str) -> int:
    """A timestamp as an integer: numbers as they are, ISO dates as Unix seconds."""
    if isinstance(value, bool):
        raise DataFormatError(f"{where}: {column} must be a number or a date, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise DataFormatError(f"{where}: {column} must be a finite number, got {value!r}")
        return int(value)
    if hasattr(value, "timestamp"):  # datetime, pandas Timestamp
        return int(value.timestamp())
    text = _text(value)
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise DataFormatError(f"{where}: {column} must be a number or an ISO date, got {text!r}") from None


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
    title_col: str = "title",
    items_item_col: str | None = None,
    image_dir: str | Path | None = None,
    image_pattern: str = "{item_id}.jpg",
    images: bool = True,
    sep: str | None = None,
    encoding: str | None = None,
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
        title_col: the title column of ``items``; ``items_item_col``: its item column (default: ``item_col``).
        image_dir / image_pattern: item images ``image_dir / image_pattern`` with ``{item_id}`` replaced (vision
            models); no ``image_dir``: every item gets the placeholder image.
        images: ``False`` loads titles only (text LLMs): no image lookups.
        sep: field separator of text tables (default: ``,`` for ``.csv``, tab for ``.tsv``/``.txt``).
        encoding: text encoding of text tables; ``None`` detects it (UTF-8, else Windows-1252 / ISO-8859-1).
        strict_images / drop_unknown_items / placeholder_size: as in the built-in loaders.
        name: the dataset's name (default: the interaction file's folder, or ``custom``).

    Returns the :class:`RecData` the built-in loaders return. A bad row raises :class:`DataFormatError` naming the
    file and the line (``file:line``; in-memory tables: the table and the row number).
    """
    item_key = items_item_col or item_col
    item_source, item_columns, item_rows = _records(items, "items", sep, encoding)
    _need(item_columns, {"items_item_col": item_key, "title_col": title_col}, item_source)
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    for where, row in item_rows:
        item_id = _text(row.get(item_key))
        if not item_id:
            raise DataFormatError(f"{where}: empty item id (column {item_key!r})")
        if item_id in titles:
            raise DataFormatError(f"{where}: item id {item_id!r} appears twice in the item table")
        title = _text(row.get(title_col))
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
    timestamps: list[int] = []
    for where, row in rows:
        user, item = _text(row.get(user_col)), _text(row.get(item_col))
        if not user or not item:
            raise DataFormatError(f"{where}: empty user or item id ({user_col}={user!r}, {item_col}={item!r})")
        if time_col is not None:
            raw = row.get(time_col)
            if raw is None or _text(raw) == "":
                raise DataFormatError(f"{where}: empty {time_col}")
            timestamps.append(_time(raw, where, time_col))
        users.append(user)
        seen_items.append(item)
    if not users:
        raise DataFormatError(f"{source}: the interaction table has no rows")
    stamps = timestamps if time_col is not None else None
    users, seen_items, stamps = _resolve_unknown_items(dataset_name, users, seen_items, stamps, titles,
                                                       drop_unknown_items, source)
    image_paths = None
    if images:
        folder = Path(image_dir) if image_dir is not None else None
        image_paths = _find_images(dataset_name, item_ids, folder, image_pattern, strict_images) if folder else \
            {item: None for item in item_ids}
    return RecData(
        name=dataset_name, users=users, items=seen_items, timestamps=stamps, item_ids=item_ids, titles=titles,
        image_paths=image_paths, strict_images=strict_images, placeholder_size=placeholder_size,
        sources={"interactions": source, "items": item_source},
    )
