"""MicroLens (the 50k release: pairs ``.csv`` or ``.tsv``, titles ``.csv``, a cover folder) into a
:class:`~.recdata.RecData`. Format and policies: ``docs/data.md``.
"""

from __future__ import annotations

from pathlib import Path

from .reading import (
    _check_unique,
    _clean_titles,
    _csv_rows,
    _dataset,
    _default_dir,
    _is_header,
    _read_lines,
    _repeated_header,
    _resolve_unknown_items,
)
from .recdata import DataFormatError, RecData
from .times import Time, parse_times

__all__ = ["load_microlens"]


def _parse_microlens_titles(path: Path) -> tuple[list[str], dict[str, str]]:
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for lineno, row in _csv_rows(path):
        if _is_header(row, ("item", "title")):
            if lineno == 1:
                continue
            raise _repeated_header(f"{path}:{lineno}")
        if not row:
            continue
        if len(row) != 2:
            raise DataFormatError(f"{path}:{lineno}: expected 2 fields 'item,title', got {len(row)}: {row!r}")
        item, title = row[0].strip(), row[1].strip()
        _check_unique(item, first_seen, f"{path}:{lineno}")
        item_ids.append(item)
        titles[item] = title  # MicroLens has a few empty titles; they are kept (the cover still carries content)
    return item_ids, _clean_titles(path.parent.name or "microlens", titles, path)


def _parse_microlens_pairs_csv(path: Path) -> tuple[list[str], list[str], list[Time]]:
    """``user,item,timestamp`` rows; the timestamps are read by the one time parser (:func:`~.times.parse_times`:
    one scale for the column, exact, never truncated)."""
    users: list[str] = []
    items: list[str] = []
    stamps: list[tuple[str, str]] = []
    for lineno, row in _csv_rows(path):
        if _is_header(row, ("user", "item")):
            if lineno == 1:
                continue
            raise _repeated_header(f"{path}:{lineno}")
        if not row:
            continue
        if len(row) != 3:
            raise DataFormatError(f"{path}:{lineno}: expected 3 fields 'user,item,timestamp', got {row!r}")
        user, item, ts = (c.strip() for c in row)
        if not user or not item:
            raise DataFormatError(f"{path}:{lineno}: empty user or item id in {row!r}")
        users.append(user)
        items.append(item)
        stamps.append((f"{path}:{lineno}", ts))
    return users, items, parse_times(stamps, "timestamp")[0]


def _parse_microlens_pairs_tsv(path: Path) -> tuple[list[str], list[str]]:
    """``user<TAB>item item item ...`` per line, items in chronological order (no timestamps)."""
    users: list[str] = []
    items: list[str] = []
    for lineno, line in enumerate(_read_lines(path), 1):
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
    timestamps: list[Time] | None
    if pairs_path.suffix == ".tsv":
        users, items = _parse_microlens_pairs_tsv(pairs_path)
        timestamps = None
    else:
        users, items, timestamps = _parse_microlens_pairs_csv(pairs_path)
    name = data_dir.name or "microlens"
    users, items, timestamps = _resolve_unknown_items(
        name, users, items, timestamps, titles, drop_unknown_items, str(pairs_path)
    )
    folder = None
    if images:
        folder = (data_dir / image_dir if image_dir is not None
                  else _default_dir(data_dir, ("covers", "MicroLens-50k_covers")))
    return _dataset(name, users, items, timestamps, item_ids, titles, {}, image_folder=folder,
                    image_pattern=image_pattern, strict_images=strict_images, placeholder_size=placeholder_size,
                    sources={"interactions": str(pairs_path), "items": str(titles_path)})
