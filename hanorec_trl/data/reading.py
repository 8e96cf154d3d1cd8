"""Reading dataset files row by row, with the policies every loader shares (see ``docs/data.md``).

* A malformed row raises :class:`~.recdata.DataFormatError` naming the file and the line.
* Interactions whose item is not in the item table raise :class:`~.recdata.UnknownItemError` naming the ids; with
  ``drop_unknown_items=True`` they are dropped instead, with one warning naming the count and the first ids.
* A missing image file gives the placeholder and one :class:`~.recdata.MissingImageWarning` per dataset (an error
  with ``strict_images``).
* Text: one decoding rule (:func:`_decode`): UTF-8 unless the caller names another encoding, never a fallback; the
  first byte that does not decode is refused naming the file, the line and the column (MovieLens' own release
  encoding is the one exception, in :mod:`.movielens`). Control characters (NUL, ESC, ...) in titles are removed,
  with ONE :class:`~.recdata.ControlCharacterWarning` per file naming the items.
* Item tables: an empty or repeated item id is refused naming both lines (:func:`_check_unique`).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import numbers
import re
import warnings
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from .recdata import (
    _FIRST_IDS,
    ControlCharacterWarning,
    DataFormatError,
    MissingImageWarning,
    RecData,
    UnknownItemError,
    _first,
    _natural_key,
)
from .times import Time

# C0 controls but tab/LF/CR, DEL and the C1 block: never part of a title (tab/LF/CR become spaces)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE_CONTROL = re.compile("[\t\n\r]")


def _clean_titles(name: str, titles: dict[str, str], source: Path | str) -> dict[str, str]:
    """Titles without control characters; one :class:`ControlCharacterWarning` names the items that had some."""
    dirty = [item for item, title in titles.items() if _CONTROL.search(title) or _SPACE_CONTROL.search(title)]
    if not dirty:
        return titles
    cleaned = dict(titles)
    for item in dirty:
        cleaned[item] = _CONTROL.sub("", _SPACE_CONTROL.sub(" ", titles[item])).strip()
    warnings.warn(
        f"{name}: {len(dirty)} title(s) in {source} contain control characters (NUL, ESC, tab...): items "
        f"{_first(dirty)} (first: {titles[dirty[0]]!r}); removed them (tab and line breaks became spaces)",
        ControlCharacterWarning, stacklevel=3,
    )
    return cleaned


def _decode(raw: bytes, path: Path, encoding: str) -> str:
    """``raw`` decoded with ``encoding`` (a UTF-8 byte-order mark is dropped), with no fallback: the first byte that
    does not decode is refused naming the file, its line and its column, with every line that does not decode."""
    if encoding is None:
        raise ValueError("encoding=None: name the file's text encoding ('utf-8', the default, 'cp1252', "
                         "'latin-1', ...); it is not guessed")
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r}") from None
    try:
        text = raw.decode(name)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        bad = []
        for lineno, chunk in enumerate(raw.split(b"\n"), 1):
            try:
                chunk.decode(name)
            except UnicodeDecodeError:
                bad.append(lineno)
        shown = ", ".join(map(str, bad[:_FIRST_IDS])) + (", ..." if len(bad) > _FIRST_IDS else "")
        raise DataFormatError(
            f"{path}:{line}: {len(bad)} line(s) are not valid {encoding} text (lines {shown}; first: byte "
            f"0x{raw[err.start]:02x} at byte {column} of line {line}, {err.reason}); pass the file's encoding "
            "(encoding='cp1252', 'latin-1', ...)"
        ) from None
    return text[1:] if name == "utf-8" and text.startswith("\ufeff") else text


def _read_bytes(path: Path) -> bytes:
    """The bytes of a file (``.gz`` is decompressed); an unreadable file is a :class:`DataFormatError`."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise DataFormatError(f"{path}: cannot read the file ({err})") from err


def _split_lines(text: str) -> list[str]:
    """The lines of a text, without line terminators (LF or CRLF)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """A text file (``.gz`` is decompressed) decoded by the one rule of :func:`_decode`."""
    return _decode(_read_bytes(path), path, encoding)


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file (``.gz`` is decompressed), without line terminators (LF or CRLF)."""
    return _split_lines(_read_text(path, encoding))


def _scalar_text(value: Any, where: str, what: str) -> str:
    """A cell holding an id or a title, as text: a string (stripped), an integer, a finite number (a whole one as an
    integer: pandas reads an integer column with gaps as floats, 2.0 -> '2'); missing (``None``, NaN) -> ``''``.
    Booleans, lists, objects and other types are refused naming ``where`` and ``what`` (the column)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, np.bool_)):
        raise DataFormatError(f"{where}: {what} is a boolean ({value!r}), not an id or a text")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, (numbers.Real, Decimal)):
        if value != value:
            return ""
        if not (Decimal(value) if isinstance(value, Decimal) else Decimal(float(value))).is_finite():
            raise DataFormatError(f"{where}: {what} is {value!r}, not an id or a text")
        if value == int(value):
            return str(int(value))
        return str(value) if isinstance(value, Decimal) else float.__repr__(float(value))
    raise DataFormatError(f"{where}: {what} is a {type(value).__name__} ({value!r:.60}), not an id or a text")


def _check_unique(item_id: str, first_seen: dict[str, str], where: str) -> None:
    """Refuse an empty or repeated item id of an item table, naming both rows (``where``: ``file:line``); record
    ``where`` as the id's row."""
    if not item_id:
        raise DataFormatError(f"{where}: empty item id")
    if item_id in first_seen:
        raise DataFormatError(f"{where}: item id {item_id!r} appears twice in the item table (first at "
                              f"{first_seen[item_id]})")
    first_seen[item_id] = where


