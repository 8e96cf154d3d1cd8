"""Tiny models, tokenizers and data to build tests on: real architectures, random weights, nothing downloaded.

A test of code that uses ``hanorec_trl`` (or TRL) on a CPU in seconds::

    from hanorec_trl.testing import tiny_preference_dataset, tiny_qwen2_5_vl, tiny_tokenizer, tiny_vl_processor

    tokenizer = tiny_tokenizer()                  # byte-level BPE, 512 tokens, Qwen's special tokens and template
    model = tiny_qwen2_5_vl(tokenizer)            # Qwen2.5-VL architecture, hidden size 64, seeded weights
    processor = tiny_vl_processor(tokenizer)      # 56 x 56 posters -> 4 image tokens each
    dataset = tiny_preference_dataset(8)          # TRL preference rows with posters and chosen/rejected item ids

:func:`qwen2_5_vl_3b` builds the full Qwen2.5-VL-3B architecture with random weights (for memory and speed checks).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from .processing import QWEN_SPECIAL_TOKENS, assemble_qwen_tokenizer, byte_level_alphabet, qwen2_5_vl_processor

__all__ = [
    "QWEN2_5_VL_3B_TEXT",
    "QWEN2_5_VL_3B_VISION",
    "TINY_TITLES",
    "qwen2_5_vl_3b",
    "random_item_embeddings",
    "solid_image",
    "tiny_preference_dataset",
    "tiny_qwen2",
    "tiny_qwen2_5_vl",
    "tiny_tokenizer",
    "tiny_vl_processor",
]

_TINY_CORPUS_WORDS = (
    "the user has watched the following movies please write a movie that may watch below are candidate "
    "whether will like target yes no not which they do prefer comedy drama action thriller horror romance "
    "adventure animation documentary fantasy mystery science fiction war western musical crime children family "
    "night day love story return of man woman world city dark last first great little big time life death "
    "king queen star house home secret lost dead blue red black white green golden silver summer winter "
)


def tiny_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE tokenizer with Qwen's pre-tokenizer, special tokens and chat template.

    Any text encodes (byte-level), so titles, prompts and answers all work; only the vocabulary is small, which keeps
    the LM head cheap on a CPU. The BPE is learned deterministically from a fixed built-in corpus.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    table = byte_level_alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False, initial_alphabet=list(table.values())
    )
    probe = Tokenizer(models.BPE())
    probe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [_TINY_CORPUS_WORDS, _TINY_CORPUS_WORDS.title(), "0123456789 (1999) (2000) \" , . : ' ?\n"]
    probe.train_from_iterator(corpus * 3, trainer=trainer)
    data = json.loads(probe.to_str())
    vocab = data["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    return assemble_qwen_tokenizer(vocab, merges, model_max_length=8192)


def tiny_vl_processor(tokenizer, image_size: int = 56):
    """A Qwen2.5-VL processor for ``tokenizer`` that turns ``image_size`` square images into few tokens
    (56 x 56 -> 4 x 4 patches -> 4 image tokens)."""
    return qwen2_5_vl_processor(tokenizer, min_pixels=28 * 28, max_pixels=image_size * image_size)


# --------------------------------------------------------------------------------------------------------------------
# Random-weight models of the real architectures
# --------------------------------------------------------------------------------------------------------------------


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS[:14]}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks the Qwen special tokens {missing}")
    return ids


def _tiny_text_settings(tokenizer, ids: dict[str, int], hidden_size: int, num_layers: int) -> dict:
    """Language-model settings shared by the tiny Qwen2 and Qwen2.5-VL models (sized to the tokenizer)."""
    heads = max(2, hidden_size // 16)
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=8192,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )


def _build_random(model_class, config, ids: dict[str, int], seed: int, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """A model with seeded random weights, built directly on ``device``, with Qwen's generation ids."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model


# Qwen/Qwen2.5-VL-3B-Instruct's published config.json (transformers-5 names: rope_scaling -> rope_parameters).
QWEN2_5_VL_3B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
    use_sliding_window=False, sliding_window=32768, max_window_layers=70, attention_dropout=0.0,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, tie_word_embeddings=True,
)
QWEN2_5_VL_3B_VISION = dict(
    depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
    out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
)


