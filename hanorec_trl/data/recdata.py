"""The in-memory form every dataset loader returns (:class:`RecData`) and the errors the data layer raises.

Every loader returns a :class:`RecData`: the interactions (user, item, timestamp; parallel lists in file order), an
item table (ordered ids, titles, optional genres) and one image file per item (poster or cover), or none. Item and
user ids are strings everywhere; ``item_rows`` maps item ids to rows of embedding tables built over ``item_ids``.

Image policy (see ``docs/data.md``): a missing image (no file) gives a grey placeholder and ONE
:class:`MissingImageWarning` per dataset with the count and the first ids; ``strict_images=True`` makes it an error.
An unreadable file (bad header, or pixel data cut short: a truncated download) is found when it is first decoded
(:meth:`RecData.verify_images`, which the dataset builders call before any image reaches ``datasets``, and
:meth:`RecData.image`) and handled the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "DataFormatError",
    "UnknownItemError",
    "MissingImageWarning",
    "ControlCharacterWarning",
    "PLACEHOLDER_COLOR",
    "RecData",
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

    ``users[k]``, ``items[k]`` and ``timestamps[k]`` describe interaction ``k`` (file order); a timestamp is exact, in
    its column's unit: an ``int``, or a ``Decimal`` when it has a fraction (:mod:`.times`). Treat an instance as
    read-only: the fingerprint and the per-user sequences are computed once and cached.
    """

    name: str
    users: list[str]
    items: list[str]
    timestamps: list[int | Decimal] | None
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

    # ----------------------------------------------------------------------------------------------- in a file
    def subsample_users(self, num_users: int, seed: int) -> RecData:
        """This dataset restricted to a seeded random sample of ``num_users`` users (all their interactions)."""
        import numpy as np

        users = list(self.user_sequences())
        if num_users >= len(users):
            return self
        kept = {users[k] for k in np.random.default_rng(seed).choice(len(users), size=num_users, replace=False)}
        rows = [k for k, user in enumerate(self.users) if user in kept]
        return dataclasses.replace(
            self, users=[self.users[k] for k in rows], items=[self.items[k] for k in rows],
            timestamps=None if self.timestamps is None else [self.timestamps[k] for k in rows],
            sources={**self.sources, "subsample": f"{num_users} of {len(users)} users, seed {seed}"})

    def save(self, path: str | Path) -> None:
        """Everything but the image files themselves into one JSON file (:meth:`load` reads it back exactly:
        fractional timestamps as decimal strings, image paths absolute)."""
        from ..files import atomic_file

        exact = self.timestamps is not None and any(isinstance(t, Decimal) for t in self.timestamps)
        paths = None if self.image_paths is None else {k: None if v is None else str(Path(v).resolve())
                                                        for k, v in self.image_paths.items()}
        payload = {"name": self.name, "users": self.users, "items": self.items, "item_ids": self.item_ids,
                   "timestamps": [str(t) for t in self.timestamps] if exact else self.timestamps,
                   "decimal_timestamps": exact, "titles": self.titles,
                   "genres": {k: list(v) for k, v in self.genres.items()}, "image_paths": paths,
                   "strict_images": self.strict_images, "placeholder_size": list(self.placeholder_size),
                   "sources": self.sources}
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(payload), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> RecData:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        if saved.pop("decimal_timestamps"):
            saved["timestamps"] = [Decimal(t) for t in saved["timestamps"]]
        saved["genres"] = {k: tuple(v) for k, v in saved["genres"].items()}
        if saved["image_paths"] is not None:
            saved["image_paths"] = {k: None if v is None else Path(v) for k, v in saved["image_paths"].items()}
        saved["placeholder_size"] = tuple(saved["placeholder_size"])
        return cls(**saved)

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

