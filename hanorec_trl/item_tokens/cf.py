"""Collaborative (CF) item embeddings: an ``(n_items, d)`` table and an item id -> row map, from training data only.

Any CF model can feed the item tokens through :class:`CFEmbeddings`. Two sources are built in, both fitted on
:class:`~hanorec_trl.baselines.TrainingInteractions` (every interaction except each validation/test target and what
its user did afterwards, so no held-out target reaches an embedding):

* ``"svd"`` -- matrix factors: the truncated SVD of the user x item matrix with L2-normalised item columns (the
  geometry item-kNN ranks by: ``E @ E.T`` approximates the item-item cosines), ``E = V * S``; seconds on ML-1M.
* ``"sasrec"`` -- the item embedding table of the library's SASRec (:mod:`hanorec_trl.sasrec`), LLaRA's choice.

:func:`cf_for_split` is the one entry point that starts from a split; it builds the training interactions itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..baselines import TrainingInteractions
    from ..data.protocol import RecSplit
    from ..data.recdata import RecData

__all__ = ["CF_METHODS", "CFEmbeddings", "cf_for_split", "cf_from_interactions", "cf_from_sasrec"]

CF_METHODS = ("svd", "sasrec")


@dataclass
class CFEmbeddings:
    """Item embeddings from a collaborative model: ``table[rows[item_id]]`` is the item's vector; ``source`` says how
    it was fitted. Items the model never saw have no row (:meth:`lookup` gives them zeros and ``known=False``)."""

    table: np.ndarray
    rows: dict[str, int]
    source: str

    def __post_init__(self) -> None:
        self.table = np.asarray(self.table, dtype=np.float32)
        if self.table.ndim != 2 or self.table.shape[0] < 1 or self.table.shape[1] < 1:
            raise ValueError(f"CFEmbeddings: the table must be (n_items, d) with n, d >= 1, got {self.table.shape}")
        bad = [i for i, r in self.rows.items() if not 0 <= int(r) < self.table.shape[0]]
        if bad:
            raise ValueError(f"CFEmbeddings: items {bad[:5]} map to rows outside the {self.table.shape[0]}-row table")
        if not np.all(np.isfinite(self.table)):
            raise ValueError("CFEmbeddings: the table has NaN or infinite values")

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def lookup(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors (len, d), known (len,) bool)`` for ``item_ids``; unknown items get zero vectors."""
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        known = np.array([i in self.rows for i in item_ids], dtype=bool)
        idx = [self.rows[i] for i in item_ids if i in self.rows]
        out[known] = self.table[idx]
        return out, known

    def save(self, path: str | Path) -> None:
        """Writes ``path`` (``.npz``): the table, the item ids in row order and the source."""
        order = sorted(self.rows, key=self.rows.get)
        np.savez(path, table=self.table[[self.rows[i] for i in order]], item_ids=np.array(order, dtype=object),
                 source=np.array(self.source))

    @classmethod
    def load(cls, path: str | Path) -> CFEmbeddings:
        with np.load(path, allow_pickle=True) as f:
            ids = [str(i) for i in f["item_ids"].tolist()]
            return cls(f["table"], {i: k for k, i in enumerate(ids)}, str(f["source"]))


def cf_from_interactions(training: TrainingInteractions, dim: int = 32, seed: int = 0) -> CFEmbeddings:
    """Matrix factors of the training interactions (``"svd"`` in the module doc): one row per item that occurs."""
    import torch

    items = sorted({i for seq in training.sequences.values() for i in seq})
    if len(items) < 2:
        raise ValueError(f"cf_from_interactions: the training interactions name {len(items)} item(s); need >= 2")
    dim = int(dim)
    if not 1 <= dim <= len(items):
        raise ValueError(f"cf_from_interactions: dim must be in [1, {len(items)}] (items), got {dim}")
    column = {item: k for k, item in enumerate(items)}
    users = [seq for seq in training.sequences.values() if seq]
    matrix = torch.zeros((len(users), len(items)), dtype=torch.float64)
    for u, seq in enumerate(users):
        matrix[u, [column[i] for i in set(seq)]] = 1.0
    matrix /= matrix.norm(dim=0, keepdim=True).clamp(min=1e-12)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = min(dim + 8, min(matrix.shape))
        _, s, v = torch.svd_lowrank(matrix, q=q, niter=6)
    table = (v[:, :dim] * s[:dim]).numpy()
    # the SVD's sign per component is arbitrary: fix it so that each component's largest entry is positive
    signs = np.sign(table[np.abs(table).argmax(axis=0), np.arange(table.shape[1])])
    return CFEmbeddings(table * signs, column, f"svd(dim={dim}, seed={seed}) of {training.num_interactions} "
                        "training interactions")


def cf_from_sasrec(model: Any) -> CFEmbeddings:
    """The item embedding table of a fitted :class:`~hanorec_trl.sasrec.SASRec` (its input/output item vectors)."""
    net, index = getattr(model, "net", None), getattr(model, "index", None)
    if net is None or index is None:
        raise ValueError("cf_from_sasrec: the SASRec is not fitted (call fit(training) first)")
    items = getattr(net, "items", None)
    if items is None or getattr(items, "weight", None) is None:
        raise TypeError("cf_from_sasrec: this SASRec exposes no item embedding table (net.items.weight); the class "
                        "changed: update hanorec_trl.item_tokens.cf")
    weight = items.weight.detach().float().cpu().numpy()
    return CFEmbeddings(weight, {item: int(k) for item, k in index.items()}, f"SASRec(hidden={weight.shape[1]})")


def cf_for_split(data: RecData, split: RecSplit, method: str = "svd", dim: int = 32, seed: int = 0,
                 **sasrec_options: Any) -> CFEmbeddings:
    """CF item embeddings fitted on the training interactions of ``split`` (no validation/test target reaches them).

    ``method="svd"`` (:func:`cf_from_interactions`) or ``"sasrec"`` (a :class:`~hanorec_trl.sasrec.SASRec` with
    ``hidden=dim``, ``seed`` and ``sasrec_options``, then :func:`cf_from_sasrec`).
    """
    from ..baselines import SASRec, TrainingInteractions

    if method not in CF_METHODS:
        raise ValueError(f"cf_for_split: method must be one of {CF_METHODS}, got {method!r}")
    training = TrainingInteractions.from_split(data, split)
    if method == "svd":
        if sasrec_options:
            raise ValueError(f"cf_for_split: options {sorted(sasrec_options)} apply to method='sasrec' only")
        return cf_from_interactions(training, dim=dim, seed=seed)
    return cf_from_sasrec(SASRec(hidden=dim, seed=seed, **sasrec_options).fit(training))
