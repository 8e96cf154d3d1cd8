"""MovieLens-1M (``ratings.dat``, ``movies.dat``, a poster folder) into a :class:`~.recdata.RecData`.

The same format is what :func:`~hanorec_trl.data.synthetic.write_synthetic_movielens` writes. Format and policies:
``docs/data.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .reading import (
    _check_unique,
    _clean_titles,
    _dataset,
    _decode,
    _read_bytes,
    _read_lines,
    _resolve_unknown_items,
    _split_lines,
)
from .recdata import DataFormatError, RecData, _first

__all__ = ["RELEASE_ENCODINGS", "load_movielens_1m", "read_movielens_movies"]

# movies.dat of the original release is ISO-8859-1 (Windows-1252 has the same letters and a few more); copies
# re-distributed as UTF-8 are common. encoding=None reads UTF-8, else these, in order (latin-1 decodes any byte).
RELEASE_ENCODINGS = ("cp1252", "latin-1")
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _movies_lines(path: Path, encoding: str | None) -> list[str]:
    """The lines of ``movies.dat``: in ``encoding``, or (``None``) UTF-8 when the whole file is UTF-8, else the
    original release's encoding. A file holding UTF-8 text AND bytes that are not UTF-8 is refused (decoding it as
    Windows-1252 would garble every UTF-8 title), naming the first line that does not decode."""
    raw = _read_bytes(path)
    if encoding is not None:
        return _split_lines(_decode(raw, path, encoding))
    try:
        return _split_lines(_decode(raw, path, "utf-8"))
    except DataFormatError as err:
        if _UTF8_SEQUENCE.search(raw):
            raise DataFormatError(f"{err}; the rest of the file is UTF-8 text, so it is not the original release "
                                  "(ISO-8859-1): mixed encodings are not guessed") from None
    for candidate in RELEASE_ENCODINGS:
        try:
            return _split_lines(raw.decode(candidate))
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


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
    for lineno, line in enumerate(_read_lines(path), 1):
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
    original release; a file mixing UTF-8 with other bytes is refused). Malformed lines raise
    :class:`DataFormatError` naming file and line; control characters in titles are removed with one
    :class:`ControlCharacterWarning`."""
    path = Path(path)
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    genres: dict[str, tuple[str, ...]] = {}
    first_seen: dict[str, str] = {}
    for lineno, line in enumerate(_movies_lines(path, encoding), 1):
        parts = line.split("::")
        if len(parts) != 3:
            if not line.strip():
                continue
            raise DataFormatError(f"{path}:{lineno}: expected 'MovieID::Title (Year)::Genres', got {line!r}")
        item, title, genre = (p.strip() for p in parts)
        _check_unique(item, first_seen, f"{path}:{lineno}")
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
            Windows-1252 / ISO-8859-1, the original release's; a file that mixes UTF-8 text with other bytes is
            refused). An explicit encoding is checked: the lines that do not decode are named.
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
    folder = None
    if images:
        folder = Path(data_dir / image_dir) if image_dir is not None else data_dir / "posters"
    return _dataset(name, users, items, timestamps, item_ids, titles, genres, image_folder=folder,
                    image_pattern=image_pattern, strict_images=strict_images, placeholder_size=placeholder_size,
                    sources={"ratings": str(ratings_path), "items": str(movies_path)})
