"""Likelihood scoring of candidate completions, prompt once (``docs/evaluation.md``).

For a prompt and its candidate completions, the score of a candidate is the log-likelihood the model assigns to
it as the completion: the sum of the log-probabilities of exactly the tokens TRL 1.16's ``DPOTrainer`` scores for
that completion. Concretely (matching ``trl.data_utils.apply_chat_template`` and the two DPO collators):

* conversational prompt, tokenizer (text LLM): ``prompt_ids`` = the chat template with ``add_generation_prompt``,
  ``full_ids`` = the template over ``prompt + [assistant completion]``; the completion tokens are ``full_ids`` after
  the longest common prefix with ``prompt_ids`` (for Qwen: the answer, ``<|im_end|>`` and ``"\\n"``);
* conversational prompt, processor (vision-language model): the same split done on the rendered *strings*, the
  prompt processed with its images and the completion string tokenized on its own (``add_special_tokens=False``);
* plain-string prompt (tokenizer only): the completion is the text plus the EOS token, as TRL appends it.

Prompt once: the prompt (with its images) is run once with a key/value cache; the cache is expanded over the
prompt's candidates and all candidates are scored in one further forward. Position ids are given explicitly so that
padding never shifts them: ``cumsum(mask) - 1`` for text models, and for Qwen2-VL / Qwen2.5-VL the model's own
M-RoPE index (``get_rope_index``) for the prompt, continued for the candidate tokens as
``real_prompt_length + j + rope_delta`` on all three axes (text tokens after the last image advance 1 per token).
:func:`score_candidates` with ``method="naive"`` re-runs the prompt for every candidate (what TRL's collators
do); a test shows both give the same numbers.

First token only (:func:`score_first_tokens`): a candidate's score is the log-prob of its first completion token,
read from the prompt's own forward (no candidate forward). With item-token answers (``docs/item_tokens.md``) that is
the item token's log-prob, the cheap score that also ranks a whole catalogue
(:func:`hanorec_trl.item_tokens.catalogue_log_probs`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model_utils import eval_mode, model_device, unwrap_hf_model

SCORING_METHODS = ("prompt_once", "naive")


# ------------------------------------------------------------------------------------------------------------------
# Tokenization (what TRL scores)
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class TokenizedCandidates:
    """One prompt and its candidate completions, split into prompt and completion tokens as TRL's DPO would."""

    completion_ids: list[list[int]]
    prompt_ids: list[int] | None = None  # tokenizer path
    prompt_text: str | None = None  # processor path (tokenized with the images in a batch)
    images: list | None = None


def is_processor(processing_class) -> bool:
    """True for a multimodal processor (has a tokenizer and takes images), False for a plain tokenizer."""
    from transformers import ProcessorMixin

    return isinstance(processing_class, ProcessorMixin)


def text_tokenizer(processing_class):
    """The tokenizer of a processor, or the tokenizer itself."""
    return processing_class.tokenizer if is_processor(processing_class) else processing_class


def _is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def _assistant_turn(prompt: list[dict], text: str) -> list[dict]:
    """The completion as one assistant message, in the prompt's content style (string or list of parts)."""
    structured = any(not isinstance(m.get("content"), str) for m in prompt)
    content: Any = [{"type": "text", "text": text}] if structured else text
    return [{"role": "assistant", "content": content}]


