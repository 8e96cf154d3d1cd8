"""The paper's evaluation protocol (Sec. 4.1, App. B): sequences, a seeded 8:1:1 split, stored candidates.

* Users with fewer than ``min_interactions`` (6) interactions are dropped.
* A sequence is the ``sequence_length`` (6) most recent interactions: ``sequence_length - 1`` history items, then the
  target. ``sliding_windows=True`` takes every window instead (most recent first, up to ``max_windows_per_user``).
* Sequences are split 8:1:1 (``split_ratios``) by a seeded permutation (``split_by="user"`` keeps all the windows of
  a user in one split). ``split_by="leave_last_out"`` instead tests every kept user on their most recent window,
  validates on the window before it, and trains on the windows before that (:func:`leave_last_out_windows`): no
  training or validation window of a user reaches that user's test target, and no training window reaches the
  validation target.
* Ranking candidates: the target plus ``num_candidates - 1`` (9) items the user never interacted with, sampled
  uniformly from the item table, in a seeded random order that is stored (``target_index``).
* One AUC example per sequence (paper Fig. 6a): the history as watched items, ``auc_num_unwatched`` items the user
  never interacted with, and a target item that is the true target (label 1, "Yes") or another never-interacted item
  (label 0, "No"); exactly half of each split (rounded up) has label 1.

:func:`freeze_split` writes the split as JSONL plus a manifest (dataset fingerprint, seed, settings, counts, file
hashes); :func:`load_split` reads it back and refuses data with another fingerprint; the same data and config give
byte-identical files (:func:`~.recbole.export_recbole` writes the examples as RecBole atomic files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..files import atomic_folder
from .recdata import DataFormatError, RecData

__all__ = [
    "ProtocolConfig",
    "SequenceExample",
    "RecSplit",
    "SplitMismatchError",
    "build_split",
    "freeze_split",
    "leave_last_out_windows",
    "load_split",
]

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_BY = ("sequence", "user", "leave_last_out")
DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)
MANIFEST = "manifest.json"
FORMAT = "hanorec_trl.frozen_split/1"


class SplitMismatchError(ValueError):
    """A frozen split does not belong to the given dataset (fingerprint) or its files were changed."""


@dataclass
class ProtocolConfig:
    """Settings of the recommendation protocol (defaults: the paper's, Sec. 4.1 and App. B)."""

    min_interactions: int = field(default=6, metadata={"help": "Drop users with fewer interactions than this."})
    sequence_length: int = field(
        default=6, metadata={"help": "Items per sequence: sequence_length - 1 history items, then the target."}
    )
    sliding_windows: bool = field(
        default=False,
        metadata={"help": "Every window of sequence_length consecutive items (not only the most recent one)."},
    )
    window_stride: int = field(default=1, metadata={"help": "Step between sliding windows."})
    max_windows_per_user: int | None = field(
        default=None, metadata={"help": "Keep at most this many (most recent) windows per user; None keeps all."}
    )
    evaluation_windows: str = field(
        default="last",
        metadata={"help": "With sliding_windows: 'last' keeps only each user's most recent window in the validation "
                  "and test parts (one evaluation row per user, as without sliding windows); 'all' keeps every "
                  "window there too."},
    )
    split_ratios: list[float] = field(
        default_factory=lambda: list(DEFAULT_SPLIT_RATIOS),
        metadata={"help": "Train/validation/test fractions of the sequences (or users)."},
    )
    split_by: str = field(
        default="sequence",
        metadata={"help": "'sequence' (paper, 8:1:1 of the sequences), 'user' (8:1:1 of the users: all windows of a "
                  "user in one part) or 'leave_last_out' (every user tested on their most recent window, validated "
                  "on the one before, trained on the earlier ones; split_ratios does not apply)."},
    )
    num_candidates: int = field(
        default=10, metadata={"help": "Ranking candidates per sequence: the target + num_candidates - 1 negatives."}
    )
    auc_num_unwatched: int = field(
        default=3, metadata={"help": "Never-interacted items listed as 'not watched' in the AUC prompt (Fig. 6a)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split, the candidates and the AUC labels."})

    def __post_init__(self) -> None:
        self.split_ratios = tuple(float(r) for r in self.split_ratios)
        if self.sequence_length < 2:
            raise ValueError("sequence_length must be at least 2 (one history item and the target)")
        if self.min_interactions < self.sequence_length:
            raise ValueError(
                f"min_interactions ({self.min_interactions}) must be at least sequence_length ({self.sequence_length})"
            )
        if len(self.split_ratios) != 3 or min(self.split_ratios) < 0 or not math.isclose(sum(self.split_ratios), 1.0):
            raise ValueError(f"split_ratios must be three non-negative fractions summing to 1, got {self.split_ratios}")
        if self.evaluation_windows not in ("last", "all"):
            raise ValueError(f"evaluation_windows must be 'last' or 'all', got {self.evaluation_windows!r}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        if self.split_by == "leave_last_out":
            if self.split_ratios != DEFAULT_SPLIT_RATIOS:
                raise ValueError(
                    f"split_ratios={self.split_ratios} does not apply to split_by='leave_last_out' (every user has "
                    "one test window, one validation window and the rest in training); leave it at its default"
                )
            if self.evaluation_windows != "last":
                raise ValueError(
                    "evaluation_windows='all' does not apply to split_by='leave_last_out': it evaluates exactly one "
                    "window per user (the most recent for test, the one before it for validation)"
                )
        if self.num_candidates < 2:
            raise ValueError("num_candidates must be at least 2 (the target and one negative)")
        if self.auc_num_unwatched < 0 or self.window_stride < 1:
            raise ValueError("auc_num_unwatched must be >= 0 and window_stride >= 1")
        if self.max_windows_per_user is not None and self.max_windows_per_user < 1:
            raise ValueError("max_windows_per_user must be None or at least 1")


@dataclass(frozen=True)
class SequenceExample:
    """One evaluation unit: a ranking example and an AUC example built on the same history.

    ``candidates`` contains ``target`` exactly once, at ``target_index``; no candidate, no ``auc_unwatched`` item
    and no label-0 ``auc_item`` was ever interacted with by the user.
    """

    sequence_id: str
    user: str
    history: tuple[str, ...]
    target: str
    candidates: tuple[str, ...]
    target_index: int
    auc_unwatched: tuple[str, ...]
    auc_item: str
    auc_label: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> SequenceExample:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in row]
        if missing:
            raise KeyError(f"missing fields {missing}")
        values = {n: tuple(row[n]) if isinstance(row[n], list) else row[n] for n in names}
        return cls(**values)


@dataclass
class RecSplit:
    """A split of a dataset: the examples of each part plus what produced them."""

    train: list[SequenceExample]
    validation: list[SequenceExample]
    test: list[SequenceExample]
    config: ProtocolConfig
    dataset_name: str
    fingerprint: str
    stats: dict[str, int] = field(default_factory=dict)

    def parts(self) -> Iterator[tuple[str, list[SequenceExample]]]:
        yield from zip(SPLIT_NAMES, (self.train, self.validation, self.test))

    def counts(self) -> dict[str, int]:
        return {name: len(examples) for name, examples in self.parts()}


# ------------------------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------------------------


def _windows(sequence: list[str], cfg: ProtocolConfig) -> list[int]:
    """End positions (target index) of the windows taken from one user's sequence, oldest first."""
    last = len(sequence) - 1
    if not cfg.sliding_windows:
        return [last]
    ends = list(range(last, cfg.sequence_length - 2, -cfg.window_stride))
    if cfg.max_windows_per_user is not None:
        ends = ends[: cfg.max_windows_per_user]
    return sorted(ends)


def leave_last_out_windows(sequence_length: int, cfg: ProtocolConfig) -> list[tuple[int, int]]:
    """``(end, part)`` of the windows of one user's ``sequence_length``-item sequence under leave-last-out, oldest
    first (``end`` = the target's position; ``part`` 0 = train, 1 = validation, 2 = test).

    The test window ends at the last item (``n - 1``), the validation window at ``n - 2``, the training windows at
    ``n - 3`` and earlier (every ``window_stride``-th end with ``sliding_windows``, at most ``max_windows_per_user``
    of them, most recent first; otherwise only ``n - 3``). A window needs ``cfg.sequence_length`` items, so a user
    with fewer than ``sequence_length + 2`` items has no training window (and no validation window below
    ``sequence_length + 1``). Every training and validation window ends before the test target's position, and every
    training window before the validation target's.
    """
    last, first_end = sequence_length - 1, cfg.sequence_length - 1
    windows = [(end, part) for end, part in ((last, 2), (last - 1, 1)) if end >= first_end]
    train_ends = list(range(last - 2, first_end - 1, -cfg.window_stride)) if cfg.sliding_windows else [last - 2]
    train_ends = [end for end in train_ends if end >= first_end]
    if cfg.max_windows_per_user is not None:
        train_ends = train_ends[: cfg.max_windows_per_user]
    return sorted(windows + [(end, 0) for end in train_ends])


def _sample_unseen(rng: np.random.Generator, pool: np.ndarray, exclude: frozenset[str], count: int) -> list[str]:
    """``count`` distinct items of ``pool`` that are not in ``exclude``, uniformly (rejection sampling; the caller
    checks that enough exist)."""
    chosen: list[str] = []
    taken: set[str] = set()
    for _ in range(100):
        for k in rng.integers(0, len(pool), size=2 * count + 8).tolist():
            item = pool[k]
            if item not in exclude and item not in taken:
                taken.add(item)
                chosen.append(item)
                if len(chosen) == count:
                    return chosen
    # a user who interacted with nearly the whole catalogue: draw from the explicit remainder
    remainder = [item for item in pool.tolist() if item not in exclude and item not in taken]
    return chosen + [remainder[k] for k in rng.choice(len(remainder), size=count - len(chosen), replace=False)]


def _split_sizes(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    validation = int(math.floor(n * ratios[1]))
    test = int(math.floor(n * ratios[2]))
    return n - validation - test, validation, test


def build_split(data: RecData, config: ProtocolConfig | None = None) -> RecSplit:
    """Build sequences, split them, and sample candidates and AUC examples (all seeded by ``config.seed``)."""
    cfg = config or ProtocolConfig()
    negatives_needed = (cfg.num_candidates - 1) + cfg.auc_num_unwatched + 1
    pool = np.array(data.item_ids, dtype=object)
    split_rng, candidate_rng, auc_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))

    sequences = data.user_sequences()
    kept_users = [u for u, seq in sequences.items() if len(seq) >= cfg.min_interactions]
    raw: list[tuple[str, str, list[str], str]] = []  # (sequence id, user, history, target)
    fixed_parts: list[int] = []  # leave-last-out: the part of each window
    for user in kept_users:
        seq = sequences[user]
        if cfg.split_by == "leave_last_out":
            ends_and_parts = leave_last_out_windows(len(seq), cfg)
        else:
            ends_and_parts = [(end, -1) for end in _windows(seq, cfg)]
        for end, part in ends_and_parts:
            start = end - cfg.sequence_length + 1
            raw.append((f"{user}:{end}", user, seq[start:end], seq[end]))
            fixed_parts.append(part)
    if not raw:
        raise ValueError(
            f"{data.name}: no user has at least {cfg.min_interactions} interactions; nothing to build a split from"
        )

    # split: by position in the user's sequence (leave-last-out), or a seeded permutation of the sequences / users
    if cfg.split_by == "leave_last_out":
        assignment = fixed_parts
    elif cfg.split_by == "user":
        user_order = [kept_users[k] for k in split_rng.permutation(len(kept_users))]
        sizes = _split_sizes(len(user_order), cfg.split_ratios)
        part_of_user: dict[str, int] = {}
        bounds = np.cumsum(sizes)
        for rank, user in enumerate(user_order):
            part_of_user[user] = int(np.searchsorted(bounds, rank, side="right"))
        assignment = [part_of_user[user] for _, user, _, _ in raw]
    else:
        order = split_rng.permutation(len(raw))
        sizes = _split_sizes(len(raw), cfg.split_ratios)
        bounds = np.cumsum(sizes)
        assignment = [0] * len(raw)
        for rank, k in enumerate(order.tolist()):
            assignment[k] = int(np.searchsorted(bounds, rank, side="right"))

    # candidates, AUC examples (sequences in user order; labels balanced within each part)
    parts: list[list[int]] = [[], [], []]
    latest: dict[tuple[int, str], int] = {}  # (part, user) -> the user's most recent window in that part
    for k, part in enumerate(assignment):
        key = (part, raw[k][1])
        if part == 0 or cfg.evaluation_windows == "all" or not cfg.sliding_windows:
            parts[part].append(k)
        elif key not in latest or int(raw[k][0].rsplit(":", 1)[1]) > int(raw[latest[key]][0].rsplit(":", 1)[1]):
            latest[key] = k
    for (part, _), k in sorted(latest.items(), key=lambda entry: entry[1]):
        parts[part].append(k)
    for members in parts:
        members.sort()
    kept = {k for members in parts for k in members}
    labels = [0] * len(raw)
    for members in parts:
        ones = (len(members) + 1) // 2
        flags = np.zeros(len(members), dtype=np.int64)
        flags[:ones] = 1
        for k, flag in zip(members, auc_rng.permutation(flags).tolist()):
            labels[k] = flag

    examples: dict[int, SequenceExample] = {}
    for k, (sequence_id, user, history, target) in enumerate(
        tqdm(raw, desc="sampling candidates", disable=len(raw) < 20_000, leave=False)
    ):
        if k not in kept:
            continue
        seen = data.interacted(user)
        if len(pool) - len(seen) < negatives_needed:
            raise ValueError(
                f"{data.name}: user {user!r} interacted with {len(seen)} of {len(pool)} items; the protocol needs "
                f"{negatives_needed} items they never interacted with (lower num_candidates or auc_num_unwatched)"
            )
        negatives = _sample_unseen(candidate_rng, pool, seen, cfg.num_candidates - 1)
        target_index = int(candidate_rng.integers(cfg.num_candidates))
        candidates = negatives[:target_index] + [target] + negatives[target_index:]
        extra = _sample_unseen(auc_rng, pool, seen, cfg.auc_num_unwatched + 1)
        unwatched, decoy = extra[:-1], extra[-1]
        label = labels[k]
        examples[k] = (
            SequenceExample(
                sequence_id=sequence_id,
                user=user,
                history=tuple(history),
                target=target,
                candidates=tuple(candidates),
                target_index=target_index,
                auc_unwatched=tuple(unwatched),
                auc_item=target if label == 1 else decoy,
                auc_label=label,
            )
        )
    split_parts = [[examples[k] for k in members] for members in parts]
    stats = {
        "num_users_total": len(sequences),
        "num_users_kept": len(kept_users),
        "num_users_dropped": len(sequences) - len(kept_users),
        "num_sequences": len(examples),
        "num_windows": len(raw),
    }
    return RecSplit(
        train=split_parts[0],
        validation=split_parts[1],
        test=split_parts[2],
        config=cfg,
        dataset_name=data.name,
        fingerprint=data.fingerprint(),
        stats=stats,
    )


