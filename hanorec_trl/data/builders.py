"""TRL-ready datasets from a split: SFT (prompt-completion), DPO (preference pairs) and evaluation rows.

All rows are TRL *conversational*: ``prompt`` is a list of chat messages built by :mod:`.prompts` (paper Fig. 6).
With ``with_images=True`` (vision-language models) every listed item contributes one ``{"type": "image"}`` part and
one entry of the ``images`` column, in order; with ``with_images=False`` (text LLMs) the prompt lists titles only and
there is no ``images`` column.

The ``images`` column has the ``datasets`` feature ``List(Image())``: an item's file is stored as its path (nothing
is decoded while building; ``datasets`` opens the file when a row is read), a missing or unreadable image as the
bytes of the grey placeholder (see :mod:`.recdata`).

Rows per builder (``sequence_id`` and ``user`` identify the source example everywhere):

Tasks (``task=``): ``"ranking"`` (the Fig. 6b prompt listing the candidates), ``"next_item"`` (the history alone;
:func:`~.prompts.next_item_prompt`), ``"auc"`` (Fig. 6a), or several joined by ``+`` (``"next_item+auc"``);
``"both"`` means ``"ranking+auc"``.

* :func:`build_sft_dataset` -- ``prompt``, ``completion`` (ranking / next item: the target's title as
  ``PromptTemplates.answer_text``; AUC: "Yes"/"No", balanced by the split), ``task``.
* :func:`build_dpo_dataset` -- ``prompt``, ``chosen``, ``rejected``, ``chosen_item``, ``rejected_item``, ``task``.
  Ranking / next item (paper Sec. 2, App. C.2): chosen = the target's title, rejected = the title of one of the
  example's negatives (its non-target candidates), one row per pair. Which negatives (``rejected=``): ``"random"``
  (default; ``num_rejected`` drawn uniformly, seeded per example, independent of the list order), ``"all"`` (one
  pair per negative: the paper's "K unobserved items"), ``"hard"`` (the ``num_rejected`` negatives most similar to
  the target under ``similarity``, e.g. cosine in the item-embedding index). A ranking prompt lists the candidates in
  a seeded shuffle drawn per example, independent of which item is rejected, so neither item's slot carries a signal.
  AUC: chosen = the right answer, rejected = the opposite answer; the item pair used for hardness is (target, first
  unwatched item) for a "Yes" example and (most recent history item, target) for a "No" example: in both cases the
  item the user prefers, then the one they do not.
* :func:`build_ranking_eval_dataset` -- ``prompt``, ``candidates`` (completion texts in the prompt's candidate
  order), ``candidate_items``, ``target_index``, ``prompt_format``. With ``prompt="list"`` and ``permutations``, one
  row per candidate order (cyclic shifts of the stored order, so every candidate sits in every slot equally often);
  rows of one ``sequence_id`` are averaged per candidate by the evaluation (``docs/evaluation.md``).
* :func:`build_auc_eval_dataset` -- ``prompt``, ``label`` (1 = "Yes"), ``item`` (the target item).

Item tokens (``docs/item_tokens.md``): every builder takes ``item_tokens``, a mapping item id -> item token (e.g. an
:class:`~hanorec_trl.item_tokens.ItemVocabulary`), used where ``templates`` name items by token
(:func:`~.prompts.item_templates`: title only, token only or both, in the prompt and in the answers). Without it, and
with the default templates, the rows are byte-identical to those built before item tokens existed.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from datasets import Dataset
from datasets import Image as ImageFeature
from datasets import List as ListFeature
from tqdm.auto import tqdm

from .prompts import (
    DEFAULT_TEMPLATES,
    NO,
    YES,
    PromptTemplates,
    assistant_message,
    auc_prompt,
    next_item_prompt,
    ranking_prompt,
)
from .protocol import SequenceExample
from .recdata import RecData

__all__ = [
    "build_sft_dataset",
    "build_dpo_dataset",
    "build_ranking_eval_dataset",
    "build_auc_eval_dataset",
    "parse_tasks",
    "sample_pairs",
    "shortest_example",
]

TASK_NAMES = ("ranking", "next_item", "auc")
REJECTED_MODES = ("random", "all", "hard")
PROMPT_FORMATS = ("list", "next_item")
_PROGRESS_FROM = 5_000  # show a progress bar from this many examples


def parse_tasks(task: str) -> tuple[str, ...]:
    """``"ranking"``, ``"next_item"``, ``"auc"``, several joined by ``+``, or ``"both"`` (= ``"ranking+auc"``)."""
    parts = ("ranking", "auc") if task == "both" else tuple(p.strip() for p in str(task).split("+"))
    unknown = [p for p in parts if p not in TASK_NAMES]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise ValueError(
            f"task must be one of {TASK_NAMES}, several joined by '+' (e.g. 'next_item+auc'), or 'both'; got {task!r}"
        )
    return parts


def example_rng(seed: int, sequence_id: str, purpose: str) -> np.random.Generator:
    """A generator seeded by (seed, example, purpose): the same draw whatever the other examples or their order."""
    return np.random.default_rng([int(seed), zlib.crc32(f"{purpose}:{sequence_id}".encode("utf-8"))])


def _check_images(data: RecData, with_images: bool) -> None:
    if with_images and not data.has_images:
        raise ValueError(
            f"{data.name} was loaded with images=False; pass with_images=False (text LLM) or load it with images"
        )


class _ItemNames:
    """How the builders name items: titles from ``data``, item tokens from ``item_tokens`` (checked per item)."""

    def __init__(self, data: RecData, item_tokens: Mapping[str, str] | None, templates: PromptTemplates):
        if templates.uses_item_tokens and item_tokens is None:
            raise ValueError(
                "the templates name items by their item token (item_line or answer uses {token}); pass item_tokens= "
                "(an ItemVocabulary or a mapping item id -> token) to the builder"
            )
        self.data, self.item_tokens, self.templates = data, item_tokens, templates

    def titles(self, ids: Sequence[str]) -> list[str]:
        return [self.data.title(i) for i in ids]

    def token(self, item_id: str) -> str | None:
        if self.item_tokens is None:
            return None
        try:
            return self.item_tokens[item_id]
        except KeyError:
            raise ValueError(
                f"item {item_id!r} of {self.data.name} has no item token in item_tokens ({len(self.item_tokens)} "
                "items); build the vocabulary over every item of the dataset (ItemVocabulary(data.item_ids))"
            ) from None

    def tokens(self, ids: Sequence[str]) -> list[str] | None:
        return None if self.item_tokens is None else [self.token(i) for i in ids]

    def answer(self, item_id: str) -> str:
        """The completion text naming ``item_id`` (``PromptTemplates.answer_text``)."""
        return self.templates.answer_text(self.data.title(item_id), self.token(item_id))


def _ranking_messages(
    ex: SequenceExample,
    names: _ItemNames,
    with_images: bool,
    candidates: Sequence[str] | None = None,
) -> tuple[list[dict], list[str]]:
    """The ranking prompt (Fig. 6b) listing ``candidates`` (default: the stored order) and the ids of the items whose
    images it shows, in order."""
    candidates = list(ex.candidates if candidates is None else candidates)
    messages, image_ids = ranking_prompt(
        names.titles(ex.history),
        names.titles(candidates),
        list(ex.history) if with_images else None,
        candidates if with_images else None,
        templates=names.templates,
        history_tokens=names.tokens(ex.history),
        candidate_tokens=names.tokens(candidates),
    )
    return messages, image_ids or []


def _next_item_messages(ex: SequenceExample, names: _ItemNames, with_images: bool) -> tuple[list[dict], list[str]]:
    """The next-item prompt (history only) and the ids of the items whose images it shows, in order."""
    messages, image_ids = next_item_prompt(
        names.titles(ex.history),
        list(ex.history) if with_images else None,
        templates=names.templates,
        history_tokens=names.tokens(ex.history),
    )
    return messages, image_ids or []


def _auc_messages(ex: SequenceExample, names: _ItemNames, with_images: bool) -> tuple[list[dict], list[str]]:
    """The yes/no prompt (Fig. 6a) and the ids of the items whose images it shows, in order."""
    messages, image_ids = auc_prompt(
        names.titles(ex.history),
        names.titles(ex.auc_unwatched),
        names.data.title(ex.auc_item),
        list(ex.history) if with_images else None,
        list(ex.auc_unwatched) if with_images else None,
        ex.auc_item if with_images else None,
        templates=names.templates,
        watched_tokens=names.tokens(ex.history),
        unwatched_tokens=names.tokens(ex.auc_unwatched),
        target_token=names.token(ex.auc_item),
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
    tasks = parse_tasks(task)
    _check_images(data, with_images)
    if not examples:
        raise ValueError(f"{desc}: no examples")
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
    item_tokens: Mapping[str, str] | None = None,
) -> Dataset:
    """SFT rows (prompt-completion, paper App. C.1) for ``task`` (see the module doc; "both": ranking row, then AUC
    row, per example)."""
    names = _ItemNames(data, item_tokens, templates)

    def rows(ex: SequenceExample, t: str):
        if t in ("ranking", "next_item"):
            make = _ranking_messages if t == "ranking" else _next_item_messages
            messages, ids = make(ex, names, with_images)
            answer = names.answer(ex.target)
        else:
            messages, ids = _auc_messages(ex, names, with_images)
            answer = _auc_answer(ex.auc_label)[0]
        return [({"prompt": messages, "completion": assistant_message(answer, with_images)}, ids)]

    return _build(examples, data, task, with_images, rows, "SFT rows")


def _rejected_items(
    ex: SequenceExample,
    mode: str,
    num_rejected: int,
    seed: int,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None,
) -> list[str]:
    """The negatives of ``ex`` that become rejected answers (see :func:`build_dpo_dataset`)."""
    negatives = [c for c in ex.candidates if c != ex.target]
    if mode == "all":
        return negatives
    if num_rejected > len(negatives):
        raise ValueError(
            f"num_rejected={num_rejected} but example {ex.sequence_id} has only {len(negatives)} non-target candidates"
        )
    if mode == "random":
        picked = example_rng(seed, ex.sequence_id, "rejected").choice(len(negatives), size=num_rejected, replace=False)
        return [negatives[k] for k in picked.tolist()]
    scores = np.asarray(similarity(ex.target, negatives), dtype=np.float64)
    if scores.shape != (len(negatives),) or not np.all(np.isfinite(scores)):
        raise ValueError(
            f"similarity({ex.target!r}, <{len(negatives)} negatives of {ex.sequence_id}>) must return "
            f"{len(negatives)} finite numbers, got shape {scores.shape}"
        )
    order = np.argsort(-scores, kind="stable")  # most similar first; equal scores in candidate order
    return [negatives[k] for k in order[:num_rejected].tolist()]


def build_dpo_dataset(
    examples: Sequence[SequenceExample],
    data: RecData,
    *,
    task: str = "ranking",
    rejected: str = "random",
    num_rejected: int = 1,
    seed: int = 0,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    with_images: bool = True,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
    item_tokens: Mapping[str, str] | None = None,
) -> Dataset:
    """DPO rows (paper Sec. 2, App. C.2) with ``chosen_item`` / ``rejected_item`` ids for the hardness weight.

    Ranking and next-item examples give one row per rejected negative: ``rejected="random"`` (``num_rejected`` drawn
    uniformly per example, seeded by ``seed`` and the example's id), ``"all"`` (every negative; ``num_rejected`` is
    ignored) or ``"hard"`` (the ``num_rejected`` negatives with the highest ``similarity(target_id, negative_ids)``,
    which must be given). The ranking prompt lists the candidates in a per-example seeded shuffle. AUC examples give
    one row each.
    """
    if rejected not in REJECTED_MODES:
        raise ValueError(f"rejected must be one of {REJECTED_MODES}, got {rejected!r}")
    if num_rejected < 1:
        raise ValueError(f"num_rejected must be at least 1, got {num_rejected}")
    if rejected == "hard" and similarity is None:
        raise ValueError("rejected='hard' needs similarity=f(target_id, negative_ids) -> scores (e.g. item cosines)")
    names = _ItemNames(data, item_tokens, templates)

    def rows(ex: SequenceExample, t: str):
        if t in ("ranking", "next_item"):
            negatives = _rejected_items(ex, rejected, num_rejected, seed, similarity)
            if t == "ranking":
                shown = example_rng(seed, ex.sequence_id, "list order").permutation(list(ex.candidates)).tolist()
                messages, ids = _ranking_messages(ex, names, with_images, shown)
            else:
                messages, ids = _next_item_messages(ex, names, with_images)
            chosen = assistant_message(names.answer(ex.target), with_images)
            return [
                (
                    {
                        "prompt": messages,
                        "chosen": chosen,
                        "rejected": assistant_message(names.answer(neg), with_images),
                        "chosen_item": ex.target,
                        "rejected_item": neg,
                    },
                    ids,
                )
                for neg in negatives
            ]
        messages, ids = _auc_messages(ex, names, with_images)
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


def candidate_orders(ex: SequenceExample, permutations: int | None, seed: int = 0) -> list[list[str]]:
    """Candidate orders that put every candidate in every slot equally often: the cyclic shifts of the stored order.

    ``permutations=None`` gives all ``n`` shifts (exactly balanced); ``P < n`` a seeded subset of ``P`` distinct
    shifts (balanced in expectation); ``1`` the stored order alone (no debiasing).
    """
    stored = list(ex.candidates)
    n = len(stored)
    if permutations is None or permutations >= n:
        shifts = list(range(n))
    elif permutations == 1:
        shifts = [0]
    elif permutations < 1:
        raise ValueError(f"permutations must be None or at least 1, got {permutations}")
    else:
        shifts = sorted(example_rng(seed, ex.sequence_id, "score order").choice(n, size=permutations,
                                                                              replace=False).tolist())
    return [stored[s:] + stored[:s] for s in shifts]


def build_ranking_eval_dataset(
    examples: Sequence[SequenceExample],
    data: RecData,
    *,
    with_images: bool = True,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
    prompt: str = "list",
    permutations: int | None = None,
    seed: int = 0,
    item_tokens: Mapping[str, str] | None = None,
) -> Dataset:
    """Ranking evaluation rows: the prompt, every candidate's completion text, the candidates' ids, the target's
    position, the prompt format. Score a model by the log-likelihood of each candidate text given the prompt.

    ``prompt="list"``: the Fig. 6b prompt listing the candidates, one row per candidate order of
    :func:`candidate_orders` (``permutations=None``: every cyclic shift; 1: the stored order only).
    ``prompt="next_item"``: the history-only prompt, one row per example (no list, nothing to permute).
    """
    if prompt not in PROMPT_FORMATS:
        raise ValueError(f"prompt must be one of {PROMPT_FORMATS}, got {prompt!r}")
    names = _ItemNames(data, item_tokens, templates)

    def rows(ex: SequenceExample, t: str):
        if prompt == "next_item":
            orders = [list(ex.candidates)]
        else:
            orders = candidate_orders(ex, permutations, seed)
        out = []
        for order in orders:
            if prompt == "next_item":
                messages, ids = _next_item_messages(ex, names, with_images)
            else:
                messages, ids = _ranking_messages(ex, names, with_images, order)
            row = {
                "prompt": messages,
                "candidates": [names.answer(c) for c in order],
                "candidate_items": order,
                "target_index": order.index(ex.target),
                "prompt_format": prompt,
            }
            out.append((row, ids))
        return out

    return _build(examples, data, "ranking", with_images, rows, "ranking eval rows")


def build_auc_eval_dataset(
    examples: Sequence[SequenceExample],
    data: RecData,
    *,
    with_images: bool = True,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
    item_tokens: Mapping[str, str] | None = None,
) -> Dataset:
    """AUC evaluation rows: the yes/no prompt, ``label`` (1 = "Yes") and ``item`` (the target item's id)."""
    names = _ItemNames(data, item_tokens, templates)

    def rows(ex: SequenceExample, t: str):
        messages, ids = _auc_messages(ex, names, with_images)
        return [({"prompt": messages, "label": ex.auc_label, "item": ex.auc_item}, ids)]

    return _build(examples, data, "auc", with_images, rows, "AUC eval rows")


def shortest_example(dataset: Dataset, processing_class) -> tuple[int, int]:
    """``(row, tokens)`` of the dataset's shortest prompt + completion (``chosen`` and ``rejected`` of a preference
    dataset), tokenized as its chat template renders it; an image counts as its placeholder tokens only, a lower
    bound of what a processor makes of it. A ``max_length`` below it truncates every example."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    answers = ["completion"] if "completion" in dataset.column_names else ["chosen", "rejected"]
    shortest = (-1, 1 << 62)
    for answer in answers:
        for row, (prompt, completion) in enumerate(zip(dataset["prompt"], dataset[answer])):
            if isinstance(prompt, str):
                length = len(tokenizer(prompt + completion)["input_ids"])
            else:
                length = len(tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False))
            shortest = min(shortest, (row, length), key=lambda pair: pair[1])
    return shortest


def sample_pairs(pairs: Dataset, cap: int | None, seed: int) -> Dataset:
    """A seeded sample of ``cap`` preference pairs, in their order (all when ``cap`` is None or not smaller)."""
    if cap is None or len(pairs) <= cap:
        return pairs
    return pairs.select(np.sort(np.random.default_rng(seed).choice(len(pairs), size=cap, replace=False)).tolist())
