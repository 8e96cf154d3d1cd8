"""Collaborative item tokens: each item can be named in a prompt by its title, by one token ``<item_{id}>`` that
carries collaborative (CF) item embeddings, or both; an answer can be the item token, so a candidate's score is one
token's log-prob and the whole catalogue can be ranked in one forward (``docs/item_tokens.md``).

Pieces (one module each):

* :mod:`.vocabulary` -- :class:`ItemVocabulary`: item id -> token string (the builders' ``item_tokens=``) -> id;
* :mod:`.cf` -- :class:`CFEmbeddings` and :func:`cf_for_split`: CF vectors fitted on training interactions only;
* :mod:`.soft` -- variant 1, :class:`SoftItemTokens` (LLaRA): a trainable projector over the frozen CF vectors
  replaces the item tokens' rows at every forward; :class:`ItemTokenCurriculum` schedules LLaRA's curriculum;
* :mod:`.trainable` -- variant 2, :class:`TrainableItemTokens`: vocabulary rows initialised from the projected CF
  vectors and trained through PEFT's ``trainable_token_indices``;
* :mod:`.base` -- what the variants share: ``install``, ``lora_config``, ``save``, :func:`load_item_token_model`;
* :mod:`.catalogue` -- :func:`catalogue_log_probs`: every item token's log-prob after each prompt.

Prompts switch naming with :func:`hanorec_trl.data.prompts.item_templates` (title / token / both).
"""

from .base import ITEM_TOKENS_FILE, VARIANTS, ItemTokenVariant, load_item_token_model, load_item_tokens
from .catalogue import catalogue_log_probs
from .cf import CF_METHODS, CFEmbeddings, cf_for_split, cf_from_interactions, cf_from_sasrec
from .soft import ItemTokenCurriculum, SoftItemTokens, soft_item_embedding
from .trainable import TrainableItemTokens
from .vocabulary import ITEM_TOKEN_FORMAT, ItemVocabulary, find_item_tokens

__all__ = [
    "CF_METHODS",
    "CFEmbeddings",
    "ITEM_TOKENS_FILE",
    "ITEM_TOKEN_FORMAT",
    "ItemTokenCurriculum",
    "ItemTokenVariant",
    "ItemVocabulary",
    "SoftItemTokens",
    "TrainableItemTokens",
    "VARIANTS",
    "catalogue_log_probs",
    "cf_for_split",
    "cf_from_interactions",
    "cf_from_sasrec",
    "find_item_tokens",
    "load_item_token_model",
    "load_item_tokens",
    "soft_item_embedding",
]
