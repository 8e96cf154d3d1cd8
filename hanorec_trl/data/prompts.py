"""The two prompt templates of the paper (Fig. 6) as TRL conversational messages.

* Ranking prompt (Fig. 6b, HR@K / NDCG@K): the user's history, then the candidates, one ``<image> "title"`` line
  each; the answer is the target's title in double quotes.
* AUC prompt (Fig. 6a): watched items, unwatched items, a target item; the answer is "Yes" or "No".
* Next-item prompt (this library's addition, ``docs/evaluation.md``): the history alone, no candidate list; every
  candidate is scored as the continuation. About half the tokens of the ranking prompt, and free of list position by
  construction (an LLM favours the first-listed candidate of a ranking prompt).

Every listed item contributes one ``{"type": "image"}`` content part, in order, and its image to the returned
``images`` list: TRL's vision format (``images`` column + image parts), which Qwen2.5-VL's processor expands into
image tokens. With ``images=None`` (text LLMs) the same prompt is rendered from titles alone, as plain string
content. All wording lives in :class:`PromptTemplates`; pass your own instance to change it.

Item naming (``docs/item_tokens.md``): every listed item and every answer is rendered from its title and, when given,
its item token (``<item_123>``, :mod:`hanorec_trl.item_tokens`): ``PromptTemplates.item_line`` / ``answer`` may use
``{title}``, ``{token}`` or both. :func:`item_templates` switches between the three namings, title only (the
default, byte-identical to the templates without item tokens), token only, or both (LLaRA's ``title <token>``).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

YES = "Yes"
NO = "No"


@dataclass(frozen=True)
class PromptTemplates:
    """Every piece of prompt wording in one place (paper Fig. 6). Override any field to change the prompts."""

    history_header: str = "The user has watched the following {noun}s:"
    ranking_question: str = "Please write a {noun} that the user may watch. Below are the candidate {noun}s:"
    unwatched_header: str = "The {noun}s the user has not watched, which may be those they do not prefer:"
    auc_question: str = "Whether the user will like the target {noun}:"
    next_item_header: str = "A user watched these {noun}s, in order:"
    next_item_question: str = "Which {noun} will they watch next?"
    item_line: str = '"{title}"'
    answer: str = '"{title}"'
    noun: str = "movie"
    system: str | None = field(
        default=None,
        metadata={"help": "A system message before the prompt. None: none (a chat template may add its own default, "
                  "e.g. SmolLM2's and Qwen's); '': an empty one, which suppresses such a default (~20 tokens less)."},
    )

    def title_line(self, title: str, token: str | None = None) -> str:
        """How a listed item reads: ``item_line`` with the item's title and, if it uses ``{token}``, its token."""
        return _render("item_line", self.item_line, title, token)

    def answer_text(self, title: str, token: str | None = None) -> str:
        """The completion text for an item (the SFT target and every DPO chosen/rejected ranking answer)."""
        return _render("answer", self.answer, title, token)

    @property
    def uses_item_tokens(self) -> bool:
        """Whether the listed items or the answers name items by their item token (``{token}``)."""
        return uses_token(self.item_line) or uses_token(self.answer)


def uses_token(template: str) -> bool:
    """Whether a template string has a ``{token}`` field."""
    return any(name == "token" for _, name, _, _ in string.Formatter().parse(template))


def _render(name: str, template: str, title: str, token: str | None) -> str:
    if token is None and uses_token(template):
        raise ValueError(
            f"PromptTemplates.{name} = {template!r} names items by their item token, but no token was given for the "
            f"item titled {title!r}; pass item_tokens= (e.g. an ItemVocabulary) to the dataset builder"
        )
    return template.format(title=title, token=token)


DEFAULT_TEMPLATES = PromptTemplates()

# How an item reads under each naming: by its title (the paper's), by its item token, or by both (LLaRA's hybrid).
ITEM_NAMINGS = {"title": '"{title}"', "token": "{token}", "both": '"{title}" {token}'}


def item_templates(
    prompt: str = "both", answer: str = "title", base: PromptTemplates = DEFAULT_TEMPLATES
) -> PromptTemplates:
    """``base`` with the listed items named by ``prompt`` and the answers by ``answer``, each one of
    :data:`ITEM_NAMINGS` ("title", "token", "both"). ``answer="token"`` makes every completion one item token, so a
    candidate's score is that token's log-prob. ``item_templates("title", "title")`` equals ``base``."""
    for name, value in (("prompt", prompt), ("answer", answer)):
        if value not in ITEM_NAMINGS:
            raise ValueError(f"item_templates: {name} must be one of {sorted(ITEM_NAMINGS)}, got {value!r}")
    return dataclasses.replace(base, item_line=ITEM_NAMINGS[prompt], answer=ITEM_NAMINGS[answer])


def _block(
    header: str,
    titles: Sequence[str],
    images: Sequence[Any] | None,
    templates: PromptTemplates,
    tokens: Sequence[str] | None = None,
) -> tuple[list[dict], list[Any]]:
    """Content parts for a header line followed by one ``<image> "title"`` line per item."""
    parts: list[dict] = [{"type": "text", "text": header + "\n"}]
    used: list[Any] = []
    for i, title in enumerate(titles):
        line = templates.title_line(title, tokens[i] if tokens is not None else None)
        if images is not None:
            parts.append({"type": "image"})
            used.append(images[i])
            parts.append({"type": "text", "text": " " + line + "\n"})
        else:
            parts.append({"type": "text", "text": line + "\n"})
    return parts, used