def qwen2_5_vl_3b(tokenizer, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  attn_implementation: str = "sdpa", seed: int = 0):
    """The Qwen2.5-VL-3B-Instruct architecture (3.75B parameters) with seeded random weights, built on ``device``
    (``"meta"`` for a size check; initialising on a GPU takes a second, on a CPU minutes)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = _special_ids(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config=dict(QWEN2_5_VL_3B_TEXT), vision_config=dict(QWEN2_5_VL_3B_VISION),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return _build_random(Qwen2_5_VLForConditionalGeneration, config, ids, seed, device, dtype, attn_implementation)


def tiny_qwen2_5_vl(tokenizer, hidden_size: int = 64, num_layers: int = 2, vision_depth: int = 2, seed: int = 0):
    """A Qwen2.5-VL model (real architecture) with tiny random weights, sized to ``tokenizer``'s vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = _special_ids(tokenizer)
    text = _tiny_text_settings(tokenizer, ids, hidden_size, num_layers)
    # M-RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    half = hidden_size // text["num_attention_heads"] // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            text,
            hidden_act="silu",
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_act="silu",
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            in_channels=3,
            out_hidden_size=hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision_depth - 1],
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return _build_random(Qwen2_5_VLForConditionalGeneration, config, ids, seed)


def tiny_qwen2(tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A text-only Qwen2 causal LM (real architecture) with tiny random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    ids = _special_ids(tokenizer)
    config = Qwen2Config(**_tiny_text_settings(tokenizer, ids, hidden_size, num_layers))
    return _build_random(Qwen2ForCausalLM, config, ids, seed)



# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------

TINY_TITLES = (
    "Comedy Night (1999)", "Dark War (1985)", "Love Story (1970)", "Blue City (2001)", "Last King (1994)",
    "Golden House (1988)", "Secret World (2003)", "Lost Summer (1979)", "Red Star (1996)", "Little Queen (1990)",
)


def solid_image(seed: int, size: int = 56) -> Image.Image:
    """A small deterministic RGB image (a colour gradient that depends on ``seed``)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    grid = np.linspace(0, 60, size, dtype=np.float32)
    arr = (base[None, None, :] + grid[:, None, None] + grid[None, :, None]) % 255
    return Image.fromarray(arr.astype(np.uint8))


def tiny_preference_dataset(n: int = 8, with_images: bool = True, seed: int = 0):
    """``n`` TRL preference rows in the paper's ranking shape (two history items, three candidates; the answer is a
    quoted title) over the ten :data:`TINY_TITLES`, with ``chosen_item`` / ``rejected_item`` holding the item ids
    (``"0"``..``"9"``) and, with ``with_images``, one :func:`solid_image` poster per item."""
    from datasets import Dataset

    from .data.prompts import DEFAULT_TEMPLATES, assistant_message, ranking_prompt

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        picks = rng.permutation(len(TINY_TITLES))
        history, candidates = picks[:2], picks[2:5]
        target, negative = int(candidates[0]), int(candidates[1 + i % 2])
        posters = (lambda idx: [solid_image(int(j)) for j in idx]) if with_images else (lambda idx: None)
        prompt, images = ranking_prompt([TINY_TITLES[j] for j in history], [TINY_TITLES[j] for j in candidates],
                                        posters(history), posters(candidates))
        row = {
            "prompt": prompt,
            "chosen": assistant_message(DEFAULT_TEMPLATES.answer_text(TINY_TITLES[target]), with_images),
            "rejected": assistant_message(DEFAULT_TEMPLATES.answer_text(TINY_TITLES[negative]), with_images),
            "chosen_item": str(target),
            "rejected_item": str(negative),
        }
        if with_images:
            row["images"] = images
        rows.append(row)
    return Dataset.from_list(rows)


def random_item_embeddings(num_items: int = 32, dim: int = 16, seed: int = 0):
    """Seeded random ``(text, image)`` item embeddings of shape ``(num_items, dim)`` and the ``item_rows`` map
    (item id ``str(j)`` -> row ``j``), the inputs of :class:`~hanorec_trl.hardness.HardnessIndex`. The default
    catalogue covers the ids of :func:`tiny_preference_dataset` and has room for Top-K sets with the default K = 10."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((num_items, dim)).astype(np.float32)
    image = rng.standard_normal((num_items, dim)).astype(np.float32)
    return text, image, {str(j): j for j in range(num_items)}