def _copy_messages(messages: list[dict]) -> list[dict]:
    """A copy deep enough that TRL's ``prepare_multimodal_messages`` (which fills image parts) leaves ours alone."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [dict(part) for part in content]
        out.append({**m, "content": content})
    return out


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_candidates(processing_class, prompt, completions: Sequence[str], images=None) -> TokenizedCandidates:
    """Split ``prompt`` + each completion into prompt tokens and completion tokens exactly as TRL's DPO does."""
    if not completions:
        raise ValueError("a scoring row needs at least one candidate completion")
    tok = text_tokenizer(processing_class)
    if is_processor(processing_class):
        if not _is_conversational(prompt):
            raise ValueError("a processor (vision-language model) needs a conversational prompt (a list of messages)")
        from trl.data_utils import apply_chat_template, prepare_multimodal_messages

        images = list(images) if images else []
        prompt_msgs = prepare_multimodal_messages(_copy_messages(prompt), images=images)
        rendered = []
        for text in completions:
            completion_msgs = prepare_multimodal_messages(_assistant_turn(prompt, text))
            rendered.append(
                apply_chat_template({"prompt": prompt_msgs, "completion": completion_msgs}, processing_class)
            )
        prefix = rendered[0]["prompt"]
        for r in rendered[1:]:
            prefix = prefix[: _common_prefix(prefix, r["prompt"])]
        completion_texts = [r["prompt"][len(prefix) :] + r["completion"] for r in rendered]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in completion_texts]
        return TokenizedCandidates(completion_ids=ids, prompt_text=prefix, images=images or None)

    if images:
        raise ValueError("images were given but the processing class is a tokenizer (text-only model)")
    if _is_conversational(prompt):
        prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt_ids = list(prompt_ids["input_ids"])
        fulls = [
            list(
                tok.apply_chat_template(prompt + _assistant_turn(prompt, t), tokenize=True, return_dict=True)[
                    "input_ids"
                ]
            )
            for t in completions
        ]
    elif isinstance(prompt, str):
        eos = tok.eos_token or ""
        prompt_ids = list(tok(prompt)["input_ids"])
        fulls = [list(tok(prompt + (t if t.endswith(eos) else t + eos))["input_ids"]) for t in completions]
    else:
        raise ValueError(f"prompt must be a list of chat messages or a string, got {type(prompt).__name__}")
    prompt_len = min(_common_prefix(prompt_ids, f) for f in fulls)
    ids = [f[prompt_len:] for f in fulls]
    return TokenizedCandidates(completion_ids=ids, prompt_ids=prompt_ids[:prompt_len])


# ------------------------------------------------------------------------------------------------------------------
# Model plumbing
# ------------------------------------------------------------------------------------------------------------------


