"""Item tokens in the tokenizer: one added token ``<item_{id}>`` per catalogue item.

:class:`ItemVocabulary` maps item ids to their token strings (it is the ``item_tokens=`` mapping the dataset builders
take) and, once added to a tokenizer (:meth:`ItemVocabulary.add_to`), to their token ids. The tokens are ordinary
(non-special) added tokens, so ``decode(..., skip_special_tokens=True)`` keeps them (generation parses them back,
:func:`find_item_tokens`), and each always encodes to exactly one id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

__all__ = ["ITEM_TOKEN_FORMAT", "ItemVocabulary", "find_item_tokens"]

ITEM_TOKEN_FORMAT = "<item_{}>"
_ITEM_TOKEN = re.compile(r"<item_[^<>\s]+>")


def find_item_tokens(text: str) -> list[str]:
    """The item tokens in ``text``, in order of appearance (repeats kept)."""
    return _ITEM_TOKEN.findall(text)


class ItemVocabulary(Mapping):
    """Item id -> item token string (``<item_{id}>``), in catalogue order; after :meth:`add_to`, also -> token id."""

    def __init__(self, item_ids: Sequence[str]):
        item_ids = [str(i) for i in item_ids]
        if not item_ids:
            raise ValueError("ItemVocabulary: no item ids")
        seen: set[str] = set()
        for item in item_ids:
            if item in seen:
                raise ValueError(f"ItemVocabulary: item id {item!r} is listed twice")
            if not item or re.search(r"[<>\s]", item):
                raise ValueError(f"ItemVocabulary: item id {item!r} cannot be part of a token (empty, space, < or >)")
            seen.add(item)
        self.item_ids = item_ids
        self.tokens = {item: ITEM_TOKEN_FORMAT.format(item) for item in item_ids}
        self.row = {item: k for k, item in enumerate(item_ids)}
        self.token_ids: list[int] | None = None

    # Mapping: item id -> token string
    def __getitem__(self, item_id: str) -> str:
        return self.tokens[item_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    def add_to(self, processing_class) -> list[int]:
        """Adds the item tokens to the tokenizer (of a processor) in place and returns their ids in catalogue order.

        Tokens already in the tokenizer (a tokenizer saved after an earlier ``add_to``) are kept with their ids; a
        token that would not encode to its single id (a clash with the text vocabulary) is an error naming it.
        """
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.tokens.values() if t not in vocab]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=False)
        ids = tokenizer.convert_tokens_to_ids(list(self.tokens.values()))
        for item, token, token_id in zip(self.item_ids, self.tokens.values(), ids):
            encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
            if encoded != [token_id]:
                raise ValueError(
                    f"item {item!r}: its token {token!r} encodes to {encoded}, not to its one id {token_id}; the "
                    "tokenizer already splits or defines it otherwise"
                )
        self.token_ids = list(ids)
        return self.token_ids

    def require_token_ids(self) -> list[int]:
        if self.token_ids is None:
            raise RuntimeError("the item tokens are not in a tokenizer yet: call ItemVocabulary.add_to(tokenizer)")
        return self.token_ids

    def item_of_token(self) -> dict[int, str]:
        """Token id -> item id."""
        return dict(zip(self.require_token_ids(), self.item_ids))
