"""TRL-ready datasets from a split: SFT (prompt-completion), DPO (preference pairs) and evaluation rows.

All rows are TRL *conversational*: ``prompt`` is a list of chat messages built by :mod:`.prompts` (paper Fig. 6).
With ``with_images=True`` (vision-language models) every listed item contributes one ``{"type": "image"}`` part and
one entry of the ``images`` column, in order; with ``with_images=False`` (text LLMs) the prompt lists titles only and
there is no ``images`` column.

The ``images`` column has the ``datasets`` feature ``List(Image())``: an item's file is stored as its path (nothing
is decoded while building; ``datasets`` opens the file when a row is read), a missing or unreadable image as the
bytes of the grey placeholder (see :mod:`.loaders`).

Rows per builder (``sequence_id`` and ``user`` identify the source example everywhere):

* :func:`build_sft_dataset` -- ``prompt``, ``completion`` (ranking: the target's title as
  ``PromptTemplates.answer_text``; AUC: "Yes"/"No", balanced by the split), ``task``.
* :func:`build_dpo_dataset` -- ``prompt``, ``chosen``, ``rejected``, ``chosen_item``, ``rejected_item``, ``task``.
  Ranking (paper App. C.2): chosen = the target's title, rejected = a non-target candidate's title, one row per pair,
  ``num_rejected`` pairs per example (the first non-target candidates in the stored, shuffled candidate order).
  AUC: chosen = the right answer, rejected = the opposite answer; the item pair used for hardness is (target, first
  unwatched item) for a "Yes" example and (most recent history item, target) for a "No" example: in both cases the
  item the user prefers, then the one they do not.
* :func:`build_ranking_eval_dataset` -- ``prompt``, ``candidates`` (completion texts in candidate order),
  ``candidate_items``, ``target_index``.
* :func:`build_auc_eval_dataset` -- ``prompt``, ``label`` (1 = "Yes"), ``item`` (the target item).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

from datasets import Dataset
from datasets import Image as ImageFeature
from datasets import List as ListFeature
from tqdm.auto import tqdm

from .loaders import RecData
from .prompts import DEFAULT_TEMPLATES, NO, YES, PromptTemplates, assistant_message, auc_prompt, ranking_prompt
from .protocol import SequenceExample

__all__ = [
    "build_sft_dataset",
    "build_dpo_dataset",
    "build_ranking_eval_dataset",
    "build_auc_eval_dataset",
]

TASKS = ("ranking", "auc", "both")
_PROGRESS_FROM = 5_000  # show a progress bar from this many examples


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _check_images(data: RecData, with_images: bool) -> None:
    if with_images and not data.has_images:
        raise ValueError(
            f"{data.name} was loaded with images=False; pass with_images=False (text LLM) or load it with images"
        )


def _ranking_messages(
    ex: SequenceExample, data: RecData, with_images: bool, templates: PromptTemplates
) -> tuple[list[dict], list[str]]:
    """The ranking prompt (Fig. 6b) and the ids of the items whose images it shows, in order."""
    messages, image_ids = ranking_prompt(
        [data.title(i) for i in ex.history],
        [data.title(i) for i in ex.candidates],
        list(ex.history) if with_images else None,
        list(ex.candidates) if with_images else None,
        templates=templates,
    )
    return messages, image_ids or []


def _auc_messages(
    ex: SequenceExample, data: RecData, with_images: bool, templates: PromptTemplates
) -> tuple[list[dict], list[str]]:
    """The yes/no prompt (Fig. 6a) and the ids of the items whose images it shows, in order."""
    messages, image_ids = auc_prompt(
        [data.title(i) for i in ex.history],
        [data.title(i) for i in ex.auc_unwatched],
        data.title(ex.auc_item),
        list(ex.history) if with_images else None,
        list(ex.auc_unwatched) if with_images else None,
        ex.auc_item if with_images else None,
        templates=templates,
    )
    return messages, image_ids or []


def _auc_answer(label: int) -> tuple[str, str]:
    """(right answer, opposite answer) for an AUC label."""
    return (YES, NO) if label == 1 else (NO, YES)


def _auc_item_pair(ex: SequenceExample) -> tuple[str, str]:
    """(preferred item, other item) of an AUC example, for the hardness of its DPO pair (see the module doc)."""
    if ex.auc_label == 1:
        other = ex.auc_unwatched[0] if ex.auc_unwatched else next(c for c in ex.candidates if c != ex.target)
        return ex.auc_item, other
    return ex.history[-1], ex.auc_item


class _ImageColumn:
    """Turns item ids into ``datasets`` image values: a file path, or the placeholder's PNG bytes."""

    def __init__(self, data: RecData, item_ids: set[str]):
        self.data = data
        data.verify_images(sorted(item_ids))  # header check; unreadable files fall back to the placeholder
        buffer = io.BytesIO()
        data.placeholder_image().save(buffer, format="PNG")
        self.placeholder = {"path": None, "bytes": buffer.getvalue()}
        self.cache: dict[str, dict] = {}

    def __call__(self, item_id: str) -> dict:
        value = self.cache.get(item_id)
        if value is None:
            path = self.data.image_path(item_id)
            value = self.placeholder if path is None else {"path": str(path.resolve()), "bytes": None}
            self.cache[item_id] = value
        return value


