"""Datasets in LLMRec's release format (its Netflix and MovieLens data: ``train_mat`` or JSON interactions,
``item_attribute.csv``, a poster folder) into a :class:`~.recdata.RecData`. Format and policies: ``docs/data.md``.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .reading import (
    _check_unique,
    _clean_titles,
    _csv_rows,
    _dataset,
    _default_dir,
    _read_text,
    _repeated_header,
    _resolve_unknown_items,
    _scalar_text,
)
from .recdata import DataFormatError, RecData

__all__ = ["load_netflix_llmrec"]

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
    text = _read_text(path)
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: cannot read the JSON interaction file ({err.msg})") from None
    if not isinstance(mapping, dict):
        raise DataFormatError(f"{path}: expected a JSON object {{user: [items]}}, got {type(mapping).__name__}")
    users: list[str] = []
    items: list[str] = []
    for user, user_items in mapping.items():
        if not isinstance(user_items, list):
            raise DataFormatError(f"{path}: user {user!r}: expected a list of item ids, got {user_items!r}")
        for item in user_items:
            users.append(user)
            items.append(_scalar_text(item, f"{path}", f"an item of user {user!r}"))
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
    header = None
    if rows and rows[0][1] and rows[0][1][0].strip().lower() in ("id", "item", "item_id", "movieid"):
        header, rows = rows[0][1], rows[1:]
    for lineno, row in rows:
        if row == header:
            raise _repeated_header(f"{path}:{lineno}")
    if layout is None:
        layout = _detect_attribute_layout(path, rows)
    layout = tuple(layout)
    if layout not in _ATTRIBUTE_LAYOUTS:
        raise ValueError(f"attribute_columns must be one of {sorted(_ATTRIBUTE_LAYOUTS)}, got {layout}")
    item_ids: list[str] = []
    titles: dict[str, str] = {}
    genres: dict[str, tuple[str, ...]] = {}
    first_seen: dict[str, str] = {}
    for lineno, row in rows:
        if not row:
            continue
        if len(row) < len(layout):
            raise DataFormatError(f"{path}:{lineno}: expected {len(layout)} fields {','.join(layout)}, got {row!r}")
        item = row[0].strip()
        _check_unique(item, first_seen, f"{path}:{lineno}")
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
    folder = None
    if images:
        folder = (data_dir / image_dir if image_dir is not None
                  else _default_dir(data_dir, ("posters", "Netflix_Posters")))
    return _dataset(name, users, items, None, item_ids, titles, genres, image_folder=folder,
                    image_pattern=image_pattern, strict_images=strict_images, placeholder_size=placeholder_size,
                    sources=sources | {"item_layout": ",".join(layout)})