def _check_images(
    name: str, titles: Sequence[str], images: Sequence[Any] | None, tokens: Sequence[str] | None = None
) -> None:
    if images is not None and len(images) != len(titles):
        raise ValueError(f"{name}: {len(titles)} titles but {len(images)} images; give one image per item")
    if tokens is not None and len(tokens) != len(titles):
        raise ValueError(f"{name}: {len(titles)} titles but {len(tokens)} item tokens; give one token per item")


def _finish(
    parts: list[dict], images: list[Any], with_images: bool, templates: PromptTemplates
) -> tuple[list[dict], list[Any] | None]:
    system = [] if templates.system is None else [{"role": "system", "content": templates.system}]
    if with_images:
        if system:
            system[0]["content"] = [{"type": "text", "text": templates.system}]
        return system + [{"role": "user", "content": parts}], images
    text = "".join(p["text"] for p in parts)
    return system + [{"role": "user", "content": text}], None


def ranking_prompt(
    history_titles: Sequence[str],
    candidate_titles: Sequence[str],
    history_images: Sequence[Any] | None = None,
    candidate_images: Sequence[Any] | None = None,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
    *,
    history_tokens: Sequence[str] | None = None,
    candidate_tokens: Sequence[str] | None = None,
) -> tuple[list[dict], list[Any] | None]:
    """The top-K ranking prompt (paper Fig. 6b) as ``(messages, images)``.

    Give both image lists for a vision-language model (one image per title) or neither for a text LLM, in which case
    ``images`` is ``None`` and the message content is a plain string. ``history_tokens`` / ``candidate_tokens``: the
    items' tokens, for templates that name items by token (:func:`item_templates`).
    """
    with_images = history_images is not None or candidate_images is not None
    if with_images and (history_images is None or candidate_images is None):
        raise ValueError("ranking_prompt: give images for both the history and the candidates, or for neither")
    _check_images("history", history_titles, history_images, history_tokens)
    _check_images("candidates", candidate_titles, candidate_images, candidate_tokens)
    noun = templates.noun
    hist, hist_imgs = _block(
        templates.history_header.format(noun=noun), history_titles, history_images, templates, history_tokens
    )
    question = templates.ranking_question.format(noun=noun)
    cand, cand_imgs = _block(question, candidate_titles, candidate_images, templates, candidate_tokens)
    cand[0] = {"type": "text", "text": "\n" + cand[0]["text"]}
    return _finish(hist + cand, hist_imgs + cand_imgs, with_images, templates)


def next_item_prompt(
    history_titles: Sequence[str],
    history_images: Sequence[Any] | None = None,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
    *,
    history_tokens: Sequence[str] | None = None,
) -> tuple[list[dict], list[Any] | None]:
    """The next-item prompt as ``(messages, images)``: the history in order, then the question; no candidates.

    The answer is the next item's title (``PromptTemplates.answer_text``); for ranking, every candidate's answer text
    is scored as the completion of this one prompt, so no candidate has a position in it.
    """
    _check_images("history", history_titles, history_images, history_tokens)
    noun = templates.noun
    parts, images = _block(
        templates.next_item_header.format(noun=noun), history_titles, history_images, templates, history_tokens
    )
    parts.append({"type": "text", "text": templates.next_item_question.format(noun=noun)})
    return _finish(parts, images, history_images is not None, templates)


def auc_prompt(
    watched_titles: Sequence[str],
    unwatched_titles: Sequence[str],
    target_title: str,
    watched_images: Sequence[Any] | None = None,
    unwatched_images: Sequence[Any] | None = None,
    target_image: Any | None = None,
    templates: PromptTemplates = DEFAULT_TEMPLATES,
    *,
    watched_tokens: Sequence[str] | None = None,
    unwatched_tokens: Sequence[str] | None = None,
    target_token: str | None = None,
) -> tuple[list[dict], list[Any] | None]:
    """The yes/no prompt for AUC (paper Fig. 6a) as ``(messages, images)``; the answer is :data:`YES` or :data:`NO`.
    The ``*_tokens`` are the items' tokens, for templates that name items by token (:func:`item_templates`)."""
    given = [watched_images is not None, unwatched_images is not None, target_image is not None]
    with_images = any(given)
    if with_images and not all(given):
        raise ValueError("auc_prompt: give images for the watched, unwatched and target items, or for none of them")
    _check_images("watched", watched_titles, watched_images, watched_tokens)
    _check_images("unwatched", unwatched_titles, unwatched_images, unwatched_tokens)
    noun = templates.noun
    blocks = [
        _block(templates.history_header.format(noun=noun), watched_titles, watched_images, templates, watched_tokens),
        _block(
            templates.unwatched_header.format(noun=noun), unwatched_titles, unwatched_images, templates,
            unwatched_tokens,
        ),
        _block(
            templates.auc_question.format(noun=noun),
            [target_title],
            [target_image] if with_images else None,
            templates,
            [target_token] if target_token is not None else None,
        ),
    ]
    parts, images = [], []
    for i, (block_parts, block_images) in enumerate(blocks):
        if i:
            block_parts[0] = {"type": "text", "text": "\n" + block_parts[0]["text"]}
        parts += block_parts
        images += block_images
    return _finish(parts, images, with_images, templates)


def assistant_message(text: str, with_images: bool = True) -> list[dict]:
    """A one-turn assistant completion in TRL's conversational format.

    Vision datasets use structured content (a list of text parts), text datasets a plain string, matching the
    prompt's style so that TRL's chat-template handling treats prompt and completion alike.
    """
    content: Any = [{"type": "text", "text": text}] if with_images else text
    return [{"role": "assistant", "content": content}]
