"""What both item-token variants share: adding the tokens, sizing the embedding rows, the PEFT config, save/load.

A variant (:class:`ItemTokenVariant`; :mod:`.soft` and :mod:`.trainable`) is built from an
:class:`~.vocabulary.ItemVocabulary` and :class:`~.cf.CFEmbeddings`. :meth:`ItemTokenVariant.install` adds the item
tokens to the tokenizer, grows the model's embedding rows when needed, sets every item row of the base weights to the
mean text-token row (no item information: LLaRA's placeholder) and then installs the variant. After that the model is
an ordinary transformers model to every trainer, the scoring and generation: the item tokens are just token ids.

:meth:`ItemTokenVariant.save` writes ``item_tokens.json`` (and ``item_cf.npz``) next to a saved adapter;
:func:`load_item_token_model` rebuilds the same variant on a fresh base model and loads the adapter onto it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..files import atomic_file
from ..model_utils import unwrap_hf_model
from .cf import CFEmbeddings
from .vocabulary import ITEM_TOKEN_FORMAT, ItemVocabulary

__all__ = ["ITEM_TOKENS_FILE", "ItemRowsHead", "ItemTokenVariant", "VARIANTS", "load_item_token_model",
           "load_item_tokens"]

ITEM_TOKENS_FILE = "item_tokens.json"
CF_FILE = "item_cf.npz"
VARIANTS: dict[str, type[ItemTokenVariant]] = {}


class ItemRowsHead(nn.Module):
    """The LM head with the item tokens' output rows read from ``source.item_rows()`` at every call (catalogue
    order): the item rows follow the input side (tied), whatever PEFT or the projector makes of it.

    ``weight`` (what TRL's fused LM head reads) is the head's weight with those rows replaced; ``bias`` the head's.
    It takes the place of PEFT's tied-head wrapper for item tokens: TRL 1.16's fused LM head reads ``lm_head.bias``,
    which peft 0.21's ``TrainableTokensWrapper`` does not expose while its adapter is active (``AttributeError``).
    The wrapped head is ``plain_layer``, not ``base_layer``: PEFT's ``merge_and_unload`` takes any module with a
    ``base_layer`` for one of its own tuner layers.
    """

    is_item_token_module = True

    def __init__(self, plain_layer: nn.Module, token_ids: list[int], source: Any):
        super().__init__()
        self.plain_layer = plain_layer
        self.register_buffer("item_token_ids", torch.tensor(token_ids, device=plain_layer.weight.device),
                             persistent=False)
        self._source = [source]  # a reference, not a submodule: what it holds trains (and is saved) once

    @classmethod
    def install(cls, model, token_ids: list[int], source: Any) -> ItemRowsHead:
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (LM head) to give item rows")
        new = cls(head, token_ids, source)
        model.set_output_embeddings(new)
        return new

    def item_rows(self) -> torch.Tensor:
        return self._source[0].item_rows()

    @property
    def weight(self) -> torch.Tensor:
        weight = self.plain_layer.weight
        rows = self.item_rows().to(device=weight.device, dtype=weight.dtype)
        return weight.index_copy(0, self.item_token_ids.to(weight.device), rows)

    @weight.setter
    def weight(self, value) -> None:
        self.plain_layer.weight = value

    @property
    def bias(self):
        return getattr(self.plain_layer, "bias", None)

    @property
    def in_features(self) -> int:
        return self.plain_layer.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.plain_layer.weight.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)


def register(cls: type[ItemTokenVariant]) -> type[ItemTokenVariant]:
    """Class decorator: makes a variant loadable by its ``name`` (:func:`load_item_tokens`)."""
    VARIANTS[cls.name] = cls
    return cls


class ItemTokenVariant:
    """One way of giving each item token its collaborative meaning (see :mod:`hanorec_trl.item_tokens`)."""

    name = ""

    def __init__(self, vocabulary: ItemVocabulary, cf: CFEmbeddings):
        if not isinstance(vocabulary, ItemVocabulary):
            raise TypeError(f"vocabulary must be an ItemVocabulary, got {type(vocabulary).__name__}")
        self.vocabulary, self.cf = vocabulary, cf
        self.token_ids: list[int] | None = None

    @classmethod
    def for_data(cls, data, cf: CFEmbeddings, **options) -> ItemTokenVariant:
        """The variant over every item of ``data`` (a ``RecData``), with the CF vectors ``cf``."""
        return cls(ItemVocabulary(data.item_ids), cf, **options)

    # ---------------------------------------------------------------------------------------------- install
    def install(self, model, processing_class, *, keep_rows: bool = False):
        """Adds the item tokens to ``processing_class`` (in place), sizes and resets the item rows of ``model`` and
        installs the variant; returns ``model``. Call it before PEFT wraps the model (before the trainer).

        ``keep_rows=True`` (variants with ``keeps_rows``): the model and tokenizer already hold trained item rows,
        e.g. a model saved after :meth:`bake`; they are kept as they are, and training goes on from them.
        """
        hf_model = unwrap_hf_model(model)
        if hf_model is not model:
            raise ValueError("install the item tokens on the transformers model before PEFT wraps it (the trainer "
                             "does that with peft_config=items.lora_config(...))")
        if any(getattr(m, "is_item_token_module", False) for m in model.modules()):
            raise ValueError("this model already has item tokens installed")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        rows = model.get_input_embeddings().weight.shape[0]
        if keep_rows:
            if not self.keeps_rows:
                raise ValueError(f"{type(self).__name__} computes its item vectors at every forward; keep_rows "
                                 "applies to TrainableItemTokens")
            known = tokenizer.get_vocab()
            absent = [t for t in self.vocabulary.tokens.values() if t not in known]
            if absent:
                raise ValueError(f"keep_rows=True but the tokenizer lacks {len(absent)} item tokens (first: "
                                 f"{absent[0]!r}); load the tokenizer saved with the baked model")
        token_ids = self.vocabulary.add_to(processing_class)
        if keep_rows and max(token_ids) >= rows:
            raise ValueError(f"keep_rows=True but the model has {rows} embedding rows, fewer than the item token ids "
                             f"(up to {max(token_ids)}) need")
        if max(len(tokenizer), max(token_ids) + 1) > rows:
            model.resize_token_embeddings(max(len(tokenizer), max(token_ids) + 1), mean_resizing=False)
        self.tied = [bool(getattr(c, "tie_word_embeddings", False)) for c in tie_configs(model)]
        if not keep_rows:
            ids = torch.tensor(token_ids)
            text_rows = min(token_ids)  # the rows before the first item token: the text vocabulary
            with torch.no_grad():
                for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                              if m is not None}.values():
                    weight = layer.weight
                    weight[ids.to(weight.device)] = weight[:text_rows].mean(0)
        self.token_ids = token_ids
        self._install(model, processing_class, keep_rows)
        return model

    keeps_rows = False  # whether install(keep_rows=True) applies

    def _install(self, model, processing_class, keep_rows: bool) -> None:
        raise NotImplementedError

    def require_installed(self) -> list[int]:
        if self.token_ids is None:
            raise RuntimeError(f"{type(self).__name__}: call install(model, tokenizer) first")
        return self.token_ids

    # ------------------------------------------------------------------------------------------------- PEFT
    def lora_config(self, config):
        """A copy of the PEFT ``LoraConfig`` that also trains what this variant trains (and saves it with the
        adapter)."""
        self.require_installed()
        return self._lora_config(copy.deepcopy(config))

    def _lora_config(self, config):
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------------- bake
    @torch.no_grad()
    def bake(self, model):
        """Writes the item rows into the plain embedding weights (and an untied head) and puts the plain layers
        back: a standard transformers model (``save_pretrained`` / ``from_pretrained``) that scores the same. Merge a
        PEFT adapter first (``merge_and_unload``); returns the model."""
        if hasattr(model, "peft_config"):
            raise ValueError("bake needs the model without its PEFT wrapper: model = model.merge_and_unload() first")
        head = model.get_output_embeddings()
        rows = head.item_rows() if isinstance(head, ItemRowsHead) else None
        self._bake_input(model)
        if rows is not None:
            weight = head.plain_layer.weight
            if weight is not model.get_input_embeddings().weight:
                weight[head.item_token_ids] = rows.to(weight.dtype)
            model.set_output_embeddings(head.plain_layer)
        # what install found (PEFT's merge and the trainable variant mark the model untied while the head is ours)
        for config, tied in zip(tie_configs(model), self.tied):
            config.tie_word_embeddings = tied
        return model

    def _bake_input(self, model) -> None:
        """Puts the plain input embedding back with the item rows written in (the variants' own part)."""

    # ---------------------------------------------------------------------------------------------- save/load
    def options(self) -> dict[str, Any]:
        """The constructor's keyword options (besides the vocabulary and the CF table), JSON-serialisable."""
        return {}

    def save(self, directory: str | Path) -> None:
        """Writes ``item_tokens.json`` and ``item_cf.npz`` into ``directory`` (e.g. beside ``trainer.save_model``)."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"variant": self.name, "token_format": ITEM_TOKEN_FORMAT, "item_ids": self.vocabulary.item_ids,
                "token_ids": self.require_installed(), "cf_source": self.cf.source, "options": self.options()}
        with atomic_file(folder / CF_FILE) as tmp, open(tmp, "wb") as f:
            self.cf.save(f)
        with atomic_file(folder / ITEM_TOKENS_FILE) as tmp, open(tmp, "w") as f:
            json.dump(spec, f, indent=1)


def load_item_tokens(directory: str | Path) -> ItemTokenVariant:
    """The variant saved in ``directory`` by :meth:`ItemTokenVariant.save` (not yet installed on a model)."""
    folder = Path(directory)
    path = folder / ITEM_TOKENS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: save the item tokens with items.save({str(folder)!r})")
    spec = json.loads(path.read_text())
    if spec.get("variant") not in VARIANTS:
        raise ValueError(f"{path}: unknown item-token variant {spec.get('variant')!r} (known: {sorted(VARIANTS)})")
    if spec.get("token_format") != ITEM_TOKEN_FORMAT:
        raise ValueError(f"{path}: token format {spec.get('token_format')!r}; this library writes "
                         f"{ITEM_TOKEN_FORMAT!r}")
    variant = VARIANTS[spec["variant"]](ItemVocabulary(spec["item_ids"]), CFEmbeddings.load(folder / CF_FILE),
                                        **spec["options"])
    variant.saved_token_ids = list(spec["token_ids"])
    return variant


def load_item_token_model(model, processing_class, directory: str | Path, *, is_trainable: bool = False):
    """``model`` (the base model the adapter was trained on) with the saved item tokens installed and the PEFT
    adapter in ``directory`` loaded: a model that scores exactly as the one saved. The item tokens must get the ids
    they had (they do when ``processing_class`` is the base tokenizer or the one saved with the adapter)."""
    from peft import PeftModel

    variant = load_item_tokens(directory)
    variant.install(model, processing_class)
    if variant.token_ids != variant.saved_token_ids:
        first = next(k for k, (a, b) in enumerate(zip(variant.token_ids, variant.saved_token_ids)) if a != b)
        raise ValueError(
            f"item {variant.vocabulary.item_ids[first]!r}: its token got id {variant.token_ids[first]} in this "
            f"tokenizer but had {variant.saved_token_ids[first]} when saved; load the tokenizer saved with the adapter"
        )
    return PeftModel.from_pretrained(model, str(directory), is_trainable=is_trainable), variant


def tie_configs(model) -> list:
    """The model's config and its text config (vision-language models), each once."""
    configs = [model.config, model.config.get_text_config()]
    return list({id(c): c for c in configs}.values())


def titles_for(vocabulary: ItemVocabulary, titles: Mapping[str, str]) -> list[str]:
    """The title of every vocabulary item, in catalogue order (an error names an item without one)."""
    missing = [i for i in vocabulary.item_ids if i not in titles]
    if missing:
        raise ValueError(f"items {missing[:5]} ({len(missing)} in all) have no title")
    return [titles[i] for i in vocabulary.item_ids]
