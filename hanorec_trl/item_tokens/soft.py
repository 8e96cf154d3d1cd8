"""Variant 1, LLaRA's soft token: frozen CF item embeddings through a small trainable projector into the LM's input
space (Liao et al., "LLaRA: Large Language-Recommendation Assistant", SIGIR 2024; ``docs/item_tokens.md``).

:class:`SoftItemEmbedding` replaces the model's input embedding layer: every item-token position gets
``projector(cf[item])`` instead of its (placeholder) row, every other position its usual row. With ``tie_output``
(default) an :class:`~.base.ItemRowsHead` replaces the LM head so that the item tokens' output rows are the same
projected vectors (as tied embeddings are), hence an item token is also a completion the model can score and
generate. Every forward path
(TRL SFT/DPO, ``HaNoDPOTrainer`` and its prompt-once fast path, scoring, generation) goes through these two modules.

The projector is LLaRA's MLP (``Linear(d, h') -> GELU -> Linear(h', hidden)``) holding the CF table as a buffer;
it is initialised (seeded) so that its outputs have the mean and spread of the LM's token rows. It trains as a PEFT
``modules_to_save`` module (:meth:`SoftItemTokens.lora_config`), so it is saved with the adapter (CF table
included), and with the adapter disabled (DPO's reference) the projector as it was when PEFT wrapped the model runs.

Curriculum (LLaRA's): ``SoftItemEmbedding.hybrid_probability`` is the chance that a training row sees the projected
vectors; the other rows keep the placeholder row at the item-token positions (LLaRA's text-only ``[PH]`` prompts), and
give the projector no gradient. :class:`ItemTokenCurriculum` (a ``TrainerCallback``) raises it linearly from 0 to 1
over the training steps, LLaRA's schedule. Evaluation and generation always use the projected vectors.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from ..model_utils import unwrap_hf_model
from .base import ItemRowsHead, ItemTokenVariant, register
from .cf import CFEmbeddings
from .vocabulary import ItemVocabulary

__all__ = ["CFProjector", "ItemTokenCurriculum", "SoftItemEmbedding", "SoftItemTokens", "soft_item_embedding"]

PROJECTOR_NAME = "item_projector"


class CFProjector(nn.Module):
    """``net(cf[item])``: LLaRA's two-layer MLP over a frozen CF table (a persistent buffer, saved with it)."""

    def __init__(self, table: torch.Tensor, hidden_size: int, projector_hidden: int):
        super().__init__()
        self.register_buffer("cf", table.float().clone())
        self.net = nn.Sequential(nn.Linear(table.shape[1], projector_hidden), nn.GELU(),
                                 nn.Linear(projector_hidden, hidden_size))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.net(self.cf[items])

    @torch.no_grad()
    def calibrate(self, rows: torch.Tensor) -> None:
        """Scales and shifts the last layer so the projected catalogue has the mean and the overall spread of
        ``rows`` (the LM's token rows): the item vectors start where the LM's inputs live."""
        out = self.net(self.cf)
        spread = (out - out.mean(0)).pow(2).mean().sqrt().clamp(min=1e-8)
        target = (rows - rows.mean(0)).pow(2).mean().sqrt()
        last = self.net[-1]
        last.weight.mul_(target / spread)
        last.bias.mul_(target / spread)
        last.bias.add_(rows.mean(0).to(last.bias) - (out.mean(0) * target / spread))


class SoftItemEmbedding(nn.Module):
    """The input embedding layer with every item token's row replaced by ``item_projector(cf[item])``."""

    is_item_token_module = True

    def __init__(self, plain_layer: nn.Embedding, token_ids: list[int], projector: CFProjector):
        super().__init__()
        self.plain_layer = plain_layer
        setattr(self, PROJECTOR_NAME, projector)
        item_of_token = torch.full((plain_layer.weight.shape[0],), -1, dtype=torch.long)
        item_of_token[torch.tensor(token_ids)] = torch.arange(len(token_ids))
        self.register_buffer("item_of_token", item_of_token.to(plain_layer.weight.device), persistent=False)
        self.register_buffer("item_token_ids", torch.tensor(token_ids, device=plain_layer.weight.device),
                             persistent=False)
        self.hybrid_probability = 1.0

    # what transformers / PEFT / TRL read from an embedding layer
    @property
    def weight(self) -> torch.Tensor:
        return self.plain_layer.weight

    @weight.setter
    def weight(self, value) -> None:
        self.plain_layer.weight = value

    @property
    def num_embeddings(self) -> int:
        return self.plain_layer.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.plain_layer.embedding_dim

    @property
    def padding_idx(self):
        return self.plain_layer.padding_idx

    def project(self, items: torch.Tensor) -> torch.Tensor:
        return getattr(self, PROJECTOR_NAME)(items)

    def item_rows(self) -> torch.Tensor:
        """The projected vector of every item, in catalogue order (the item tokens' rows)."""
        return self.project(torch.arange(len(self.item_token_ids), device=self.item_token_ids.device))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.plain_layer(input_ids)
        items = self.item_of_token[input_ids]
        mask = items >= 0
        p = float(self.hybrid_probability)
        if self.training and p < 1.0:  # the curriculum: one draw per row (sequence)
            keep = torch.rand(input_ids.shape[:-1], device=input_ids.device) < p
            mask = mask & keep.unsqueeze(-1)
        if not bool(mask.any()):
            return embeds
        unique, inverse = items[mask].unique(return_inverse=True)
        projected = self.project(unique)[inverse].to(embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), projected)


