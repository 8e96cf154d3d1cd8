"""What a classical recommender may learn from: :class:`TrainingInteractions` (per sequence, time-ordered items).

Two fits of every baseline, so a report shows the data gap between the baselines and the LLM (``docs/evaluation.md``):

* **full data** (:meth:`TrainingInteractions.from_split`): every interaction of the dataset except, for each
  validation and test example, its target and everything the same user did after it: what a recommender deployed at
  the test moment would have seen of those users (the histories shown in the prompts are included).
* **data-matched** (:meth:`TrainingInteractions.from_examples`): only what the LLM was trained on: one sequence per
  training window, its history items then its target, in order. An item in several (overlapping) windows counts
  once per window, as the LLM read it once per window.

This module imports nothing of the baselines, so :mod:`hanorec_trl.baselines` and :mod:`hanorec_trl.sasrec` both
build on it without importing each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .protocol import RecSplit, SequenceExample
from .recdata import RecData

__all__ = ["FULL_DATA", "DATA_MATCHED", "TrainingInteractions", "example_end"]

FULL_DATA, DATA_MATCHED = "full data", "data-matched"


def example_end(example: SequenceExample) -> int:
    """The target's position in its user's sequence (sequence ids are ``<user>:<target position>``)."""
    try:
        return int(example.sequence_id.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(
            f"sequence_id {example.sequence_id!r} is not '<user>:<target position>' (build the split with "
            "hanorec_trl.data.build_split)"
        ) from None


@dataclass
class TrainingInteractions:
    """Time-ordered items per sequence (a user, or one training window), the item catalogue, and where they came
    from (``source``: ``"full data"``, ``"data-matched"`` or anything a caller names)."""

    sequences: dict[str, list[str]]
    item_ids: list[str]
    source: str = FULL_DATA

    @classmethod
    def from_split(cls, data: RecData, split: RecSplit) -> TrainingInteractions:
        """Every interaction of ``data`` except each validation/test target and what its user did afterwards
        (one sequence per user)."""
        full = data.user_sequences()
        cut: dict[str, int] = {}
        for example in (*split.validation, *split.test):
            end = example_end(example)
            sequence = full.get(example.user)
            if sequence is None or end >= len(sequence) or sequence[end] != example.target:
                raise ValueError(
                    f"example {example.sequence_id}: its target {example.target!r} is not item {end} of user "
                    f"{example.user!r} in {data.name}; the split was built from other data"
                )
            cut[example.user] = min(cut.get(example.user, end), end)
        sequences = {user: list(seq[: cut.get(user, len(seq))]) for user, seq in full.items()}
        return cls(sequences=sequences, item_ids=list(data.item_ids), source=FULL_DATA)

    @classmethod
    def from_examples(cls, examples: Sequence[SequenceExample], item_ids: Sequence[str]) -> TrainingInteractions:
        """Data-matched: one sequence per example (``history + (target,)``, keyed by its ``sequence_id``), i.e. only
        the items the LLM saw in its training windows. Pass the windows SFT trained on (e.g. ``split.train``, or the
        subset a row limit kept) and the catalogue (``data.item_ids``). An item outside ``item_ids`` is an error."""
        if not examples:
            raise ValueError("TrainingInteractions.from_examples: no examples (pass the LLM's training windows)")
        known = set(item_ids)
        sequences: dict[str, list[str]] = {}
        for example in examples:
            if example.sequence_id in sequences:
                raise ValueError(f"TrainingInteractions.from_examples: sequence_id {example.sequence_id!r} occurs "
                                 "twice; each training window once")
            items = [*example.history, example.target]
            unknown = [item for item in items if item not in known]
            if unknown:
                raise ValueError(f"example {example.sequence_id}: items {unknown} are not in the item catalogue")
            sequences[example.sequence_id] = items
        return cls(sequences=sequences, item_ids=list(item_ids), source=DATA_MATCHED)

    def counts(self) -> Counter:
        return Counter(item for seq in self.sequences.values() for item in seq)

    @property
    def num_interactions(self) -> int:
        return sum(len(seq) for seq in self.sequences.values())

    def summary(self) -> dict:
        """``{"source", "sequences", "interactions"}``, for a report beside a baseline's metrics."""
        return {"source": self.source, "sequences": len(self.sequences), "interactions": self.num_interactions}
