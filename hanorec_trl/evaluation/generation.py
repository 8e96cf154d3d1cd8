"""Generation mode (the paper's protocol): generate an answer, parse the titles it lists, map them to candidates.

Parsing (:func:`parse_titles`): if the whole output is one candidate's text, that is the answer; otherwise the item
tokens it names (``<item_123>``, ``docs/item_tokens.md``) in order, repeats dropped; otherwise the double-quoted
spans ("..." or curly quotes) in order; with no quotes, one title per non-empty line, stripped of list markers
("1.", "2)", "-", "*").

Matching (:func:`match_candidates`), conservative, each title to at most one candidate and never to two. An item
token matches the candidate whose text names that token (``<item_3>`` or ``"Title" <item_3>``) and nothing else;
any other title:

1. exact: the stripped title equals a candidate's text, or the candidate's text without its surrounding quotes;
2. normalized: case-folded, quotes removed, whitespace collapsed;
3. loose: level 2 plus a trailing year ``(1995)`` removed and a leading article moved or dropped
   ("The Matrix", "Matrix, The" -> "matrix"; also "A"/"An").

A title is mapped at the first level where exactly one candidate matches; if two or more candidates match at a
level (e.g. "Psycho (1960)" and "Psycho (1998)" for "Psycho"), the title stays unmatched. Candidates already taken
by an earlier title are skipped, so the ranked list holds distinct candidates. A row whose output maps to no
candidate is a parse failure: it counts as a miss at every K (rank ``inf``) and is reported in
``parse_failure_rate``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..item_tokens.vocabulary import find_item_tokens
from ..model_utils import eval_mode, model_device
from .scoring import encode_prompts, rendered_prompt, text_tokenizer

_QUOTED = re.compile(r"[\"\u201c\u201d]([^\"\u201c\u201d\n]+)[\"\u201c\u201d]")
_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.)]|[-*\u2022])\s*")
_YEAR = re.compile(r"\s*\(\s*\d{4}\s*\)\s*$")
_ARTICLES = ("the", "a", "an")
_QUOTE_CHARS = "\"'\u201c\u201d\u2018\u2019`"


def parse_titles(text: str, candidates: Sequence[str] = ()) -> list[str]:
    """The titles listed in a generated answer, in order (see the module docstring)."""
    stripped = text.strip()
    if stripped in candidates:
        return [stripped]
    tokens = find_item_tokens(text)
    if tokens:
        return list(dict.fromkeys(tokens))
    quoted = [m.group(1).strip() for m in _QUOTED.finditer(text)]
    if quoted:
        return [q for q in quoted if q]
    lines = (_LIST_MARKER.sub("", line).strip() for line in text.splitlines())
    return [line for line in lines if line]


def _normalize(title: str) -> str:
    title = title.strip().strip(_QUOTE_CHARS).casefold()
    return " ".join(title.split())


def _loose(title: str) -> str:
    title = _YEAR.sub("", _normalize(title)).strip()
    for article in _ARTICLES:
        if title.endswith(", " + article):
            title = title[: -len(article) - 2].strip()
            break
        if title.startswith(article + " "):
            title = title[len(article) + 1 :].strip()
            break
    return title


def _exact(title: str) -> str:
    return title.strip()


def _candidate_keys(candidate: str) -> tuple[set[str], str, str]:
    text = candidate.strip()
    exact = {text}
    if len(text) >= 2 and text[0] == text[-1] == '"':
        exact.add(text[1:-1].strip())
    return exact, _normalize(text), _loose(text)


def match_candidates(titles: Sequence[str], candidates: Sequence[str]) -> list[int]:
    """Candidate indices for ``titles`` in order: each title maps to at most one untaken candidate (or none)."""
    keys = [_candidate_keys(c) for c in candidates]
    candidate_tokens = [find_item_tokens(c) for c in candidates]
    taken: list[int] = []
    for title in titles:
        if find_item_tokens(title) == [title.strip()]:  # an item token: only the candidate that names it
            hits = [i for i, tokens in enumerate(candidate_tokens) if title.strip() in tokens]
            if len(hits) == 1 and hits[0] not in taken:
                taken.append(hits[0])
            continue
        levels = (
            lambda k: _exact(title) in k[0],
            lambda k: _normalize(title) == k[1],
            lambda k: _loose(title) == k[2] and bool(k[2]),
        )
        for level in levels:
            hits = [i for i, k in enumerate(keys) if level(k)]
            if len(hits) == 1:
                if hits[0] not in taken:
                    taken.append(hits[0])
                break
            if len(hits) > 1:
                break  # ambiguous: never guess between two candidates
    return taken


def rank_from_generation(text: str, candidates: Sequence[str], target_index: int) -> tuple[float, bool]:
    """``(rank of the target in the parsed list or inf, parsed)``; ``parsed`` is False for a parse failure."""
    order = match_candidates(parse_titles(text, candidates), candidates)
    if not order:
        return math.inf, False
    return (float(order.index(target_index) + 1) if target_index in order else math.inf), True


@dataclass
class GenerationSettings:
    """Decoding settings (greedy by default; the released code sampled with temperature 0.95, top_p 0.7)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


def generate_answers(
    model,
    processing_class,
    prompts: Sequence,
    images: Sequence | None = None,
    *,
    settings: GenerationSettings | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> list[str]:
    """The model's decoded answer to every prompt (special tokens removed), in batches with a progress bar."""
    from tqdm.auto import tqdm

    settings = settings or GenerationSettings()
    tok = text_tokenizer(processing_class)
    items = [
        rendered_prompt(processing_class, p, images[i] if images is not None else None) for i, p in enumerate(prompts)
    ]
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = model_device(model)
    answers: list[str] = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    try:
        with eval_mode(model), tqdm(total=len(items), desc="generating", disable=not progress, unit="prompt") as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                encoding = {k: v.to(device) for k, v in encode_prompts(processing_class, batch).items()}
                out = model.generate(**encoding, pad_token_id=pad, **kwargs)
                new_tokens = out[:, encoding["input_ids"].shape[1] :]
                answers.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
                bar.update(len(batch))
    finally:
        torch.random.set_rng_state(generator_state)
    return answers


def generation_ranks(
    answers: Sequence[str], candidates: Sequence[Sequence[str]], target_indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ranks (``inf`` = unranked) and a boolean array of parse failures."""
    ranks, failed = [], []
    for text, cands, target in zip(answers, candidates, target_indices):
        rank, parsed = rank_from_generation(text, cands, int(target))
        ranks.append(rank)
        failed.append(not parsed)
    return np.asarray(ranks, dtype=np.float64), np.asarray(failed, dtype=bool)


__all__ = [
    "GenerationSettings",
    "generate_answers",
    "generation_ranks",
    "match_candidates",
    "parse_titles",
    "rank_from_generation",
]
