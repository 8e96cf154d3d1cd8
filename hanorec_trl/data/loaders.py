"""Dataset loaders: MovieLens-1M, MicroLens and Netflix (as released by LLMRec) into one in-memory form.

Every loader returns a :class:`RecData`: the interactions (user, item, timestamp; parallel lists in file order), an
item table (ordered ids, titles, optional genres) and one image file per item (poster or cover), or none. Item and
user ids are strings everywhere; ``item_rows`` maps item ids to rows of embedding tables built over ``item_ids``.

Policies shared by every loader (see ``docs/data.md``):

* A malformed row raises :class:`DataFormatError` naming the file and the line.
* Interactions whose item is not in the item table raise :class:`UnknownItemError` naming the ids; with
  ``drop_unknown_items=True`` they are dropped instead, with one warning naming the count and the first ids.
* A missing image (no file) gives a grey placeholder and ONE :class:`MissingImageWarning` per dataset with the count
  and the first ids; ``strict_images=True`` makes it an error. An unreadable file (bad header, or pixel data cut
  short: a truncated download) is found when it is first decoded (:meth:`RecData.verify_images`, which the dataset
  builders call before any image reaches ``datasets``, and :meth:`RecData.image`) and handled the same way.
* Text: MovieLens ``.dat`` files are read as UTF-8 when they decode as UTF-8 (common in re-distributions), else as
  Windows-1252 / ISO-8859-1 (the original release), unless ``encoding=`` names one; an explicit encoding that does not
  fit is refused with the lines that do not decode. Control characters (NUL, ESC, ...) in titles are removed, with
  ONE :class:`ControlCharacterWarning` per file naming the items.
* Interactions without timestamps (Netflix/LLMRec, MicroLens ``.tsv``) have ``timestamps=None``: their order is the
  file order.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import pickle
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "DataFormatError",
    "UnknownItemError",
    "MissingImageWarning",
    "ControlCharacterWarning",
    "RecData",
    "load_movielens_1m",
    "load_microlens",
    "load_netflix_llmrec",
]

PLACEHOLDER_COLOR = (128, 128, 128)
_FIRST_IDS = 10  # how many offending ids an error or warning lists


class DataFormatError(ValueError):
    """A dataset file does not have the expected format; the message names the file and the line."""


class UnknownItemError(DataFormatError):
    """Interactions refer to item ids that are not in the item table."""


class MissingImageWarning(UserWarning):
    """Some items have no readable image; a placeholder is used for them."""


class ControlCharacterWarning(UserWarning):
    """Some titles contained control characters (NUL, ESC, ...); they were removed."""


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


def _first(ids: Iterable[str], n: int = _FIRST_IDS) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (", ..." if len(ids) > n else "")


def _natural_key(value: str) -> tuple[int, int | str]:
    """Sort numeric ids numerically and put any other id after them, in string order."""
    return (0, int(value)) if value.isdigit() else (1, value)


@dataclass
class RecData:
    """A recommendation dataset in memory: interactions, item table, item images.

    ``users[k]``, ``items[k]`` and ``timestamps[k]`` describe interaction ``k`` (file order). Treat an instance as
    read-only: the fingerprint and the per-user sequences are computed once and cached.
    """

    name: str
    users: list[str]
    items: list[str]
    timestamps: list[int] | None
    item_ids: list[str]
    titles: dict[str, str]
    genres: dict[str, tuple[str, ...]] = field(default_factory=dict)
    image_paths: dict[str, Path | None] | None = None
    strict_images: bool = False
    placeholder_size: tuple[int, int] = (56, 56)
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items) or (
            self.timestamps is not None and len(self.timestamps) != len(self.items)
        ):
            raise ValueError("RecData: users, items and timestamps must have the same length")
        self._item_rows: dict[str, int] | None = None
        self._sequences: dict[str, list[str]] | None = None
        self._interacted: dict[str, frozenset[str]] | None = None
        self._fingerprint: str | None = None
        self._bad_images: set[str] = set()
        self._verified: set[str] = set()

    # ---------------------------------------------------------------------------------------------------------- items
    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_sequences())

    @property
    def has_images(self) -> bool:
        """Whether the dataset was loaded with an image folder (``images=False`` loads titles only)."""
        return self.image_paths is not None

    @property
    def item_rows(self) -> dict[str, int]:
        """Item id -> row of embedding tables built over :attr:`item_ids` (row ``j`` = ``item_ids[j]``)."""
        if self._item_rows is None:
            self._item_rows = {item: row for row, item in enumerate(self.item_ids)}
        return self._item_rows

    def title(self, item_id: str) -> str:
        try:
            return self.titles[item_id]
        except KeyError:
            raise KeyError(f"{self.name}: item id {item_id!r} is not in the item table") from None

    # ------------------------------------------------------------------------------------------------------ sequences
    def user_sequences(self) -> dict[str, list[str]]:
        """User id -> the user's items in time order (ties, and data without timestamps, keep the file order).

        Users are in natural id order (numeric ids numerically).
        """
        if self._sequences is None:
            positions: dict[str, list[int]] = {}
            for k, user in enumerate(self.users):
                positions.setdefault(user, []).append(k)
            ts = self.timestamps
            sequences = {}
            for user in sorted(positions, key=_natural_key):
                index = positions[user]
                if ts is not None:
                    index = sorted(index, key=ts.__getitem__)  # stable: ties keep the file order
                sequences[user] = [self.items[k] for k in index]
            self._sequences = sequences
        return self._sequences

    def interacted(self, user: str) -> frozenset[str]:
        """Every item the user ever interacted with."""
        if self._interacted is None:
            self._interacted = {u: frozenset(seq) for u, seq in self.user_sequences().items()}
        return self._interacted[user]

    def fingerprint(self) -> str:
        """SHA-256 of the interactions (in file order) and the item table (ids, titles); images are not included."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            ts = self.timestamps if self.timestamps is not None else [""] * len(self.items)
            chunk = 100_000
            for start in range(0, len(self.items), chunk):
                stop = start + chunk
                rows = zip(self.users[start:stop], self.items[start:stop], ts[start:stop])
                digest.update("".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows).encode("utf-8"))
            digest.update(b"\x00items\x00")
            digest.update("".join(f"{i}\t{self.titles[i]}\n" for i in self.item_ids).encode("utf-8"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def summary(self) -> dict[str, Any]:
        with_image = None
        if self.image_paths is not None:
            with_image = sum(1 for p in self.image_paths.values() if p is not None)
        return {
            "name": self.name,
            "num_interactions": self.num_interactions,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "items_with_image": with_image,
            "has_timestamps": self.timestamps is not None,
            "fingerprint": self.fingerprint(),
        }

    # --------------------------------------------------------------------------------------------------------- images
    def placeholder_image(self) -> Image.Image:
        """The image used for an item without a readable image file: a flat grey square."""
        return Image.new("RGB", self.placeholder_size, PLACEHOLDER_COLOR)

    def image_path(self, item_id: str) -> Path | None:
        """The item's image file, or ``None`` when it has none (missing, unreadable, or loaded without images)."""
        if self.image_paths is None:
            return None
        if item_id not in self.image_paths:
            raise KeyError(f"{self.name}: item id {item_id!r} is not in the item table")
        if item_id in self._bad_images:
            return None
        return self.image_paths[item_id]

    def image(self, item_id: str) -> Image.Image:
        """The item's image, decoded; the placeholder when it has none (see the module's image policy)."""
        path = self.image_path(item_id)
        if path is None:
            return self.placeholder_image()
        try:
            img = Image.open(path)
            img.load()  # reads the pixels and closes the file; ``img.filename`` keeps the path
            return img
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            self._report_unreadable({item_id: f"{path}: {err}"})
            return self.placeholder_image()

    def verify_images(self, item_ids: Iterable[str] | None = None) -> list[str]:
        """Decode each item's image file (not yet checked) and return the ids of unreadable ones.

        Unreadable images (a bad header, or pixel data cut short) are reported in one warning (or an error with
        ``strict_images``) and use the placeholder from then on. JPEGs are decoded at reduced size (the whole file is
        still read), so a check costs a fraction of a full decode.
        """
        if self.image_paths is None:
            return []
        ids = self.item_ids if item_ids is None else item_ids
        failures: dict[str, str] = {}
        for item_id in ids:
            if item_id in self._verified:
                continue
            path = self.image_path(item_id)
            self._verified.add(item_id)
            if path is None:
                continue
            try:
                with Image.open(path) as img:
                    img.draft("RGB", (64, 64))  # JPEG: DCT-scaled decode; other formats: no-op
                    img.load()  # decoding the pixels finds truncated files (OSError: image file is truncated)
            except Exception as err:
                failures[item_id] = f"{path}: {err}"
        if failures:
            self._report_unreadable(failures)
        return list(failures)

    def _report_unreadable(self, failures: dict[str, str]) -> None:
        ids = list(failures)
        first = failures[ids[0]]
        message = f"{self.name}: {len(ids)} item image(s) could not be read (items {_first(ids)}; first error: {first})"
        if self.strict_images:
            raise DataFormatError(message)
        self._bad_images.update(ids)
        warnings.warn(message + "; using a placeholder image for them", MissingImageWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------------------------


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
) -> dict[str, Path | None]:
    """Map every item to its image file (``image_dir / pattern.format(item_id=...)``) or ``None`` when absent."""
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
        warnings.warn(message + "; using a placeholder image for them", MissingImageWarning, stacklevel=3)
    return paths


def _default_dir(data_dir: Path, candidates: Sequence[str]) -> Path:
    for name in candidates:
        if (data_dir / name).is_dir():
            return data_dir / name
    return data_dir / candidates[0]


# ------------------------------------------------------------------------------------------------------------------
# MovieLens-1M
# ------------------------------------------------------------------------------------------------------------------


def _find_ratings_file(data_dir: Path) -> Path:
    for name in ("ratings.dat", "ratings.dat.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    matches = sorted(p for p in data_dir.glob("ratings*.dat*") if p.name.endswith((".dat", ".dat.gz")))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise FileNotFoundError(f"no ratings.dat or ratings*.dat.gz in {data_dir}")
    raise FileNotFoundError(
        f"several ratings files in {data_dir} ({', '.join(p.name for p in matches)}); choose one with ratings_file="
    )


def _parse_ml_ratings(path: Path, min_rating: float | None) -> tuple[list[str], list[str], list[int]]:
    users: list[str] = []
    items: list[str] = []
    timestamps: list[int] = []
    for lineno, line in enumerate(_read_lines(path, None), 1):
        parts = line.split("::")
        if len(parts) != 4:
            if not line.strip():
                continue
            raise DataFormatError(f"{path}:{lineno}: expected 'UserID::MovieID::Rating::Timestamp', got {line!r}")
        user, item, rating, ts = parts
        try:
            stamp = int(ts)
            value = float(rating)
        except ValueError:
            raise DataFormatError(
                f"{path}:{lineno}: rating and timestamp must be numbers in 'UserID::MovieID::Rating::Timestamp', "
                f"got {line!r}"
            ) from None
        if not user or not item:
            raise DataFormatError(f"{path}:{lineno}: empty user or movie id in {line!r}")
        if not (np.isfinite(value) and value >= 0):
            raise DataFormatError(f"{path}:{lineno}: a rating must be a finite number >= 0, got {rating!r}")
        if min_rating is not None and value < min_rating:
            continue
        users.append(user)
        items.append(item)
        timestamps.append(stamp)
    return users, items, timestamps


def read_movielens_movies(
    path: str | Path, encoding: str | None = None
) -> tuple[list[str], dict[str, str], dict[str, tuple[str, ...]]]:
    """A MovieLens-1M ``movies.dat`` (``MovieID::Title (Year)::Genres``; ``.gz`` too) -> ids in file order, titles
    and genres by id. ``encoding=None``: UTF-8 when the file decodes as UTF-8, else Windows-1252 / ISO-8859-1 (the
    original release). Malformed lines raise :class:`DataFormatError` naming file and line; control characters in
    titles are removed with one :class:`ControlCharacterWarning`."""
    path = Path(path)
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    genres: dict[str, tuple[str, ...]] = {}
    for lineno, line in enumerate(_read_lines(path, encoding), 1):
        parts = line.split("::")
        if len(parts) != 3:
            if not line.strip():
                continue
            raise DataFormatError(f"{path}:{lineno}: expected 'MovieID::Title (Year)::Genres', got {line!r}")
        item, title, genre = (p.strip() for p in parts)
        _check_unique(item, titles, path, lineno)
        if not title:
            raise DataFormatError(f"{path}:{lineno}: empty title for movie {item!r}")
        item_ids.append(item)
        titles[item] = title
        genres[item] = tuple(g for g in genre.split("|") if g)
    titles = _clean_titles(path.parent.name or "movielens", titles, path)
    empty = [item for item in item_ids if not titles[item]]
    if empty:
        raise DataFormatError(f"{path}: the titles of movies {_first(empty)} are empty once control characters are "
                              "removed")
    return item_ids, titles, genres


def load_movielens_1m(
    data_dir: str | Path,
    *,
    ratings_file: str | Path | None = None,
    movies_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    image_pattern: str = "{item_id}.jpg",
    images: bool = True,
    strict_images: bool = False,
    min_rating: float | None = None,
    drop_unknown_items: bool = False,
    placeholder_size: tuple[int, int] = (56, 56),
    encoding: str | None = None,
) -> RecData:
    """Load MovieLens-1M (or anything written in its format, e.g. :func:`write_synthetic_movielens`).

    Args:
        data_dir: folder with ``ratings.dat`` (or ``ratings.dat.gz``, or a single ``ratings*.dat[.gz]``) and
            ``movies.dat`` (ISO-8859-1, ``MovieID::Title (Year)::Genres``).
        ratings_file / movies_file: explicit files (relative to ``data_dir`` or absolute).
        image_dir: poster folder, default ``data_dir/posters``; posters are ``image_dir / image_pattern`` with
            ``{item_id}`` replaced by the movie id (the pattern may contain sub-folders).
        images: ``False`` loads titles only (text LLMs); no image lookups, no warning.
        strict_images: raise instead of using a placeholder for a missing or unreadable poster.
        min_rating: keep only ratings >= this value (default: every rating is an interaction, as in the paper).
        drop_unknown_items: drop (with a warning) ratings of movies missing from ``movies.dat`` instead of raising.
        placeholder_size: size of the grey placeholder image.
        encoding: text encoding of ``movies.dat``; None detects it (UTF-8 if the file decodes as UTF-8, else
            Windows-1252 / ISO-8859-1, the original release's). An explicit encoding is checked: the lines that do
            not decode are named.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MovieLens folder {data_dir} does not exist")
    ratings_path = data_dir / ratings_file if ratings_file is not None else _find_ratings_file(data_dir)
    movies_path = data_dir / (movies_file if movies_file is not None else "movies.dat")
    for path in (ratings_path, movies_path):
        if not path.is_file():
            raise FileNotFoundError(f"MovieLens file {path} does not exist")
    item_ids, titles, genres = read_movielens_movies(movies_path, encoding)
    users, items, timestamps = _parse_ml_ratings(ratings_path, min_rating)
    name = data_dir.name or "movielens"
    users, items, timestamps = _resolve_unknown_items(
        name, users, items, timestamps, titles, drop_unknown_items, str(ratings_path)
    )
    image_paths = None
    if images:
        folder = Path(data_dir / image_dir) if image_dir is not None else data_dir / "posters"
        image_paths = _find_images(name, item_ids, folder, image_pattern, strict_images)
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
        sources={"ratings": str(ratings_path), "items": str(movies_path)},
    )


# ------------------------------------------------------------------------------------------------------------------
# MicroLens
# ------------------------------------------------------------------------------------------------------------------


def _csv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) for each row of a CSV file with LF or CRLF endings (quoted fields may span lines)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    try:
        for row in reader:
            yield line, row
            line = reader.line_num + 1
    except csv.Error as err:
        raise DataFormatError(f"{path}:{reader.line_num}: malformed CSV ({err})") from err


def _is_header(row: list[str], names: Sequence[str]) -> bool:
    return [c.strip().lower() for c in row[: len(names)]] == list(names)


def _parse_microlens_titles(path: Path) -> tuple[list[str], dict[str, str]]:
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    for lineno, row in _csv_rows(path):
        if lineno == 1 and _is_header(row, ("item", "title")):
            continue
        if not row:
            continue
        if len(row) != 2:
            raise DataFormatError(f"{path}:{lineno}: expected 2 fields 'item,title', got {len(row)}: {row!r}")
        item, title = row[0].strip(), row[1].strip()
        _check_unique(item, titles, path, lineno)
        item_ids.append(item)
        titles[item] = title  # MicroLens has a few empty titles; they are kept (the cover still carries content)
    return item_ids, _clean_titles(path.parent.name or "microlens", titles, path)


def _parse_microlens_pairs_csv(path: Path) -> tuple[list[str], list[str], list[int]]:
    users: list[str] = []
    items: list[str] = []
    timestamps: list[int] = []
    for lineno, row in _csv_rows(path):
        if lineno == 1 and _is_header(row, ("user", "item")):
            continue
        if not row:
            continue
        if len(row) != 3:
            raise DataFormatError(f"{path}:{lineno}: expected 3 fields 'user,item,timestamp', got {row!r}")
        user, item, ts = (c.strip() for c in row)
        try:
            stamp = int(float(ts)) if "." in ts or "e" in ts.lower() else int(ts)
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: timestamp must be a number, got {ts!r}") from None
        if not user or not item:
            raise DataFormatError(f"{path}:{lineno}: empty user or item id in {row!r}")
        users.append(user)
        items.append(item)
        timestamps.append(stamp)
    return users, items, timestamps


def _parse_microlens_pairs_tsv(path: Path) -> tuple[list[str], list[str]]:
    """``user<TAB>item item item ...`` per line, items in chronological order (no timestamps)."""
    users: list[str] = []
    items: list[str] = []
    for lineno, line in enumerate(_read_lines(path, "utf-8"), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataFormatError(f"{path}:{lineno}: expected 'user<TAB>item item ...', got {line!r}")
        user = parts[0].strip()
        for item in parts[1].split():
            users.append(user)
            items.append(item)
    return users, items


def load_microlens(
    data_dir: str | Path,
    *,
    pairs_file: str | Path | None = None,
    titles_file: str | Path = "MicroLens-50k_titles.csv",
    image_dir: str | Path | None = None,
    image_pattern: str = "{item_id}.jpg",
    images: bool = True,
    strict_images: bool = False,
    drop_unknown_items: bool = False,
    placeholder_size: tuple[int, int] = (56, 56),
) -> RecData:
    """Load MicroLens (50k release format).

    Args:
        data_dir: folder with ``MicroLens-50k_pairs.csv`` (``user,item,timestamp``) or, failing that,
            ``MicroLens-50k_pairs.tsv`` (``user<TAB>items in chronological order``, no timestamps: file order), and
            ``MicroLens-50k_titles.csv`` (``item,title``; LF or CRLF line endings; a header row is skipped).
        pairs_file / titles_file: explicit files (relative to ``data_dir`` or absolute).
        image_dir: cover folder, default ``data_dir/covers`` (or ``MicroLens-50k_covers`` when that exists); covers
            are ``image_dir / image_pattern``.
        images, strict_images, drop_unknown_items, placeholder_size: as in :func:`load_movielens_1m`.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MicroLens folder {data_dir} does not exist")
    if pairs_file is None:
        pairs_path = data_dir / "MicroLens-50k_pairs.csv"
        if not pairs_path.is_file() and (data_dir / "MicroLens-50k_pairs.tsv").is_file():
            pairs_path = data_dir / "MicroLens-50k_pairs.tsv"
    else:
        pairs_path = data_dir / pairs_file
    titles_path = data_dir / titles_file
    for path in (pairs_path, titles_path):
        if not path.is_file():
            raise FileNotFoundError(f"MicroLens file {path} does not exist")
    item_ids, titles = _parse_microlens_titles(titles_path)
    timestamps: list[int] | None
    if pairs_path.suffix == ".tsv":
        users, items = _parse_microlens_pairs_tsv(pairs_path)
        timestamps = None
    else:
        users, items, timestamps = _parse_microlens_pairs_csv(pairs_path)
    name = data_dir.name or "microlens"
    users, items, timestamps = _resolve_unknown_items(
        name, users, items, timestamps, titles, drop_unknown_items, str(pairs_path)
    )
    image_paths = None
    if images:
        folder = (
            data_dir / image_dir
            if image_dir is not None
            else _default_dir(data_dir, ("covers", "MicroLens-50k_covers"))
        )
        image_paths = _find_images(name, item_ids, folder, image_pattern, strict_images)
    return RecData(
        name=name,
        users=users,
        items=items,
        timestamps=timestamps,
        item_ids=item_ids,
        titles=titles,
        image_paths=image_paths,
        strict_images=strict_images,
        placeholder_size=placeholder_size,
        sources={"interactions": str(pairs_path), "items": str(titles_path)},
    )


# ------------------------------------------------------------------------------------------------------------------
# Netflix as released by LLMRec
# ------------------------------------------------------------------------------------------------------------------

_YEAR = re.compile(r"^(\d{4}|NULL|null|nan|NaN|)$")
_ATTRIBUTE_LAYOUTS = {
    ("id", "year", "title"),
    ("id", "year", "title", "genres"),
    ("id", "title", "genres"),
    ("id", "title"),
}


class _CSRState:
    """Stands in for ``scipy.sparse.csr_matrix`` when unpickling, so that scipy is not needed: keeps its arrays."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _CSRUnpickler(pickle.Unpickler):
    """Unpickles a scipy CSR matrix into :class:`_CSRState` and refuses every other global (no code execution)."""

    _NUMPY = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("scipy.sparse") and name in ("csr_matrix", "csr_array"):
            return _CSRState
        if (module, name) in self._NUMPY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}; expected a pickled scipy CSR matrix")


def _load_csr_pairs(path: Path) -> tuple[list[str], list[str]]:
    """(row, column) of every stored entry of a pickled CSR user x item matrix, row by row, columns as stored."""
    try:
        with open(path, "rb") as f:
            matrix = _CSRUnpickler(f).load()
    except Exception as err:
        raise DataFormatError(
            f"{path}: cannot read the pickled interaction matrix ({err}); LLMRec's train_mat is a pickled "
            "scipy.sparse csr_matrix (user x item); convert other formats with .tocsr() before pickling"
        ) from err
    try:
        indptr = np.asarray(matrix.indptr, dtype=np.int64)
        indices = np.asarray(matrix.indices, dtype=np.int64)
        data = np.asarray(matrix.data)
    except AttributeError as err:
        raise DataFormatError(f"{path}: the pickled object is not a CSR matrix ({err})") from err
    if indptr.ndim != 1 or indptr[-1] != len(indices):
        raise DataFormatError(f"{path}: inconsistent CSR arrays (indptr ends at {indptr[-1]}, {len(indices)} entries)")
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(len(counts)), counts)
    keep = data != 0  # explicitly stored zeros are not interactions
    rows, cols = rows[keep], indices[keep]
    return [str(r) for r in rows.tolist()], [str(c) for c in cols.tolist()]


def _load_json_pairs(path: Path) -> tuple[list[str], list[str]]:
    """LLMRec's ``train/val/test.json``: ``{"user": [item, ...]}``, items in file order."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataFormatError(f"{path}: cannot read the JSON interaction file ({err})") from err
    if not isinstance(mapping, dict):
        raise DataFormatError(f"{path}: expected a JSON object {{user: [items]}}, got {type(mapping).__name__}")
    users: list[str] = []
    items: list[str] = []
    for user, user_items in mapping.items():
        if not isinstance(user_items, list):
            raise DataFormatError(f"{path}: user {user!r}: expected a list of item ids, got {user_items!r}")
        for item in user_items:
            users.append(str(user))
            items.append(str(item))
    return users, items


def _detect_attribute_layout(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[str, ...]:
    sample = [row for _, row in rows[:50] if row]
    if not sample:
        raise DataFormatError(f"{path}: no item rows")
    if all(len(r) >= 3 and _YEAR.match(r[1].strip()) for r in sample):
        return ("id", "year", "title")  # any extra fields are joined back into the title (unquoted commas)
    if all(len(r) >= 3 for r in sample):
        return ("id", "title", "genres")
    return ("id", "title")


def _parse_item_attributes(
    path: Path, layout: Sequence[str] | None, title_with_year: bool
) -> tuple[list[str], dict[str, str], dict[str, tuple[str, ...]], tuple[str, ...]]:
    rows = list(_csv_rows(path))
    if rows and rows[0][1] and rows[0][1][0].strip().lower() in ("id", "item", "item_id", "movieid"):
        rows = rows[1:]  # header row
    if layout is None:
        layout = _detect_attribute_layout(path, rows)
    layout = tuple(layout)
    if layout not in _ATTRIBUTE_LAYOUTS:
        raise ValueError(f"attribute_columns must be one of {sorted(_ATTRIBUTE_LAYOUTS)}, got {layout}")
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    genres: dict[str, tuple[str, ...]] = {}
    for lineno, row in rows:
        if not row:
            continue
        if len(row) < len(layout):
            raise DataFormatError(f"{path}:{lineno}: expected {len(layout)} fields {','.join(layout)}, got {row!r}")
        item = row[0].strip()
        _check_unique(item, titles, path, lineno)
        if layout[1] == "year":
            year = row[1].strip()
            if not _YEAR.match(year):
                raise DataFormatError(f"{path}:{lineno}: expected a year (or NULL) in field 2, got {year!r}")
            end = len(row) - 1 if layout[-1] == "genres" else len(row)
            title = ",".join(row[2:end]).strip()
            if title_with_year and year.isdigit():
                title = f"{title} ({year})"
        elif layout[-1] == "genres":
            title = ",".join(row[1:-1]).strip()
        else:
            title = ",".join(row[1:]).strip()
        if not title:
            raise DataFormatError(f"{path}:{lineno}: empty title for item {item!r}")
        item_ids.append(item)
        titles[item] = title
        if layout[-1] == "genres":
            genres[item] = tuple(g for g in row[-1].strip().split("|") if g)
    return item_ids, _clean_titles(path.parent.name or "netflix", titles, path), genres, layout


def load_netflix_llmrec(
    data_dir: str | Path,
    *,
    attribute_file: str | Path = "item_attribute.csv",
    attribute_columns: Sequence[str] | None = None,
    title_with_year: bool = True,
    image_dir: str | Path | None = None,
    image_pattern: str = "{item_id}.jpg",
    images: bool = True,
    strict_images: bool = False,
    drop_unknown_items: bool = False,
    placeholder_size: tuple[int, int] = (56, 56),
) -> RecData:
    """Load a dataset in LLMRec's release format (its Netflix and MovieLens data).

    Interactions: ``train_mat`` (a pickled scipy CSR user x item matrix; scipy is not needed to read it) or, when
    absent, ``train.json``; then ``val.json`` and ``test.json`` when present (``{"user": [items]}``). User ids are
    the matrix rows / JSON keys, item ids the matrix columns / JSON values, all as strings. There are no timestamps:
    a user's sequence is the file order (train in column order, then val, then test) -- it is not a time order.

    Items: ``item_attribute.csv`` without header, ``id,year,title`` (LLMRec's Netflix; the title gets `` (year)``
    appended when ``title_with_year``), ``id,year,title,genres``, ``id,title,genres`` or ``id,title``; detected
    from the rows unless ``attribute_columns`` names the layout. Titles may contain unquoted commas.

    Images: ``image_dir`` (default ``data_dir/posters``, or ``Netflix_Posters`` when that exists) /
    ``image_pattern``. Other arguments as in :func:`load_movielens_1m`.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"LLMRec-format folder {data_dir} does not exist")
    attribute_path = data_dir / attribute_file
    if not attribute_path.is_file():
        raise FileNotFoundError(f"LLMRec item file {attribute_path} does not exist")
    item_ids, titles, genres, layout = _parse_item_attributes(attribute_path, attribute_columns, title_with_year)

    users: list[str] = []
    items: list[str] = []
    sources = {"items": str(attribute_path)}
    if (data_dir / "train_mat").is_file():
        parts = [("train_mat", _load_csr_pairs)]
    elif (data_dir / "train.json").is_file():
        parts = [("train.json", _load_json_pairs)]
    else:
        raise FileNotFoundError(f"no interaction file in {data_dir}: expected train_mat or train.json")
    parts += [(name, _load_json_pairs) for name in ("val.json", "test.json") if (data_dir / name).is_file()]
    for name, reader in parts:
        part_users, part_items = reader(data_dir / name)
        users += part_users
        items += part_items
        sources[name] = str(data_dir / name)
    name = data_dir.name or "netflix"
    users, items, _ = _resolve_unknown_items(
        name, users, items, None, titles, drop_unknown_items, ", ".join(p for p, _ in parts)
    )
    image_paths = None
    if images:
        folder = (
            data_dir / image_dir if image_dir is not None else _default_dir(data_dir, ("posters", "Netflix_Posters"))
        )
        image_paths = _find_images(name, item_ids, folder, image_pattern, strict_images)
    return RecData(
        name=name,
        users=users,
        items=items,
        timestamps=None,
        item_ids=item_ids,
        titles=titles,
        genres=genres,
        image_paths=image_paths,
        strict_images=strict_images,
        placeholder_size=placeholder_size,
        sources=sources | {"item_layout": ",".join(layout)},
    )
