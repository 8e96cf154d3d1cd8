"""Helpers for the data-layer tests: small dataset folders written on the fly."""

from __future__ import annotations

from pathlib import Path

from conftest import solid_image
from PIL import Image


def write_movielens(
    folder: Path,
    ratings: list[str],
    movies: list[str],
    posters: dict[str, Image.Image] | None = None,
    ratings_name: str = "ratings.dat",
) -> Path:
    """A MovieLens-format folder from raw lines (ISO-8859-1), with optional posters ``posters/<id>.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ratings_name).write_bytes("".join(line + "\n" for line in ratings).encode("latin-1"))
    (folder / "movies.dat").write_bytes("".join(line + "\n" for line in movies).encode("latin-1"))
    if posters:
        (folder / "posters").mkdir(exist_ok=True)
        for item_id, image in posters.items():
            image.save(folder / "posters" / f"{item_id}.jpg")
    return folder


def small_movielens(folder: Path, num_items: int = 4, poster_ids: tuple[str, ...] = ("1", "2", "3", "4")) -> Path:
    """Two users, ``num_items`` movies; posters for ``poster_ids`` only."""
    movies = [f"{i}::Movie {i} (199{i % 10})::Drama" for i in range(1, num_items + 1)]
    ratings = [f"1::{i}::4::{1000 + i}" for i in range(1, num_items + 1)]
    ratings += [f"2::{i}::3::{2000 - i}" for i in range(1, num_items + 1)]
    posters = {i: solid_image(int(i)) for i in poster_ids}
    return write_movielens(folder, ratings, movies, posters)
