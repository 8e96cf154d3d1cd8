"""Prompt-once packing of preference batches (``docs/fast_path.md``).

TRL's preference collators build a ``[chosen; rejected]`` batch in which every prompt, with all its images, appears
twice. :class:`PackedPreferenceCollator` instead builds one sequence per distinct prompt of the batch::

    [prompt][completion 1][p'][completion 2][p'][completion 3] ...

where ``p'`` repeats the prompt's last token (same position, so its hidden state equals the prompt's last one) and
predicts the first token of the completion that follows it. A segment attention mask (:func:`segment_mask_function`)
lets each completion see the shared prompt and itself only, so every completion token gets exactly the context it
has in the standard batch: the log-probs, the loss and the gradients are those of the standard path, while the
prompt (and its images) runs once. Rows of the batch that share a prompt (several rejected completions of one
ranking prompt) share it in the packed batch too, and identical completions are scored once.

The collator tokenizes exactly as TRL 1.16 does: vision rows through ``prepare_multimodal_messages`` and
``apply_chat_template`` with the prompt and each completion tokenized separately; text rows from the ``prompt_ids``/
``chosen_ids``/``rejected_ids`` that ``DPOTrainer`` prepares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .vision_cache import image_key

logger = logging.getLogger(__name__)

PACKED_KEY = "packed_segment_ids"  # marks a packed batch
SCALAR_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def segment_mask_function(segment_ids: torch.Tensor, prompt_lengths: torch.Tensor):
    """Mask function (transformers ``masking_utils`` convention) of a packed batch, AND-ed with the causal mask.

    A query in the prompt (segment 0) or in the first completion (segment 1) sees the prompt and its own segment; a
    query in a later completion sees the prompt without its last token (the completion's own copy ``p'`` replaces it)
    and its own segment.
    """

    def mask(batch_idx, head_idx, q_idx, kv_idx):
        seg_q = segment_ids[batch_idx, q_idx]
        seg_kv = segment_ids[batch_idx, kv_idx]
        last_prompt_token = kv_idx == prompt_lengths[batch_idx] - 1
        shared = (seg_kv == 0) & ~(last_prompt_token & (seg_q >= 2))
        return (seg_kv == seg_q) | shared

    return mask


@dataclass
class _Group:
    prompt_ids: list[int]
    extras: dict[str, Any]  # processor outputs for the prompt (pixel_values, image_grid_thw, mm_token_type_ids)
    image_keys: list[str]
    completions: list[tuple[int, ...]]


class PackedPreferenceCollator:
    """Collates preference rows into a prompt-once packed batch (see the module docstring).

    Args:
        processing_class: the tokenizer (text rows) or processor (vision rows) given to the trainer.
        max_length: truncates each prompt+completion sequence like TRL (``keep_start``); ``None`` disables it.
        scalar_columns: per-row float columns carried into the batch as tensors when present.
        fallback: TRL's collator, given the batches that cannot be packed exactly (a vision row whose prompt alone
            fills ``max_length``: TRL truncates the prompt itself); without one such a batch is refused.
    """

    def __init__(self, processing_class, max_length: int | None = None, scalar_columns=SCALAR_COLUMNS,
                 fallback: Callable | None = None):
        self.processing_class = processing_class
        self.fallback = fallback
        self._fell_back = False
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        self.max_length = max_length
        self.scalar_columns = tuple(scalar_columns)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id

    # ---------------------------------------------------------------------------------------------- tokenization
    def _vision_row(self, example: dict) -> tuple[tuple, list[int], dict, list[str], list[int], list[int]]:
        from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

        example = dict(example)
        images = [example.pop("image")] if "image" in example else list(example.get("images") or [])
        if is_conversational(example):
            example["prompt"] = prepare_multimodal_messages(example["prompt"], images=images)
            example["chosen"] = prepare_multimodal_messages(example["chosen"])
            example["rejected"] = prepare_multimodal_messages(example["rejected"])
            example = apply_chat_template(example, self.processing_class)
        keys = [image_key(image) for image in images]
        signature = (example["prompt"], tuple(keys))
        processed = self.processing_class(
            images=images or None,
            text=[example["prompt"]],
            return_tensors="pt",
            add_special_tokens=False,
        )
        extras = {k: v for k, v in processed.items() if k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")}
        prompt_ids = processed["input_ids"][0].tolist()

        def encode(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

        return signature, prompt_ids, extras, keys, encode(example["chosen"]), encode(example["rejected"])

    def _text_row(self, example: dict) -> tuple[tuple, list[int], dict, list[str], list[int], list[int]]:
        prompt_ids = list(example["prompt_ids"])
        return (tuple(prompt_ids),), prompt_ids, {}, [], list(example["chosen_ids"]), list(example["rejected_ids"])

    def _truncate(self, prompt_len: int, completion: list[int], row: int) -> tuple[int, ...]:
        if self.max_length is None:
            return tuple(completion)
        if prompt_len >= self.max_length:
            raise ValueError(
                f"row {row} of the batch: its prompt has {prompt_len} tokens, not fewer than max_length="
                f"{self.max_length}, so no completion token would remain. Increase max_length or set it to None."
            )
        return tuple(completion[: self.max_length - prompt_len])

    # -------------------------------------------------------------------------------------------------- collate
    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        vision = "images" in examples[0] or "image" in examples[0]
        rows = [self._vision_row(example) if vision else self._text_row(example) for example in examples]
        if self.fallback is not None and self.max_length is not None and any(
            len(row[1]) >= self.max_length for row in rows
        ):
            if not self._fell_back:
                self._fell_back = True
                logger.warning("prompt-once fast path: a batch has a prompt of max_length=%d tokens or more, which "
                               "TRL truncates; such batches go through TRL's own collator (logged once)",
                               self.max_length)
            return self.fallback([dict(example) for example in examples])
        groups: list[_Group] = []
        group_of: dict[tuple, int] = {}
        pairs = []  # per row: (group, chosen completion index, rejected completion index)
        for row, (signature, prompt_ids, extras, keys, chosen, rejected) in enumerate(rows):
            if signature not in group_of:
                group_of[signature] = len(groups)
                groups.append(_Group(prompt_ids, extras, keys, []))
            g = group_of[signature]
            group = groups[g]
            indices = []
            for completion in (chosen, rejected):
                completion = self._truncate(len(prompt_ids), completion, row)
                if completion not in group.completions:
                    group.completions.append(completion)
                indices.append(group.completions.index(completion))
            pairs.append((g, *indices))
        batch = self._pack(groups, pairs)
        for column in self.scalar_columns:
            if column in examples[0]:
                batch[column] = torch.tensor([float(example[column]) for example in examples], dtype=torch.float32)
        return batch

    def _pack(self, groups: list[_Group], pairs: list[tuple[int, int, int]]) -> dict[str, Any]:
        sequences, segments, labels, offsets, starts = [], [], [], [], []
        for group in groups:
            n_prompt = len(group.prompt_ids)
            ids, seg, lab = list(group.prompt_ids), [0] * n_prompt, [-100] * n_prompt
            off = list(range(n_prompt))  # position offset: the token's index in its standard (unpacked) sequence
            group_starts = []
            for k, completion in enumerate(group.completions):
                if k > 0 and completion:  # p': the prompt's last token again, predicting this completion's first token
                    ids.append(group.prompt_ids[-1])
                    seg.append(k + 1)
                    lab.append(-100)
                    off.append(n_prompt - 1)
                group_starts.append(len(ids))
                ids += completion
                seg += [k + 1] * len(completion)
                lab += list(completion)
                off += range(n_prompt, n_prompt + len(completion))
            sequences.append(ids)
            segments.append(seg)
            labels.append(lab)
            offsets.append(off)
            starts.append(group_starts)

        length = max(len(s) for s in sequences)
        n_groups = len(groups)
        input_ids = torch.full((n_groups, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n_groups, length), dtype=torch.long)
        segment_ids = torch.full((n_groups, length), -1, dtype=torch.long)
        label_ids = torch.full((n_groups, length), -100, dtype=torch.long)
        position_offsets = torch.zeros((n_groups, length), dtype=torch.long)
        for g, (ids, seg, lab, off) in enumerate(zip(sequences, segments, labels, offsets, strict=True)):
            input_ids[g, : len(ids)] = torch.tensor(ids)
            attention_mask[g, : len(ids)] = 1
            segment_ids[g, : len(ids)] = torch.tensor(seg)
            label_ids[g, : len(ids)] = torch.tensor(lab)
            position_offsets[g, : len(ids)] = torch.tensor(off)
        prompt_lengths = torch.tensor([len(group.prompt_ids) for group in groups])

        # TRL layout: row r of [chosen; rejected] gathers its completion's log-probs from the packed output, whose
        # position t-1 scores the label at position t.
        n_rows = len(pairs)
        spans = []
        for side in (1, 2):  # chosen, rejected
            for g, *completion_index in pairs:
                k = completion_index[side - 1]
                spans.append((g, starts[g][k], len(groups[g].completions[k]), len(groups[g].prompt_ids)))
        width = max(1, max(span[2] for span in spans))
        gather_index = torch.zeros((2 * n_rows, width), dtype=torch.long)
        gather_mask = torch.zeros((2 * n_rows, width), dtype=torch.bool)
        standard_tokens = torch.zeros(2 * n_rows, dtype=torch.long)
        for r, (g, start, count, prompt_len) in enumerate(spans):
            gather_index[r, :count] = g * (length - 1) + torch.arange(start - 1, start - 1 + count)
            gather_mask[r, :count] = True
            standard_tokens[r] = prompt_len + count

        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": label_ids,
            PACKED_KEY: segment_ids,
            "prompt_lengths": prompt_lengths,
            "position_offsets": position_offsets,
            "gather_index": gather_index,
            "gather_mask": gather_mask,
            "standard_tokens": standard_tokens,
        }
        if any(group.extras for group in groups):
            batch.update(self._vision_extras(groups, length))
        return batch

    @staticmethod
    def _vision_extras(groups: list[_Group], length: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if any("pixel_values" in group.extras for group in groups):
            with_images = [group for group in groups if "pixel_values" in group.extras]
            out["pixel_values"] = torch.cat([group.extras["pixel_values"] for group in with_images])
            out["image_grid_thw"] = torch.cat([group.extras["image_grid_thw"] for group in with_images])
            out["image_keys"] = [key for group in with_images for key in group.image_keys]
        mm = torch.zeros((len(groups), length), dtype=torch.long)
        for g, group in enumerate(groups):
            if "mm_token_type_ids" in group.extras:
                types = group.extras["mm_token_type_ids"][0]
                mm[g, : types.numel()] = types
        out["mm_token_type_ids"] = mm
        return out
