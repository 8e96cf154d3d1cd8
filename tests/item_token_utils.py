"""Shared pieces of the item-token tests: a small synthetic dataset, its CF vectors, tiny models with item tokens."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from hanorec_trl.data import build_split, load_movielens_1m, write_synthetic_movielens
from hanorec_trl.data.synthetic import SyntheticConfig
from hanorec_trl.item_tokens import ItemVocabulary, SoftItemTokens, TrainableItemTokens, cf_for_split
from hanorec_trl.model_utils import language_model_lora_regex
from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer

SMALL = SyntheticConfig(num_users=80, num_items=80, max_interactions=30)
VARIANT_NAMES = ("soft", "trainable")


def small_world(folder):
    """``(data, split, cf, vocabulary)`` of a small synthetic MovieLens (80 users, 80 items), CF from training only."""
    data = load_movielens_1m(write_synthetic_movielens(folder, SMALL))
    split = build_split(data)
    return data, split, cf_for_split(data, split, dim=8), ItemVocabulary(data.item_ids)


def make_variant(name: str, data, cf, vocabulary):
    if name == "soft":
        return SoftItemTokens(vocabulary, cf)
    return TrainableItemTokens(vocabulary, cf, titles=data.titles)


def tiny_model_with_items(name: str, data, cf, vocabulary, build=tiny_qwen2):
    """A fresh tokenizer and tiny model (seeded) with the ``name`` variant installed: ``(model, tokenizer, items)``."""
    tokenizer = tiny_tokenizer()
    model = build(tokenizer)
    items = make_variant(name, data, cf, vocabulary)
    items.install(model, tokenizer)
    return model, tokenizer, items


def lora(model, items, **overrides) -> LoraConfig:
    """A LoRA config (random B, so the policy differs from the reference at once) extended by the variant."""
    kwargs = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=language_model_lora_regex(model),
                  init_lora_weights=False)
    kwargs.update(overrides)
    return items.lora_config(LoraConfig(**kwargs))


def peft_model(model, items, seed: int = 0):
    torch.manual_seed(seed)
    return get_peft_model(model, lora(model, items))