def _resolve_unknown_items(
    name: str,
    users: list[str],
    items: list[str],
    timestamps: list[Time] | None,
    titles: dict[str, str],
    drop: bool,
    source: str,
) -> tuple[list[str], list[str], list[Time] | None]:
    unknown = sorted({i for i in set(items) if i not in titles}, key=_natural_key)
    if not unknown:
        return users, items, timestamps
    count = sum(1 for i in items if i not in titles)
    message = (
        f"{name}: {count} interaction(s) in {source} refer to {len(unknown)} item id(s) that are not in the item "
        f"table: {_first(unknown)}"
    )
    if not drop:
        raise UnknownItemError(message + " (pass drop_unknown_items=True to drop these interactions)")
    warnings.warn(message + "; dropping these interactions", UserWarning, stacklevel=3)
    keep = [k for k, i in enumerate(items) if i in titles]
    return (
        [users[k] for k in keep],
        [items[k] for k in keep],
        None if timestamps is None else [timestamps[k] for k in keep],
    )


def _find_images(
    name: str,
    item_ids: Sequence[str],
    image_dir: Path | None,
    pattern: str,
    strict: bool,
    stacklevel: int = 3,
) -> dict[str, Path | None]:
    """Map every item to its image file (``image_dir / pattern.format(item_id=...)``) or ``None`` when absent; the
    warning about missing files points ``stacklevel`` frames up (the loader's caller)."""
    if "{item_id}" not in pattern:
        raise ValueError(f"image pattern {pattern!r} must contain '{{item_id}}'")
    try:
        pattern.format(item_id="1")
    except (IndexError, KeyError, ValueError, AttributeError) as err:
        raise ValueError(
            f"image pattern {pattern!r} is not a valid pattern ({type(err).__name__}: {err}): it may contain "
            "'{item_id}' and no other '{...}' field; write a literal brace as '{{' or '}}'"
        ) from None
    present: set[str] = set()
    if image_dir is not None and image_dir.is_dir():
        if "/" not in pattern and "\\" not in pattern:
            present = {p.name for p in image_dir.iterdir()}
        else:
            present = {str(p.relative_to(image_dir)) for p in image_dir.rglob("*")}
    paths: dict[str, Path | None] = {}
    missing = []
    for item_id in item_ids:
        rel = pattern.format(item_id=item_id)
        if rel in present:
            paths[item_id] = image_dir / rel
        else:
            paths[item_id] = None
            missing.append(item_id)
    if missing:
        where = f"{image_dir}" if image_dir is not None and image_dir.is_dir() else f"{image_dir} (no such folder)"
        message = (
            f"{name}: {len(missing)} of {len(item_ids)} items have no image file '{pattern}' in {where}: "
            f"items {_first(missing)}"
        )
        if strict:
            raise DataFormatError(message)
        warnings.warn(message + "; using a placeholder image for them", MissingImageWarning, stacklevel=stacklevel)
    return paths


def _default_dir(data_dir: Path, candidates: Sequence[str]) -> Path:
    for name in candidates:
        if (data_dir / name).is_dir():
            return data_dir / name
    return data_dir / candidates[0]


def _csv_rows(path: Path, *, delimiter: str = ",", text: str | None = None) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) for each row of a delimited text file with LF or CRLF endings (quoted fields may span
    lines). ``text``: the file's content already decoded; by default the file is read as UTF-8."""
    if text is None:
        text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    line = 1
    try:
        for row in reader:
            yield line, row
            line = reader.line_num + 1
    except csv.Error as err:
        raise DataFormatError(f"{path}:{reader.line_num}: malformed row ({err})") from err


def _is_header(row: list[str], names: Sequence[str]) -> bool:
    return [c.strip().lower() for c in row[: len(names)]] == list(names)


def _repeated_header(where: str) -> DataFormatError:
    """The error for a data row that repeats the header (``where``: ``file:line``), e.g. two exports joined."""
    return DataFormatError(f"{where}: the header row appears again inside the table (two files joined?); remove "
                           "it: it is not data")


def _dataset(
    name: str,
    users: list[str],
    items: list[str],
    timestamps: list[Time] | None,
    item_ids: list[str],
    titles: dict[str, str],
    genres: dict[str, tuple[str, ...]],
    *,
    image_folder: Path | None,
    image_pattern: str,
    strict_images: bool,
    placeholder_size: tuple[int, int],
    sources: dict[str, str],
) -> RecData:
    """The :class:`RecData` of a loader, with every item's image looked up in ``image_folder`` (``None``: loaded
    without images)."""
    image_paths = None
    if image_folder is not None:
        image_paths = _find_images(name, item_ids, image_folder, image_pattern, strict_images, stacklevel=4)
    return RecData(
        name=name,
        users=users,
        items=items,
        timestamps=timestamps,
        item_ids=item_ids,
        titles=titles,
        genres=genres,
        image_paths=image_paths,
        strict_images=strict_images,
        placeholder_size=placeholder_size,
        sources=sources,
    )
