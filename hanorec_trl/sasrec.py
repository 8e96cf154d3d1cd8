"""A compact SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) as a classical baseline.

It follows the baseline protocol of :mod:`hanorec_trl.baselines` (``name``, ``label``, ``fit(training)``,
``score(history, candidates)``), so the pipeline (``--baselines ... sasrec``) and
:func:`~hanorec_trl.baselines.evaluate_baseline` score it on the frozen test rows like popularity or item-kNN.

Model: item embeddings (shared between input and output, plus a per-item output bias) and learned positional
embeddings, ``num_blocks`` pre-LayerNorm causal self-attention blocks (multi-head attention + position-wise
feed-forward, residuals, dropout) and a final LayerNorm. The representation at the last history position scores a
candidate as ``<h, e_candidate> + b_candidate``.

Training (on a :class:`~hanorec_trl.data.interactions.TrainingInteractions`: the full data, i.e. nothing at or after
an evaluated target, or the data-matched LLM training windows): next-item prediction on every position of each
time-ordered sequence (a user's, or one training window's). A sequence is cut into consecutive windows of at most
``max_len`` (input, next item) pairs; the window boundaries move by a seeded random offset every epoch, so each pair
is predicted once per epoch with a context of 1 to ``max_len`` items. The
context always starts at position 0 of the window (right padding), so a short test history (the protocol's 5 items)
is seen exactly like the first positions of a training window. Loss: **sampled softmax cross-entropy** at every
position: the next item against ``num_negatives`` (default 256) catalogue items drawn uniformly for each batch and
shared by its positions (a draw equal to the target is masked), i.e. the same kind of negatives as the protocol's
uniform test candidates; ``num_negatives=None`` uses the full softmax over the catalogue (exact, ~5x slower on
ML-1M's 3,700 items on CPU). Not the original paper's binary loss with one negative: the softmax learns the
popularity prior (the output bias) that uniform test negatives reward. Adam.

Deterministic on CPU for a given ``seed`` and thread count (weight init, dropout, negatives and window
offsets/shuffles are seeded; the global torch RNG is restored after ``fit``). ``num_threads=1`` (default) during
``fit``: the model is small, and on a loaded 2-core machine two threads were 12x slower than one (oversubscribed
OpenMP); ``None`` keeps torch's setting. Measured on real ML-1M in ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # pragma: no cover
    from .data.interactions import TrainingInteractions

__all__ = ["SASRec"]

# The score of a candidate the model never saw (not in the training catalogue): below every real score.
UNKNOWN_ITEM_SCORE = -1e9


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm_attn, self.norm_ffn = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(attn.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class _SASRecNet(nn.Module):
    def __init__(self, num_items: int, hidden: int, heads: int, blocks: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items + 1, hidden, padding_idx=0)  # 0 = padding
        self.positions = nn.Embedding(max_len, hidden)
        self.bias = nn.Parameter(torch.zeros(num_items + 1))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.items.weight, std=hidden ** -0.5)
        nn.init.normal_(self.positions.weight, std=hidden ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states (batch, length, hidden) of right-padded item-id sequences; position t sees items 0..t."""
        x = self.items(seq) + self.positions(torch.arange(seq.shape[1], device=seq.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every real item (ids 1..N, in that order) for each row of ``hidden`` (rows, hidden)."""
        return hidden @ self.items.weight[1:].T + self.bias[1:]


class SASRec:
    """Self-attentive sequential recommender, fitted on a :class:`~hanorec_trl.data.interactions.TrainingInteractions`.

    Hyper-parameters (defaults fit real ML-1M, 487k interactions, in about two minutes on one CPU thread):
    ``hidden`` (embedding size), ``num_blocks``, ``num_heads``, ``max_len`` (longest context), ``dropout``,
    ``num_negatives`` (sampled softmax; ``None`` = full softmax), ``epochs``, ``batch_size`` (windows per step),
    ``lr`` (Adam), ``weight_decay``, ``seed``, ``num_threads`` (torch threads during ``fit``; ``None`` = unchanged),
    ``device``, ``progress`` (tqdm). After ``fit``: ``loss_history`` (mean loss per epoch), ``fit_seconds``.
    """

    name, label = "sasrec", "SASRec"

    def __init__(self, *, hidden: int = 64, num_blocks: int = 2, num_heads: int = 1, max_len: int = 50,
                 dropout: float = 0.2, num_negatives: int | None = 256, epochs: int = 10, batch_size: int = 32,
                 lr: float = 2e-3, weight_decay: float = 0.0, seed: int = 0, num_threads: int | None = 1,
                 device: str = "cpu", progress: bool = True) -> None:
        if hidden < 1 or num_heads < 1 or hidden % num_heads:
            raise ValueError(f"SASRec: hidden ({hidden}) must be a positive multiple of num_heads ({num_heads})")
        if num_blocks < 1 or max_len < 1 or epochs < 1 or batch_size < 1:
            raise ValueError("SASRec: num_blocks, max_len, epochs and batch_size must be at least 1")
        if num_negatives is not None and num_negatives < 1 or num_threads is not None and num_threads < 1:
            raise ValueError(f"SASRec: num_negatives and num_threads must be None or at least 1 (got "
                             f"{num_negatives}, {num_threads})")
        if not 0.0 <= dropout < 1.0 or lr <= 0 or weight_decay < 0:
            raise ValueError(f"SASRec: need 0 <= dropout < 1, lr > 0, weight_decay >= 0 (got {dropout}, {lr}, "
                             f"{weight_decay})")
        self.hidden, self.num_blocks, self.num_heads, self.max_len = hidden, num_blocks, num_heads, max_len
        self.dropout, self.num_negatives, self.epochs, self.batch_size = dropout, num_negatives, epochs, batch_size
        self.lr, self.weight_decay, self.seed, self.num_threads = lr, weight_decay, seed, num_threads
        self.device, self.progress = device, progress
        self.net: _SASRecNet | None = None

    # -- training ----------------------------------------------------------------------------------------------

    def _windows(self, sequences: list[np.ndarray], rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """(user, start, stop) slices of each user's (input, next item) pairs, at most ``max_len`` long, with a
        random offset of the boundaries."""
        windows = []
        for u, seq in enumerate(sequences):
            pairs = len(seq) - 1
            offset = int(rng.integers(0, self.max_len))
            for start in range(-offset, pairs, self.max_len):
                lo, hi = max(0, start), min(pairs, start + self.max_len)
                if hi > lo:
                    windows.append((u, lo, hi))
        return windows

    def _loss(self, net: _SASRecNet, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the next item (ids ``targets``) against the whole catalogue, or against
        ``num_negatives`` uniformly drawn items shared by the batch (a draw equal to the target is masked)."""
        if self.num_negatives is None:
            return F.cross_entropy(net.logits(hidden), targets - 1)
        num_items = net.bias.shape[0] - 1
        negatives = torch.randint(1, num_items + 1, (self.num_negatives,), device=hidden.device)
        positive = (hidden * net.items(targets)).sum(-1, keepdim=True) + net.bias[targets].unsqueeze(-1)
        negative = hidden @ net.items(negatives).T + net.bias[negatives]
        negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        logits = torch.cat([positive, negative], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """torch's thread count set to ``num_threads`` (fit and scoring), restored afterwards."""
        threads = torch.get_num_threads()
        if self.num_threads is not None and self.num_threads != threads:
            torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def fit(self, training: TrainingInteractions) -> SASRec:
        from tqdm.auto import tqdm

        items = list(dict.fromkeys(training.item_ids))
        known = set(items)
        items += sorted({i for seq in training.sequences.values() for i in seq if i not in known})
        self.index = {item: k + 1 for k, item in enumerate(items)}
        sequences = [np.asarray([self.index[i] for i in seq], dtype=np.int64)
                     for seq in training.sequences.values() if len(seq) >= 2]
        if not sequences:
            raise ValueError("SASRec.fit: no user has two or more training interactions, so there is no next item "
                             f"to learn from ({len(training.sequences)} users, {training.num_interactions} "
                             "interactions)")
        started = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        device = torch.device(self.device)
        with self._threads(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _SASRecNet(len(items), self.hidden, self.num_heads, self.num_blocks, self.max_len,
                             self.dropout).to(device)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            self.loss_history: list[float] = []
            net.train()
            windows = self._windows(sequences, rng)
            steps = math.ceil(len(windows) / self.batch_size)
            with tqdm(total=self.epochs * steps, desc="SASRec", unit="step", disable=not self.progress) as bar:
                for epoch in range(self.epochs):
                    if epoch:
                        windows = self._windows(sequences, rng)
                    order = rng.permutation(len(windows))
                    total, count = 0.0, 0
                    for b in range(0, len(order), self.batch_size):
                        batch = [windows[k] for k in order[b: b + self.batch_size]]
                        length = max(hi - lo for _, lo, hi in batch)
                        inputs = np.zeros((len(batch), length), dtype=np.int64)
                        targets = np.zeros((len(batch), length), dtype=np.int64)
                        for row, (u, lo, hi) in enumerate(batch):
                            inputs[row, : hi - lo] = sequences[u][lo:hi]
                            targets[row, : hi - lo] = sequences[u][lo + 1: hi + 1]
                        inputs_t = torch.from_numpy(inputs).to(device)
                        targets_t = torch.from_numpy(targets).to(device)
                        valid = targets_t > 0
                        loss = self._loss(net, net(inputs_t)[valid], targets_t[valid])
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        n = int(valid.sum())
                        total, count = total + loss.item() * n, count + n
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.3f}")
                    self.loss_history.append(total / count)
        net.eval()
        self.net = net
        self.fit_seconds = time.perf_counter() - started
        self._cache: dict[tuple[str, ...], torch.Tensor | None] = {}
        return self

    # -- scoring -----------------------------------------------------------------------------------------------

    def _hidden(self, history: Sequence[str]) -> torch.Tensor | None:
        key = tuple(history)
        if key not in self._cache:
            ids = [self.index[i] for i in key if i in self.index][-self.max_len:]
            if not ids:
                self._cache[key] = None
            else:
                with torch.inference_mode(), self._threads():
                    seq = torch.tensor([ids], dtype=torch.long, device=self.net.bias.device)
                    self._cache[key] = self.net(seq)[0, -1]
            if len(self._cache) > 8192:
                self._cache.clear()
                return self._hidden(history)
        return self._cache[key]

    def item_embeddings(self, item_ids: Sequence[str]) -> np.ndarray:
        """The learned item embedding rows (input = output table) of ``item_ids``, float32 ``[n, hidden]``: the
        collaborative item vectors :class:`~hanorec_trl.encoders.CollaborativeItemEncoder` can take lambda from."""
        if self.net is None:
            raise RuntimeError("SASRec.item_embeddings: call fit(training) first")
        unknown = [item for item in item_ids if item not in self.index]
        if unknown:
            raise KeyError(f"SASRec.item_embeddings: {len(unknown)} items were not in the training catalogue, e.g. "
                           f"{unknown[:5]}")
        rows = torch.tensor([self.index[item] for item in item_ids], dtype=torch.long)
        with torch.no_grad():
            return self.net.items.weight[rows.to(self.net.bias.device)].float().cpu().numpy()

    def score(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """``<h, e_c> + b_c`` for each candidate, ``h`` = the representation after the history's last item (its
        last ``max_len`` known items); an empty (or wholly unknown) history scores by the bias alone, an unknown
        candidate gets ``UNKNOWN_ITEM_SCORE``."""
        if self.net is None:
            raise RuntimeError("SASRec.score: call fit(training) first")
        hidden = self._hidden(history)
        ids = [self.index.get(c, 0) for c in candidates]
        with torch.inference_mode(), self._threads():
            idx = torch.tensor(ids, dtype=torch.long, device=self.net.bias.device)
            scores = self.net.bias[idx].clone()
            if hidden is not None:
                scores += self.net.items.weight[idx] @ hidden
        out = scores.double().cpu().numpy()
        out[np.asarray(ids) == 0] = UNKNOWN_ITEM_SCORE
        return out