# ------------------------------------------------------------------------------------------------------------------
# Freezing and loading
# ------------------------------------------------------------------------------------------------------------------


def check_output_folder(out_dir: Path, overwrite: bool, marker: str) -> None:
    """Refuses an ``out_dir`` that may not be (re)placed: not a folder, or not empty without ``overwrite``, or not
    written by this module (no ``marker`` file)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
            if not (out_dir / marker).is_file():
                raise FileExistsError(
                    f"{out_dir} has no {marker}: it was not written by hanorec_trl; refusing to replace it"
                )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def freeze_split(split: RecSplit, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` (one :class:`SequenceExample` per line) and
    ``manifest.json`` into a new folder ``out_dir``.

    The folder must not exist or be empty; ``overwrite=True`` replaces a folder written by this function (one with a
    manifest) and refuses any other. Files are written to a temporary folder first and moved into place at the end.
    """
    out = Path(out_dir)
    check_output_folder(out, overwrite, MANIFEST)
    with atomic_folder(out, replace=True) as tmp:
        files = {}
        for name, examples in split.parts():
            path = tmp / f"{name}.jsonl"
            with open(path, "w", encoding="ascii", newline="\n") as f:
                for example in examples:
                    f.write(example.to_json() + "\n")
            files[name] = {"file": path.name, "sha256": _sha256(path), "count": len(examples)}
        manifest = {
            "format": FORMAT,
            "dataset": {"name": split.dataset_name, "fingerprint": split.fingerprint},
            "seed": split.config.seed,
            "protocol": asdict(split.config),
            "counts": split.counts(),
            "stats": split.stats,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def load_split(directory: str | Path, data: RecData | None = None) -> RecSplit:
    """Read a folder written by :func:`freeze_split`.

    With ``data``, refuses (:class:`SplitMismatchError`) a split whose dataset fingerprint differs from
    ``data.fingerprint()`` and checks that every item id is in ``data``'s item table. The JSONL files are checked
    against the hashes in the manifest.
    """
    folder = Path(directory)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not a frozen split: {MANIFEST} is missing")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise SplitMismatchError(f"{manifest_path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    fingerprint = manifest["dataset"]["fingerprint"]
    if data is not None and data.fingerprint() != fingerprint:
        raise SplitMismatchError(
            f"{folder} was frozen from dataset {manifest['dataset']['name']!r} with fingerprint {fingerprint[:16]}..., "
            f"but the given data {data.name!r} has fingerprint {data.fingerprint()[:16]}...: the interactions or the "
            "item table differ (other files, filters or loader options)"
        )
    protocol = dict(manifest["protocol"])
    protocol["split_ratios"] = tuple(protocol["split_ratios"])
    config = ProtocolConfig(**protocol)
    parts = {}
    for name in SPLIT_NAMES:
        entry = manifest["files"][name]
        path = folder / entry["file"]
        if _sha256(path) != entry["sha256"]:
            raise SplitMismatchError(f"{path} was modified after freezing (its SHA-256 differs from the manifest)")
        examples = []
        with open(path, encoding="ascii") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    examples.append(SequenceExample.from_dict(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise DataFormatError(f"{path}:{lineno}: not a sequence example ({err})") from err
        parts[name] = examples
    if data is not None:
        known = data.titles
        for name, examples in parts.items():
            for ex in examples:
                for item in (*ex.history, ex.target, *ex.candidates, *ex.auc_unwatched, ex.auc_item):
                    if item not in known:
                        raise SplitMismatchError(f"{folder}/{name}.jsonl: {ex.sequence_id}: unknown item id {item!r}")
    return RecSplit(
        train=parts["train"],
        validation=parts["validation"],
        test=parts["test"],
        config=config,
        dataset_name=manifest["dataset"]["name"],
        fingerprint=fingerprint,
        stats=manifest.get("stats", {}),
    )
