"""Full-catalogue ranking with item tokens: every item token's log-prob after a prompt, in one prompt forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .vocabulary import ItemVocabulary

__all__ = ["catalogue_log_probs"]


def catalogue_log_probs(
    model,
    processing_class,
    prompts: Sequence[Any],
    vocabulary: ItemVocabulary,
    images: Sequence[Sequence | None] | None = None,
    *,
    batch_size: int = 4,
    progress: bool = True,
) -> np.ndarray:
    """``(rows, n_items)``: ``log p(<item_j> | prompt)`` for every item ``j`` of ``vocabulary`` (catalogue order),
    where the item token is the first completion token TRL would score (the prompt is split from the completion
    exactly as for :func:`~hanorec_trl.evaluation.scoring.score_candidates`). Rank a row by sorting it; leave out
    the history items yourself if the protocol does."""
    from ..evaluation.scoring import next_token_log_probs, tokenize_rows

    token_ids = vocabulary.require_token_ids()
    probe = [[vocabulary.tokens[vocabulary.item_ids[0]]]] * len(prompts)
    items = tokenize_rows(processing_class, prompts, probe, images)
    for row, item in enumerate(items):
        if item.completion_ids[0][0] != token_ids[0]:
            raise ValueError(f"row {row}: an item-token answer does not start with the item token (its first "
                             f"completion token is {item.completion_ids[0][0]}, not {token_ids[0]})")
    scores = next_token_log_probs(model, processing_class, items, [token_ids] * len(items), batch_size=batch_size,
                                  progress=progress, desc="ranking the catalogue")
    return np.stack(scores) if scores else np.zeros((0, len(token_ids)))
