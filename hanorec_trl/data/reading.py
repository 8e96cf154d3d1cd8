"""Reading dataset files row by row, with the policies every loader shares (see ``docs/data.md``).

* A malformed row raises :class:`~.recdata.DataFormatError` naming the file and the line.
* Interactions whose item is not in the item table raise :class:`~.recdata.UnknownItemError` naming the ids; with
  ``drop_unknown_items=True`` they are dropped instead, with one warning naming the count and the first ids.
* A missing image file gives the placeholder and one :class:`~.recdata.MissingImageWarning` per dataset (an error
  with ``strict_images``).
* Text: ``encoding=None`` reads UTF-8 when the bytes decode as UTF-8, else Windows-1252 / ISO-8859-1; an explicit
  encoding that does not fit is refused with the lines that do not decode. Control characters (NUL, ESC, ...) in
  titles are removed, with ONE :class:`~.recdata.ControlCharacterWarning` per file naming the items.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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


AUTO_ENCODINGS = ("utf-8", "cp1252", "latin-1")  # tried in order by encoding=None (latin-1 decodes any byte)


def _decode(raw: bytes, path: Path, encoding: str | None) -> tuple[str, str]:
    """``raw`` as text and the encoding used: ``encoding``, or the first of :data:`AUTO_ENCODINGS` that decodes it.
    An explicit encoding that does not fit is refused with the lines that do not decode."""
    if encoding is None:
        for candidate in AUTO_ENCODINGS:
            try:
                text = raw.decode(candidate)
            except UnicodeDecodeError:
                continue
            return (text[1:] if text.startswith("\ufeff") else text), candidate
    try:
        return raw.decode(encoding), encoding
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r}") from None
    except UnicodeDecodeError as err:
        bad = []
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError:
                bad.append(lineno)
        shown = ", ".join(map(str, bad[:_FIRST_IDS])) + (", ..." if len(bad) > _FIRST_IDS else "")
        raise DataFormatError(
            f"{path}: {len(bad)} line(s) are not valid {encoding} text (lines {shown}; first: {err.reason}); pass "
            "the file's encoding (encoding='latin-1', 'utf-8'...) or encoding=None to detect it"
        ) from err


def _read_lines(path: Path, encoding: str | None) -> list[str]:
    """The lines of a text file (``.gz`` is decompressed), without line terminators (LF or CRLF); ``encoding=None``
    detects it (see :func:`_decode`)."""
    return _read_text_lines(path, encoding)[0]


def _read_text_lines(path: Path, encoding: str | None) -> tuple[list[str], str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataFormatError(f"{path}: cannot read the file ({err})") from err
    text, used = _decode(raw, path, encoding)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines], used


def _check_unique(item_id: str, seen: dict[str, Any], path: Path, lineno: int) -> None:
    if not item_id:
        raise DataFormatError(f"{path}:{lineno}: empty item id")
    if item_id in seen:
        raise DataFormatError(f"{path}:{lineno}: item id {item_id!r} appears twice in the item table")


def _resolve_unknown_items(
    name: str,
    users: list[str],
    items: list[str],
    timestamps: list[int] | None,
    titles: dict[str, str],
    drop: bool,
    source: str,
) -> tuple[list[str], list[str], list[int] | None]:
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
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from err
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


def _dataset(
    name: str,
    users: list[str],
    items: list[str],
    timestamps: list[int] | None,
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
