"""Variant 2: one vocabulary token per item, its embedding row initialised from the projected CF embeddings and
trained through PEFT (``LoraConfig.trainable_token_indices``; ``docs/item_tokens.md``).

Projection (no training needed): a ridge regression from the CF vectors to the items' title embeddings (the mean of
the LM's token rows over the title), so CF directions land on the text-space directions that best predict them; its
predictions are then rescaled about their mean to the spread of the title embeddings (a ridge fit shrinks them). The
rows are written into the base weights at :meth:`~.base.ItemTokenVariant.install` (an untied head gets them too).

PEFT (peft 0.21, ``tuners/trainable_tokens``) trains a copy of these rows (``trainable_tokens_delta``, initialised
from them); the copy is what ``save_pretrained`` writes into the adapter, and with the adapter disabled (DPO's
reference) the embedding reads the base rows. The LM head's item rows are read from the embedding's current rows
(:class:`~.base.ItemRowsHead`: input and output item rows stay tied, also in the reference); for that the model's
config says ``tie_word_embeddings=False`` while the tokens are installed, so that PEFT does not wrap the head itself
(TRL's fused LM head cannot read PEFT's head wrapper, see ``ItemRowsHead``). :meth:`bake` restores it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .base import ItemRowsHead, ItemTokenVariant, register, tie_configs, titles_for
from .cf import CFEmbeddings
from .vocabulary import ItemVocabulary

__all__ = ["TrainableItemTokens", "project_to_titles"]


def project_to_titles(cf: np.ndarray, titles: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Ridge regression ``[cf, 1] -> titles`` fitted on all items, its predictions rescaled about their mean to the
    overall spread of ``titles`` (see the module doc). Shapes ``(n, d)``, ``(n, h)`` -> ``(n, h)``."""
    x = np.concatenate([cf, np.ones((cf.shape[0], 1))], axis=1).astype(np.float64)
    y = titles.astype(np.float64)
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    pred = x @ coef
    centre = pred.mean(0)
    spread = np.sqrt(((pred - centre) ** 2).mean())
    target = np.sqrt(((y - y.mean(0)) ** 2).mean())
    if spread > 0:
        pred = centre + (pred - centre) * (target / spread)
    return pred.astype(np.float32)


@register
class TrainableItemTokens(ItemTokenVariant):
    """Vocabulary item tokens initialised from projected CF vectors and trained as PEFT trainable tokens.
    ``titles``: item id -> title (the projection's target); ``ridge``: its penalty."""

    name = "trainable"

    def __init__(self, vocabulary: ItemVocabulary, cf: CFEmbeddings, *, titles: Mapping[str, str],
                 ridge: float = 1.0):
        super().__init__(vocabulary, cf)
        self.titles = dict(zip(vocabulary.item_ids, titles_for(vocabulary, titles)))
        if ridge < 0:
            raise ValueError(f"TrainableItemTokens: ridge must be >= 0, got {ridge}")
        self.ridge = float(ridge)

    @classmethod
    def for_data(cls, data, cf: CFEmbeddings, **options) -> TrainableItemTokens:
        """The variant over every item of ``data`` (a ``RecData``), projected onto its titles."""
        return super().for_data(data, cf, titles=data.titles, **options)

    def options(self) -> dict:
        return {"titles": self.titles, "ridge": self.ridge}

    def initial_rows(self, model, processing_class) -> np.ndarray:
        """The projected CF vector of every item (catalogue order), in the LM's input space."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        weight = model.get_input_embeddings().weight.detach().float().cpu()
        title_rows = np.stack([
            weight[tokenizer(self.titles[i], add_special_tokens=False)["input_ids"] or [0]].mean(0).numpy()
            for i in self.vocabulary.item_ids
        ])
        table, _ = self.cf.lookup(self.vocabulary.item_ids)
        return project_to_titles(table, title_rows, self.ridge)

    keeps_rows = True

    def _install(self, model, processing_class, keep_rows: bool) -> None:
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        if not keep_rows:
            rows = torch.from_numpy(self.initial_rows(model, processing_class))
            ids = torch.tensor(self.token_ids)
            with torch.no_grad():
                for layer in {id(m): m for m in (embedding, head) if m is not None}.values():
                    layer.weight[ids.to(layer.weight.device)] = rows.to(layer.weight)
        if head is not None:
            # the head's item rows are read from the (PEFT-trained) input rows at every call; PEFT must then not tie
            # a wrapper of its own to the head (see ItemRowsHead), so the configs say "untied" while installed
            ItemRowsHead.install(model, self.token_ids, _InputRows(model, self.token_ids))
            for config in tie_configs(model):
                config.tie_word_embeddings = False

    def _lora_config(self, config):
        if config.trainable_token_indices is not None:
            raise ValueError("the LoraConfig already sets trainable_token_indices; TrainableItemTokens sets them")
        config.trainable_token_indices = list(self.token_ids)
        return config


class _InputRows:
    """The item rows of the model's current input embedding layer (PEFT's trained copy while its adapter is on)."""

    def __init__(self, model, token_ids: list[int]):
        self.model, self.token_ids = model, torch.tensor(token_ids)

    def item_rows(self) -> torch.Tensor:
        weight = self.model.get_input_embeddings().weight
        return weight[self.token_ids.to(weight.device)]