def soft_item_embedding(model) -> SoftItemEmbedding:
    """The :class:`SoftItemEmbedding` of a model with soft item tokens (PEFT and DDP wrappers looked through)."""
    layer = unwrap_hf_model(model).get_input_embeddings()
    if not isinstance(layer, SoftItemEmbedding):
        raise ValueError(f"the model has no soft item tokens (its input embeddings are {type(layer).__name__}); "
                         "install them with SoftItemTokens(...).install(model, tokenizer)")
    return layer


@register
class SoftItemTokens(ItemTokenVariant):
    """LLaRA's soft item tokens (see the module doc). ``projector_hidden``: the MLP's inner width (default: the LM's
    hidden size, as in LLaRA); ``tie_output``: the item tokens' output rows are the projected vectors too;
    ``seed``: the projector's initialisation."""

    name = "soft"

    def __init__(self, vocabulary: ItemVocabulary, cf: CFEmbeddings, *, projector_hidden: int | None = None,
                 tie_output: bool = True, seed: int = 0):
        super().__init__(vocabulary, cf)
        self.projector_hidden, self.tie_output, self.seed = projector_hidden, bool(tie_output), int(seed)

    def options(self) -> dict:
        return {"projector_hidden": self.projector_hidden, "tie_output": self.tie_output, "seed": self.seed}

    def _install(self, model, processing_class, keep_rows: bool) -> None:
        embedding = model.get_input_embeddings()
        weight = embedding.weight
        table, _ = self.cf.lookup(self.vocabulary.item_ids)
        hidden = weight.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            projector = CFProjector(torch.from_numpy(table), hidden, self.projector_hidden or hidden)
        projector.calibrate(weight[: min(self.token_ids)].detach().float().cpu())
        projector.to(device=weight.device, dtype=weight.dtype)
        soft = SoftItemEmbedding(embedding, self.token_ids, projector)
        model.set_input_embeddings(soft)
        if self.tie_output:
            ItemRowsHead.install(model, self.token_ids, soft)

    def _lora_config(self, config):
        saved = list(config.modules_to_save or [])
        config.modules_to_save = saved + [PROJECTOR_NAME] if PROJECTOR_NAME not in saved else saved
        return config

    def _bake_input(self, hf_model) -> None:
        soft = soft_item_embedding(hf_model)
        soft.plain_layer.weight[soft.item_token_ids] = soft.item_rows().to(soft.plain_layer.weight.dtype)
        hf_model.set_input_embeddings(soft.plain_layer)


class ItemTokenCurriculum(TrainerCallback):
    """LLaRA's curriculum for soft item tokens: before optimizer step ``s`` (from 0) of ``T``, every
    :class:`SoftItemEmbedding` of the model uses the projected vectors for a row with probability
    ``min(1, (s + 1) / ramp_steps)`` (``ramp_steps`` default: ``T``, LLaRA's linear ramp); 1 after training."""

    def __init__(self, ramp_steps: int | None = None):
        if ramp_steps is not None and ramp_steps < 1:
            raise ValueError(f"ItemTokenCurriculum: ramp_steps must be >= 1, got {ramp_steps}")
        self.ramp_steps = ramp_steps

    def _set(self, model, probability: float) -> None:
        layers = [m for m in model.modules() if isinstance(m, SoftItemEmbedding)]
        if not layers:
            raise ValueError("ItemTokenCurriculum: the model has no soft item tokens (SoftItemTokens.install)")
        for layer in layers:
            layer.hybrid_probability = probability

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        ramp = self.ramp_steps or max(1, state.max_steps)
        self._set(model, min(1.0, (state.global_step + 1) / ramp))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._set(model, 1.0)