def _cache_kwarg(model) -> str:
    """transformers >= 5.24 names the KV-cache argument ``cache``; earlier 5.x releases ``past_key_values``."""
    params = inspect.signature(unwrap_hf_model(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(outputs):
    cache = outputs.get("cache")
    return cache if cache is not None else outputs.get("past_key_values")


def _rope_index_module(model):
    """The submodule computing Qwen2-VL-style 3D (M-RoPE) positions, or None for 1D-RoPE models."""
    for module in unwrap_hf_model(model).modules():
        if hasattr(module, "get_rope_index"):
            return module
    return None


def _image_token_id(model) -> int | None:
    return getattr(unwrap_hf_model(model).config, "image_token_id", None)


def _mm_token_type_ids(model, encoding) -> torch.Tensor:
    mm = encoding.get("mm_token_type_ids")
    if mm is not None:
        return mm
    image_token = _image_token_id(model)
    ids = encoding["input_ids"]
    return (ids == image_token).long() if image_token is not None else torch.zeros_like(ids)


def prompt_position_ids(model, encoding) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids for a left-padded prompt batch and, for M-RoPE models, the per-row rope delta.

    Returns ``(position_ids, rope_deltas)``: ``[3, B, L]`` and ``[B, 1]`` for Qwen2-VL / Qwen2.5-VL (computed by the
    model's ``get_rope_index``, which skips padding), ``[B, L]`` and ``None`` for 1D-RoPE models.
    """
    attention_mask = encoding["attention_mask"]
    rope_module = _rope_index_module(model)
    if rope_module is None:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, None
    positions, deltas = rope_module.get_rope_index(
        encoding["input_ids"],
        mm_token_type_ids=_mm_token_type_ids(model, encoding),
        image_grid_thw=encoding.get("image_grid_thw"),
        attention_mask=attention_mask,
    )
    return positions, deltas.reshape(-1, 1)


def continuation_position_ids(
    prompt_lengths: torch.Tensor, rope_deltas: torch.Tensor | None, length: int
) -> torch.Tensor:
    """Positions of ``length`` text tokens that follow prompts of ``prompt_lengths`` real tokens.

    Text tokens advance one position per token; with M-RoPE all three axes carry ``n + j + delta``.
    """
    steps = torch.arange(length, device=prompt_lengths.device)
    positions = prompt_lengths.reshape(-1, 1) + steps.reshape(1, -1)
    if rope_deltas is None:
        return positions
    return (positions + rope_deltas.to(positions.device)).unsqueeze(0).expand(3, -1, -1)


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``log softmax(logits)[..., target]`` in float32, a few rows at a time (the vocabulary can be 152k wide)."""
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], chunk):
        part = logits[start : start + chunk].float()
        picked = part.gather(-1, targets[start : start + chunk].unsqueeze(-1)).squeeze(-1)
        out[start : start + chunk] = picked - torch.logsumexp(part, dim=-1)
    return out


def _pad(rows: Sequence[Sequence[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            continue
        if side == "left":
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        else:
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
    return ids, mask


def _pad_id(processing_class) -> int:
    tok = text_tokenizer(processing_class)
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def encode_prompts(processing_class, items: Sequence[TokenizedCandidates]) -> dict[str, torch.Tensor]:
    """Left-padded prompt tensors (with pixel values and grids for a processor)."""
    if is_processor(processing_class):
        images = [item.images or [] for item in items]
        encoding = processing_class(
            images=images if any(images) else None,
            text=[item.prompt_text for item in items],
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=False,
        )
        return dict(encoding)
    ids, mask = _pad([item.prompt_ids for item in items], _pad_id(processing_class), "left")
    return {"input_ids": ids, "attention_mask": mask}


def _to(encoding: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in encoding.items()}


# ------------------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------------------


def _prompt_forward(model, processing_class, items: Sequence[TokenizedCandidates], use_cache: bool):
    """One forward over a batch of prompts: ``(encoding, rope_deltas, next-token logits [B, V], cache or None)``."""
    device = model_device(model)
    encoding = _to(encode_prompts(processing_class, items), device)
    positions, deltas = prompt_position_ids(model, encoding)
    model_inputs = {k: v for k, v in encoding.items() if k != "mm_token_type_ids"}
    outputs = model(**model_inputs, position_ids=positions, use_cache=use_cache, logits_to_keep=1)
    return encoding, deltas, outputs.logits[:, -1], _output_cache(outputs) if use_cache else None


def _score_prompt_once(model, processing_class, items: Sequence[TokenizedCandidates]) -> list[list[np.ndarray]]:
    device = model_device(model)
    encoding, deltas, next_token_logits, cache = _prompt_forward(model, processing_class, items, use_cache=True)
    cache_kw = _cache_kwarg(model)

    owner = [i for i, item in enumerate(items) for _ in item.completion_ids]
    owner_t = torch.tensor(owner, device=device)
    completions = [ids for item in items for ids in item.completion_ids]
    cand_ids, cand_mask = _pad(completions, _pad_id(processing_class), "right")
    cand_ids, cand_mask = cand_ids.to(device), cand_mask.to(device)
    cache.batch_select_indices(owner_t)
    prompt_mask = encoding["attention_mask"][owner_t]
    prompt_lengths = prompt_mask.sum(-1)
    cand_positions = continuation_position_ids(
        prompt_lengths, deltas[owner_t] if deltas is not None else None, cand_ids.shape[1]
    )
    outputs = model(
        input_ids=cand_ids,
        attention_mask=torch.cat([prompt_mask, cand_mask], dim=1),
        position_ids=cand_positions,
        use_cache=True,
        **{cache_kw: cache},
    )
    first = token_log_probs(next_token_logits[owner_t].unsqueeze(1), cand_ids[:, :1])
    rest = token_log_probs(outputs.logits[:, :-1], cand_ids[:, 1:])
    logps = torch.cat([first, rest], dim=1).cpu().numpy().astype(np.float64)
    lengths = cand_mask.sum(-1).tolist()
    scores: list[list[np.ndarray]] = [[] for _ in items]
    for row, (o, n) in enumerate(zip(owner, lengths)):
        scores[o].append(logps[row, :n])
    return scores


def _score_naive(model, processing_class, item: TokenizedCandidates) -> list[np.ndarray]:
    """One forward over ``[prompt; candidate]`` for every candidate (prompt and images repeated), right-padded."""
    device = model_device(model)
    encoding = encode_prompts(processing_class, [item])
    n = len(item.completion_ids)
    cand_ids, cand_mask = _pad(item.completion_ids, _pad_id(processing_class), "right")
    prompt_ids = encoding["input_ids"].expand(n, -1)
    inputs = {
        "input_ids": torch.cat([prompt_ids, cand_ids], dim=1),
        "attention_mask": torch.cat([encoding["attention_mask"].expand(n, -1), cand_mask], dim=1),
    }
    if "pixel_values" in encoding:
        inputs["pixel_values"] = encoding["pixel_values"].repeat(n, 1)
        inputs["image_grid_thw"] = encoding["image_grid_thw"].repeat(n, 1)
    if "mm_token_type_ids" in encoding:
        inputs["mm_token_type_ids"] = torch.cat(
            [encoding["mm_token_type_ids"].expand(n, -1), torch.zeros_like(cand_ids)], dim=1
        )
    inputs = _to(inputs, device)
    logits = model(**inputs, use_cache=False).logits
    p = prompt_ids.shape[1]
    targets = inputs["input_ids"][:, p:]
    logps = token_log_probs(logits[:, p - 1 : -1], targets).cpu().numpy().astype(np.float64)
    return [logps[i, : len(ids)] for i, ids in enumerate(item.completion_ids)]


def _batches(seq: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def tokenize_rows(processing_class, prompts, completions, images) -> list[TokenizedCandidates]:
    """Every row tokenized as TRL would (errors name the row); a candidate without tokens is refused."""
    if len(completions) != len(prompts) or (images is not None and len(images) != len(prompts)):
        raise ValueError("prompts, completions and images must have one entry per row")
    items = []
    for row, (prompt, cands) in enumerate(zip(prompts, completions)):
        try:
            items.append(
                tokenize_candidates(processing_class, prompt, cands, images[row] if images is not None else None)
            )
        except ValueError as e:
            raise ValueError(f"row {row}: {e}") from e
    for row, item in enumerate(items):
        empty = [j for j, ids in enumerate(item.completion_ids) if not ids]
        if empty:
            raise ValueError(f"row {row}: candidates {empty} have no completion tokens")
    return items


def score_candidates(
    model,
    processing_class,
    prompts: Sequence[Any],
    completions: Sequence[Sequence[str]],
    images: Sequence[Sequence | None] | None = None,
    *,
    batch_size: int = 4,
    method: str = "prompt_once",
    progress: bool = True,
    desc: str = "scoring candidates",
) -> list[list[np.ndarray]]:
    """Per-token log-probabilities of every candidate completion of every prompt.

    Returns ``scores[row][candidate]``, a float64 array over the completion tokens TRL would score; the candidate's
    log-likelihood is its sum. ``batch_size`` counts prompts (all candidates of a prompt go in one forward).
    ``method="prompt_once"`` runs each prompt once and reuses its key/value cache; ``"naive"`` repeats the prompt
    and its images for every candidate. Runs under ``torch.no_grad`` in eval mode (restored afterwards).
    """
    if method not in SCORING_METHODS:
        raise ValueError(f"method must be one of {SCORING_METHODS}, got {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    items = tokenize_rows(processing_class, prompts, completions, images)
    out: list[list[np.ndarray]] = []
    with eval_mode(model), tqdm(total=len(items), desc=desc, disable=not progress, unit="prompt") as bar:
        for batch in _batches(items, batch_size):
            if method == "prompt_once":
                out.extend(_score_prompt_once(model, processing_class, batch))
            else:
                out.extend(_score_naive(model, processing_class, item) for item in batch)
            bar.update(len(batch))
    return out


def next_token_log_probs(
    model,
    processing_class,
    items: Sequence[TokenizedCandidates],
    token_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "scoring first tokens",
) -> list[np.ndarray]:
    """``log p(token | prompt)`` for the given ``token_ids[row]`` after each tokenized prompt, one prompt forward each
    (no candidate forward), float64. The log-softmax runs over the full vocabulary in float32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    out: list[np.ndarray] = []
    with eval_mode(model), tqdm(total=len(items), desc=desc, disable=not progress, unit="prompt") as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            _, _, logits, _ = _prompt_forward(model, processing_class, batch, use_cache=False)
            logps = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, ids in zip(logps, token_ids[start : start + batch_size]):
                out.append(row[torch.as_tensor(list(ids), dtype=torch.long)].numpy().astype(np.float64))
            bar.update(len(batch))
    return out


def score_first_tokens(
    model,
    processing_class,
    prompts: Sequence[Any],
    completions: Sequence[Sequence[str]],
    images: Sequence[Sequence | None] | None = None,
    *,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "scoring first tokens",
) -> list[np.ndarray]:
    """Each candidate's score as the log-prob of its first completion token (the very token TRL scores first):
    ``scores[row]`` is a float64 array over the row's candidates. With item-token answers
    (``item_templates(answer="token")``) that is the item token's log-prob, so a row costs one prompt forward.
    Candidates of a row that start with the same token are refused (they would tie)."""
    items = tokenize_rows(processing_class, prompts, completions, images)
    firsts = []
    for row, item in enumerate(items):
        first = [ids[0] for ids in item.completion_ids]
        if len(set(first)) != len(first):
            same = next(j for j, t in enumerate(first) if first.index(t) != j)
            raise ValueError(
                f"row {row}: candidates {first.index(first[same])} and {same} start with the same token "
                f"({first[same]}), so first-token scores cannot tell them apart; score whole sequences, or name "
                "the answers by item token (item_templates(answer='token'))"
            )
        firsts.append(first)
    return next_token_log_probs(model, processing_class, items, firsts, batch_size=batch_size, progress=progress,
                                desc=desc)


def rendered_prompt(processing_class, prompt, images=None) -> TokenizedCandidates:
    """The prompt alone, rendered with the generation prompt (for generation); ``completion_ids`` is empty."""
    tok = text_tokenizer(processing_class)
    if is_processor(processing_class):
        from trl.data_utils import prepare_multimodal_messages

        images = list(images) if images else []
        msgs = prepare_multimodal_messages(_copy_messages(prompt), images=images)
        text = processing_class.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return TokenizedCandidates(completion_ids=[], prompt_text=text, images=images or None)
    if _is_conversational(prompt):
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        return TokenizedCandidates(completion_ids=[], prompt_ids=list(ids))
    return TokenizedCandidates(completion_ids=[], prompt_ids=list(tok(prompt)["input_ids"]))


__all__ = [
    "SCORING_METHODS",
    "TokenizedCandidates",
    "continuation_position_ids",
    "encode_prompts",
    "next_token_log_probs",
    "prompt_position_ids",
    "rendered_prompt",
    "score_candidates",
    "score_first_tokens",
    "tokenize_candidates",
    "tokenize_rows",
    "token_log_probs",
]
