"""Load a dataset by its name: one entry point over the loaders of ``docs/data.md`` (what the data stage reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .custom import load_interactions
from .microlens import load_microlens
from .movielens import load_movielens_1m
from .netflix import load_netflix_llmrec
from .recdata import RecData

LOADERS = {"movielens": load_movielens_1m, "microlens": load_microlens, "netflix": load_netflix_llmrec}
DATASETS = (*LOADERS, "custom")


def load_dataset(name: str, location: str | Path, *, images: bool = True, tables: dict[str, Any] | None = None,
                 max_users: int | None = None, seed: int = 0) -> RecData:
    """The dataset ``name`` (:data:`DATASETS`) from the folder ``location``; ``"custom"`` reads ``tables``, the
    keyword arguments of :func:`load_interactions` (relative table and image paths are read from ``location``).
    ``images=False`` loads titles only; ``max_users`` keeps a seeded sample of users. Errors name file and line."""
    location = Path(location)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "custom":
        tables = dict(tables or {})
        if not tables.get("interactions"):
            raise ValueError("dataset custom needs tables: {interactions: ..., items: ..., ...} (docs/data.md)")
        for key in ("interactions", "items", "image_dir"):
            if isinstance(tables.get(key), str):
                tables[key] = location / tables[key]
        if not images:
            tables["image_dir"] = None
        try:
            data = load_interactions(images=images, **tables)
        except TypeError as err:  # a key that is not a keyword of load_interactions
            raise TypeError(f"tables: {err}") from None
    else:
        data = LOADERS[name](location, images=images)
    return data.subsample_users(max_users, seed) if max_users else data


__all__ = ["DATASETS", "LOADERS", "load_dataset"]