def _dataset(rows: list[dict[str, Any]], image_ids: list[list[str]], data: RecData, with_images: bool) -> Dataset:
    dataset = Dataset.from_list(rows)
    if with_images:
        column = _ImageColumn(data, {i for ids in image_ids for i in ids})
        values = [[column(i) for i in ids] for ids in image_ids]
        dataset = dataset.add_column("images", values, feature=ListFeature(ImageFeature()))
    return dataset


def _build(
    examples: Sequence[SequenceExample],
    data: RecData,
    task: str,
    with_images: bool,
    make_rows: Callable[[SequenceExample, str], list[tuple[dict[str, Any], list[str]]]],
    desc: str,
) -> Dataset:
    _check_task(task)
    _check_images(data, with_images)
    if not examples:
        raise ValueError(f"{desc}: no examples")
    tasks = ("ranking", "auc") if task == "both" else (task,)
    rows: list[dict[str, Any]] = []
    image_ids: list[list[str]] = []
    for ex in tqdm(examples, desc=desc, disable=len(examples) < _PROGRESS_FROM, leave=False):
        for t in tasks:
            for row, ids in make_rows(ex, t):
                rows.append({"sequence_id": ex.sequence_id, "user": ex.user, "task": t, **row})
                image_ids.append(ids)
    return _dataset(rows, image_ids, data, with_images)


def build_sft_dataset(
    examples: Sequence[SequenceExample],
    data: RecData,
    *,
    task: str = "ranking",
    with_images: bool = True,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> Dataset:
    """SFT rows (prompt-completion, paper App. C.1) for ``task`` "ranking", "auc" or "both" (ranking row, then AUC
    row, per example)."""

    def rows(ex: SequenceExample, t: str):
        if t == "ranking":
            messages, ids = _ranking_messages(ex, data, with_images, templates)
            answer = templates.answer_text(data.title(ex.target))
        else:
            messages, ids = _auc_messages(ex, data, with_images, templates)
            answer = _auc_answer(ex.auc_label)[0]
        return [({"prompt": messages, "completion": assistant_message(answer, with_images)}, ids)]

    return _build(examples, data, task, with_images, rows, "SFT rows")


def build_dpo_dataset(
    examples: Sequence[SequenceExample],
    data: RecData,
    *,
    task: str = "ranking",
    num_rejected: int = 1,
    with_images: bool = True,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> Dataset:
    """DPO rows (paper App. C.2) with ``chosen_item`` / ``rejected_item`` ids for the hardness weight.

    Ranking examples give ``num_rejected`` rows each (one per rejected candidate); AUC examples one row each.
    """
    if num_rejected < 1:
        raise ValueError(f"num_rejected must be at least 1, got {num_rejected}")

    def rows(ex: SequenceExample, t: str):
        if t == "ranking":
            negatives = [c for c in ex.candidates if c != ex.target]
            if num_rejected > len(negatives):
                raise ValueError(
                    f"num_rejected={num_rejected} but example {ex.sequence_id} has only {len(negatives)} "
                    "non-target candidates"
                )
            messages, ids = _ranking_messages(ex, data, with_images, templates)
            chosen = assistant_message(templates.answer_text(data.title(ex.target)), with_images)
            return [
                (
                    {
                        "prompt": messages,
                        "chosen": chosen,
                        "rejected": assistant_message(templates.answer_text(data.title(neg)), with_images),
                        "chosen_item": ex.target,
                        "rejected_item": neg,
                    },
                    ids,
                )
                for neg in negatives[:num_rejected]
            ]
        messages, ids = _auc_messages(ex, data, with_images, templates)
        right, wrong = _auc_answer(ex.auc_label)
        preferred, other = _auc_item_pair(ex)
        row = {
            "prompt": messages,
            "chosen": assistant_message(right, with_images),
            "rejected": assistant_message(wrong, with_images),
            "chosen_item": preferred,
            "rejected_item": other,
        }
        return [(row, ids)]

    return _build(examples, data, task, with_images, rows, "DPO rows")


def build_ranking_eval_dataset(
    examples: Sequence[SequenceExample],
    data: RecData,
    *,
    with_images: bool = True,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> Dataset:
    """Ranking evaluation rows: the prompt, every candidate's completion text, the candidates' ids, the target's
    position. Score a model by the log-likelihood of each candidate text given the prompt (HR@K, NDCG@K)."""

    def rows(ex: SequenceExample, t: str):
        messages, ids = _ranking_messages(ex, data, with_images, templates)
        row = {
            "prompt": messages,
            "candidates": [templates.answer_text(data.title(c)) for c in ex.candidates],
            "candidate_items": list(ex.candidates),
            "target_index": ex.target_index,
        }
        return [(row, ids)]

    return _build(examples, data, "ranking", with_images, rows, "ranking eval rows")


def build_auc_eval_dataset(
    examples: Sequence[SequenceExample],
    data: RecData,
    *,
    with_images: bool = True,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> Dataset:
    """AUC evaluation rows: the yes/no prompt, ``label`` (1 = "Yes") and ``item`` (the target item's id)."""

    def rows(ex: SequenceExample, t: str):
        messages, ids = _auc_messages(ex, data, with_images, templates)
        return [({"prompt": messages, "label": ex.auc_label, "item": ex.auc_item}, ids)]

    return _build(examples, data, "auc", with_images, rows, "AUC eval rows")
