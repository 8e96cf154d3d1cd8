"""Offline data hardness lambda (HaRS, paper Eq. 4-6; choices the paper leaves open: ``docs/design.md``), on FAISS.

For every item j the index holds the fused unit vector ``e_j = normalize(normalize(h_j) + normalize(x_j))`` of its
text embedding ``h_j`` and image embedding ``x_j`` (``e_j = normalize(h_j)`` when the item has no image). For a
preference pair (chosen item w, rejected item l) and each anchor a in {w, l}:

* Eq. 4 -- :meth:`HardnessIndex.top_k`: the cosine scores ``c_a,1 >= ... >= c_a,K`` of the K items nearest to ``e_a``,
  the anchor itself excluded by id (a duplicate of the anchor is another item and stays);
* Eq. 5 -- ``Z_a = softmax(c_a / tau)``, :func:`topk_profiles`;
* Eq. 6 -- ``Delta = ||Z_w - Z_l||_2`` (rank-aligned; the mean over the pairs of a sample with several aligned pairs),
  :meth:`HardnessIndex.score`; ``lambda = sigmoid(Delta) / sigmoid(mean Delta)``, :func:`lambdas_from_deltas`.

:func:`add_hardness_column` adds lambda to a dataset of DPO rows, from an index, item embeddings or an item encoder.

Ablation "w/o SAM" (``mode="pairwise"``): ``Delta = 1 - cos(e_w, e_l)``.

Three index kinds, all inner product on unit vectors (= cosine):

* ``"flat"`` (default): exact. A FAISS ``IndexFlatIP`` holds the vectors; a batch of anchors is searched with blocked
  matrix products that compute each anchor-anchor block once and use it for both sides (half the work when the
  anchors cover the catalogue, as they do for a training set).
* ``"ivf"``: FAISS ``IndexIVFFlat`` (k-means lists, exact scores inside the ``ivf_nprobe`` probed lists), searched by
  grouping the anchors that probe each list into one matrix product. For catalogues of millions.
* ``"hnsw"``: FAISS ``IndexHNSWFlat`` graph, searched per anchor. Cheap per query, slow to build on few cores.

Whatever the index, the candidates it returns are re-scored exactly from the stored vectors and ordered by (score
descending, row ascending), so results do not depend on batching and equal scores resolve the same way every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
from tqdm.auto import tqdm

from .responsiveness import sigmoid

__all__ = [
    "HardnessIndex",
    "HardnessIndexConfig",
    "HardnessScores",
    "add_hardness_column",
    "lambda_ceiling",
    "lambda_spread",
    "lambdas_from_deltas",
    "topk_profiles",
]

INDEX_KINDS = ("flat", "ivf", "hnsw")
HARDNESS_MODES = ("topk", "pairwise")

# Rows per matrix-product block of the exact and IVF searches (a 4096 x 4096 float32 score block is 64 MiB).
_BLOCK = 4096
# Extra candidates fetched beyond K + 1 (the anchor itself) so that re-scoring can reorder near-ties at the boundary.
_CANDIDATE_MARGIN = 3
# How many offending rows / ids an error message lists before "... and N more".
_SHOWN = 10


@dataclass
class HardnessIndexConfig:
    """How :class:`HardnessIndex` builds and searches its FAISS index (all fields can be passed as keywords)."""

    index: str = field(
        default="flat",
        metadata={
            "help": "Index kind: 'flat' (exact, default; up to a few 100k items), 'ivf' (IVF-Flat, approximate, for "
            "catalogues of millions) or 'hnsw' (HNSW graph, approximate; slow to build on few cores).",
            "choices": list(INDEX_KINDS),
        },
    )
    ivf_nlist: int | None = field(
        default=None,
        metadata={"help": "IVF: number of k-means lists; None = round(sqrt(num_items)), at least 1."},
    )
    ivf_nprobe: int = field(
        default=16,
        metadata={"help": "IVF: lists searched per anchor. More = higher recall, proportionally slower search."},
    )
    ivf_train_size: int | None = field(
        default=None,
        metadata={"help": "IVF: items sampled (seeded) to train k-means; None = min(num_items, 64 * nlist)."},
    )
    ivf_niter: int = field(default=10, metadata={"help": "IVF: k-means iterations."})
    hnsw_m: int = field(
        default=32, metadata={"help": "HNSW: neighbours per node (graph degree; memory ~ 8*M bytes/item)."}
    )
    hnsw_ef_construction: int = field(default=80, metadata={"help": "HNSW: candidate list size while building."})
    hnsw_ef_search: int = field(
        default=128, metadata={"help": "HNSW: candidate list size while searching (raised to K + 4 if smaller)."}
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the IVF training sample and k-means (HNSW uses FAISS's fixed level seed)."},
    )
    deterministic: bool = field(
        default=True,
        metadata={
            "help": "Build HNSW single-threaded: its multi-threaded build depends on thread timing, so lambda could "
            "change from run to run. Flat and IVF are deterministic either way."
        },
    )
    batch_size: int = field(
        default=65536,
        metadata={"help": "Anchors searched per batch (IVF/HNSW) and re-scored per chunk; bounds the search memory."},
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "FAISS OpenMP threads during build and search; None = FAISS's default."}
    )
    show_progress: bool | None = field(
        default=None,
        metadata={"help": "tqdm progress bars; None = only for long jobs (>= 50,000 items or anchors)."},
    )

    def __post_init__(self):
        if self.index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}, got {self.index!r}")
        positive = {
            "ivf_nprobe": self.ivf_nprobe,
            "ivf_niter": self.ivf_niter,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "hnsw_ef_search": self.hnsw_ef_search,
            "batch_size": self.batch_size,
        }
        for optional in ("ivf_nlist", "ivf_train_size", "num_threads"):
            if getattr(self, optional) is not None:
                positive[optional] = getattr(self, optional)
        bad = {name: value for name, value in positive.items() if not _is_int(value) or value < 1}
        if bad:
            raise ValueError(f"these HardnessIndexConfig fields must be positive integers: {bad}")


@dataclass(frozen=True)
class HardnessScores:
    """The result of :meth:`HardnessIndex.score`: lambda (Eq. 6) per sample, its Delta, and the mean Delta used."""

    lambdas: np.ndarray  # float32 [num_samples]
    deltas: np.ndarray  # float64 [num_samples]
    delta_mean: float


class HardnessIndex:
    """Fused item embeddings in a FAISS inner-product index, and the hardness lambda of preference pairs (Eq. 4-6).

    Args:
        text_emb: ``[num_items, d]`` real array, row j = item j's text (title) embedding ``h_j``. Not modified.
        image_emb: ``None`` or an array of the same shape with the image embeddings ``x_j``; an all-zero row marks an
            item without an image (its fused embedding is then ``normalize(h_j)``).
        config: a :class:`HardnessIndexConfig`; keyword ``options`` override its fields (e.g. ``index="ivf"``).

    Rows with NaN/inf, all-zero text rows and rows whose text and image embeddings cancel out are refused, named.
    """

    def __init__(
        self,
        text_emb,
        image_emb=None,
        *,
        config: HardnessIndexConfig | None = None,
        **options,
    ):
        self.config = _config_with(config, options)
        text = _as_embedding_array(text_emb, "text_emb")
        image = None if image_emb is None else _as_embedding_array(image_emb, "image_emb")
        if image is not None and image.shape != text.shape:
            raise ValueError(
                f"image_emb has shape {image.shape} but text_emb has shape {text.shape}: both must be "
                "[num_items, d] with row j = item j, from one encoder (use an all-zero row for an item without image)"
            )
        self.num_items, self.dim = text.shape
        if self.num_items < 2:
            raise ValueError(
                f"a hardness index needs at least 2 items (an anchor and a neighbour), got {self.num_items}"
            )
        self.has_image = np.zeros(self.num_items, dtype=bool)
        with _faiss_threads(self.config.num_threads):
            if self.config.index == "flat":
                self._build_flat(text, image)
            elif self.config.index == "ivf":
                self._build_ivf(text, image)
            else:
                self._build_hnsw(text, image)

    # ------------------------------------------------------------------ build

    def _fused_chunks(self, text, image) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, e[start:start+chunk])``: the validated fused unit vectors (Eq. 4), float32."""
        chunk = max(1, (32 << 20) // (8 * self.dim))  # ~32 MiB of float64 per chunk
        problems = {
            "non-finite values": [],
            "an all-zero text embedding": [],
            "text and image embeddings that cancel": [],
        }
        for start in range(0, self.num_items, chunk):
            stop = min(start + chunk, self.num_items)
            rows = np.arange(start, stop)
            h = np.asarray(text[start:stop], dtype=np.float64)
            bad = ~np.isfinite(h).all(axis=1)
            h_norm = np.sqrt(np.einsum("ij,ij->i", h, h))
            fused = h / np.where(h_norm > 0, h_norm, 1.0)[:, None]
            problems["an all-zero text embedding"].extend(rows[(h_norm == 0) & ~bad])
            if image is not None:
                x = np.asarray(image[start:stop], dtype=np.float64)
                bad |= ~np.isfinite(x).all(axis=1)
                x_norm = np.sqrt(np.einsum("ij,ij->i", x, x))
                with_image = (x_norm > 0) & np.isfinite(x_norm)
                self.has_image[start:stop] = with_image
                fused[with_image] += x[with_image] / x_norm[with_image, None]
            problems["non-finite values"].extend(rows[bad])
            f_norm = np.sqrt(np.einsum("ij,ij->i", fused, fused))
            problems["text and image embeddings that cancel"].extend(rows[(f_norm < 1e-6) & (h_norm > 0) & ~bad])
            yield start, (fused / np.where(f_norm > 0, f_norm, 1.0)[:, None]).astype(np.float32)
        messages = [f"{len(rows)} rows with {what} ({_listed(rows)})" for what, rows in problems.items() if rows]
        if messages:
            raise ValueError(
                "cannot build the hardness index: " + "; ".join(messages) + ". Row j is item j of text_emb/image_emb; "
                "fix or drop these items (an item without an image needs an all-zero image row, not NaN)."
            )

    def _fused_matrix(self, text, image) -> np.ndarray:
        fused = np.empty((self.num_items, self.dim), dtype=np.float32)
        for start, chunk in self._fused_chunks(text, image):
            fused[start : start + len(chunk)] = chunk
        return fused

    def _build_flat(self, text, image):
        self.faiss_index = faiss.IndexFlatIP(self.dim)
        # Size FAISS's storage once and write the fused vectors straight into it: one copy of the catalogue in memory.
        self.faiss_index.codes.resize(self.num_items * self.dim * 4)
        self.faiss_index.ntotal = self.num_items
        self._vectors = faiss.rev_swig_ptr(self.faiss_index.get_xb(), self.num_items * self.dim).reshape(
            self.num_items, self.dim
        )
        for start, chunk in self._fused_chunks(text, image):
            self._vectors[start : start + len(chunk)] = chunk

    def _build_hnsw(self, text, image):
        cfg = self.config
        fused = self._fused_matrix(text, image)
        self.faiss_index = faiss.IndexHNSWFlat(self.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        self.faiss_index.hnsw.efConstruction = cfg.hnsw_ef_construction
        threads = 1 if cfg.deterministic else cfg.num_threads
        with _faiss_threads(threads):
            starts = range(0, self.num_items, cfg.batch_size)
            for start in self._progress(starts, "HNSW build", long=self.num_items >= 50_000):
                self.faiss_index.add(fused[start : start + cfg.batch_size])
        del fused
        storage = faiss.downcast_index(self.faiss_index.storage)
        self._vectors = faiss.rev_swig_ptr(storage.get_xb(), self.num_items * self.dim).reshape(
            self.num_items, self.dim
        )

    def _build_ivf(self, text, image):
        cfg = self.config
        nlist = min(cfg.ivf_nlist or max(1, round(math.sqrt(self.num_items))), self.num_items)
        fused = self._fused_matrix(text, image)
        quantizer = faiss.IndexFlatIP(self.dim)
        self.faiss_index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.faiss_index.cp.seed = cfg.seed
        self.faiss_index.cp.niter = cfg.ivf_niter
        self.faiss_index.cp.spherical = True
        train_size = min(self.num_items, cfg.ivf_train_size or 64 * nlist)
        if train_size < nlist:
            raise ValueError(
                f"ivf_train_size={train_size} is smaller than ivf_nlist={nlist}: k-means needs >= 1 item per list"
            )
        self.faiss_index.cp.max_points_per_centroid = max(1, -(-train_size // nlist))  # FAISS must not subsample again
        self.faiss_index.cp.min_points_per_centroid = 1  # small catalogues: no "provide more points" message
        sample = np.sort(np.random.default_rng(cfg.seed).choice(self.num_items, size=train_size, replace=False))
        self.faiss_index.train(fused[sample])
        # One add: every inverted list is sized exactly once.
        self.faiss_index.add(fused)
        del fused
        self.faiss_index.make_direct_map()
        self.faiss_index.nprobe = min(cfg.ivf_nprobe, nlist)
        self._vectors = None

    # ------------------------------------------------------------------ vectors and search

    def embeddings(self, rows) -> np.ndarray:
        """The fused unit vectors ``e_j`` (Eq. 4) of ``rows``, float32 ``[len(rows), d]`` (a copy)."""
        rows = self._check_rows(np.asarray(rows, dtype=np.int64).ravel(), "rows")
        return self._gather(rows)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        if self._vectors is not None:
            return self._vectors[rows]
        return self.faiss_index.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))

    def top_k(self, rows, k: int = 10, *, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 4: the K items nearest to each of ``rows``, the row itself excluded (by id).

        Returns ``(neighbours, scores)``: int64 and float32 ``[len(rows), k]``, scores (cosines) descending, equal
        scores by ascending row. ``exact=True`` searches exhaustively whatever the index kind (e.g. to measure recall).
        """
        rows = self._check_rows(np.asarray(rows, dtype=np.int64).ravel(), "rows")
        self._check_k(k)
        anchors, position = np.unique(rows, return_inverse=True)
        with _faiss_threads(self.config.num_threads):
            neighbours, scores = self._anchor_top_k(anchors, k, exact=exact)
        return neighbours[position], scores[position]

    def _anchor_top_k(self, anchors: np.ndarray, k: int, *, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-K of distinct sorted ``anchors``: candidates from the index, then exact re-scoring and selection."""
        n_candidates = min(self.num_items, k + 1 + _CANDIDATE_MARGIN)
        if exact or self.config.index == "flat":
            candidates = self._exhaustive_candidates(anchors, n_candidates)
        elif self.config.index == "ivf":
            candidates = self._ivf_candidates(anchors, n_candidates, probe_all=False)
        else:
            candidates = self._hnsw_candidates(anchors, n_candidates)
        neighbours, scores = self._select(anchors, candidates, k)
        short = np.flatnonzero(~np.isfinite(scores).all(axis=1))
        if len(short):
            # An approximate index can return fewer than K other items (small probed lists): search those exactly.
            warnings.warn(
                f"{len(short)} of {len(anchors)} anchors got fewer than K={k} neighbours from the "
                f"{self.config.index!r} index; they were searched exhaustively (raise ivf_nprobe / hnsw_ef_search)",
                stacklevel=3,
            )
            exact_candidates = self._exhaustive_candidates(anchors[short], n_candidates)
            neighbours[short], scores[short] = self._select(anchors[short], exact_candidates, k)
        return neighbours, scores

    def _select(self, anchors, candidates, k) -> tuple[np.ndarray, np.ndarray]:
        """Re-score candidates exactly, drop the anchor itself and invalid ids, keep the K best (ties: lower row)."""
        neighbours = np.empty((len(anchors), k), dtype=np.int64)
        scores = np.empty((len(anchors), k), dtype=np.float32)
        chunk = max(1, (64 << 20) // (4 * self.dim * candidates.shape[1]))
        for start in range(0, len(anchors), chunk):
            stop = start + chunk
            ids = candidates[start:stop]
            valid = (ids >= 0) & (ids != anchors[start:stop, None])
            safe_ids = np.where(valid, ids, 0)
            query = self._gather(anchors[start:stop])
            cand_vectors = self._gather(safe_ids.ravel()).reshape(*ids.shape, self.dim)
            s = np.einsum("acd,ad->ac", cand_vectors, query)
            s[~valid] = -np.inf
            order = np.lexsort((np.where(valid, ids, np.iinfo(np.int64).max), -s), axis=-1)[:, :k]
            neighbours[start:stop] = np.take_along_axis(safe_ids, order, axis=1)
            scores[start:stop] = np.take_along_axis(s, order, axis=1)
        return neighbours, scores

    def _exhaustive_candidates(self, anchors: np.ndarray, n_candidates: int) -> np.ndarray:
        """Exact top-``n_candidates`` ids by blocked matrix products into FAISS result heaps.

        Anchor-anchor blocks are computed once and fed to both anchors' heaps (upper triangle only).
        """
        if self._vectors is None:  # IVF keeps its vectors in the inverted lists: scan every list
            return self._ivf_candidates(anchors, n_candidates, probe_all=True)
        heap = faiss.ResultHeap(len(anchors), n_candidates, keep_max=True)
        is_anchor = np.zeros(self.num_items, dtype=bool)
        is_anchor[anchors] = True
        others = np.flatnonzero(~is_anchor)
        anchor_blocks = [np.arange(s, min(s + _BLOCK, len(anchors))) for s in range(0, len(anchors), _BLOCK)]
        other_blocks = [others[s : s + _BLOCK] for s in range(0, len(others), _BLOCK)]
        tasks = [(i, j) for i in range(len(anchor_blocks)) for j in range(i, len(anchor_blocks))]
        tasks += [(i, -1 - j) for i in range(len(anchor_blocks)) for j in range(len(other_blocks))]
        long = len(anchors) * self.num_items * self.dim >= 10**11  # about a second of matrix products or more
        for i, j in self._progress(tasks, "exact Top-K (blocks)", long=long):
            block_i = anchor_blocks[i]
            query = self._vectors[anchors[block_i]]
            if j >= 0:
                block_j = anchor_blocks[j]
                block_scores = query @ self._vectors[anchors[block_j]].T
                heap.add_result_subset(block_i, block_scores, anchors[block_j])
                if j != i:
                    heap.add_result_subset(block_j, _transposed(block_scores), anchors[block_i])
            else:
                items = other_blocks[-1 - j]
                heap.add_result_subset(block_i, query @ self._vectors[items].T, items)
        heap.finalize()
        return heap.I

    def _ivf_candidates(self, anchors: np.ndarray, n_candidates: int, *, probe_all: bool) -> np.ndarray:
        """IVF search with one matrix product per (inverted list, block of anchors probing it)."""
        ivf = self.faiss_index
        invlists = ivf.invlists
        nprobe = ivf.nlist if probe_all else ivf.nprobe
        candidates = np.empty((len(anchors), n_candidates), dtype=np.int64)
        batch = self.config.batch_size
        starts = range(0, len(anchors), batch)
        for start in self._progress(starts, "IVF Top-K (anchor batches)", long=len(anchors) >= 50_000):
            batch_anchors = anchors[start : start + batch]
            query = self._gather(batch_anchors)
            heap = faiss.ResultHeap(len(batch_anchors), n_candidates, keep_max=True)
            if probe_all:
                probes = None
            else:
                _, probes = ivf.quantizer.search(query, nprobe)
                flat = probes.ravel()
                order = np.argsort(flat, kind="stable")
                probing_anchor = order // nprobe
                bounds = np.searchsorted(flat[order], np.arange(ivf.nlist + 1))
            for list_no in range(ivf.nlist):
                size = invlists.list_size(list_no)
                if size == 0:
                    continue
                if probes is None:
                    who = np.arange(len(batch_anchors))
                else:
                    who = probing_anchor[bounds[list_no] : bounds[list_no + 1]]
                    if len(who) == 0:
                        continue
                ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
                codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * invlists.code_size)
                vectors = codes.view(np.float32).reshape(size, self.dim)
                for s in range(0, len(who), _BLOCK):
                    sub = who[s : s + _BLOCK]
                    heap.add_result_subset(sub, query[sub] @ vectors.T, ids)
            heap.finalize()
            candidates[start : start + len(batch_anchors)] = heap.I
        return candidates

    def _hnsw_candidates(self, anchors: np.ndarray, n_candidates: int) -> np.ndarray:
        self.faiss_index.hnsw.efSearch = max(self.config.hnsw_ef_search, n_candidates + 1)
        candidates = np.empty((len(anchors), n_candidates), dtype=np.int64)
        batch = self.config.batch_size
        starts = range(0, len(anchors), batch)
        for start in self._progress(starts, "HNSW Top-K (anchor batches)", long=len(anchors) >= 50_000):
            _, ids = self.faiss_index.search(self._gather(anchors[start : start + batch]), n_candidates)
            candidates[start : start + len(ids)] = ids
        return candidates

    # ------------------------------------------------------------------ hardness

    def _sample_deltas(self, chosen_rows, rejected_rows, pairs_per_sample, k, temperature, mode) -> np.ndarray:
        """Delta per sample from flattened aligned pair rows and the number of pairs of each sample."""
        if mode not in HARDNESS_MODES:
            raise ValueError(f"mode must be one of {HARDNESS_MODES}, got {mode!r}")
        empty = np.flatnonzero(pairs_per_sample == 0)
        if len(empty):
            raise ValueError(f"samples {_listed(empty)} have no (chosen, rejected) pair")
        sample_of_pair = np.repeat(np.arange(len(pairs_per_sample)), pairs_per_sample)
        self._check_rows(chosen_rows, "chosen", sample_of_pair)
        self._check_rows(rejected_rows, "rejected", sample_of_pair)
        if mode == "topk":
            self._check_k(k)
            if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
                raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
            pair_deltas = self._topk_pair_deltas(chosen_rows, rejected_rows, k, float(temperature))
        else:
            pair_deltas = self._pairwise_deltas(chosen_rows, rejected_rows)
        sums = np.bincount(sample_of_pair, weights=pair_deltas, minlength=len(pairs_per_sample))
        return sums / pairs_per_sample

    def _topk_pair_deltas(self, chosen_rows, rejected_rows, k, temperature) -> np.ndarray:
        anchors = np.unique(np.concatenate([chosen_rows, rejected_rows]))  # each distinct item searched once
        with _faiss_threads(self.config.num_threads):
            _, scores = self._anchor_top_k(anchors, k)
        profiles = topk_profiles(scores, temperature)
        if k > 1 and len(anchors) > 1 and (profiles == profiles[0]).all():
            shape = "one-hot" if profiles[0, 0] == 1.0 else ("uniform" if profiles[0, 0] == 1.0 / k else "equal")
            raise ValueError(
                f"temperature={temperature!r} makes the Top-K profile Z = softmax(c / temperature) (Eq. 5) {shape} "
                f"and identical for all {len(anchors)} items (Top-K cosines between {float(scores.min()):.4f} and "
                f"{float(scores.max()):.4f}), so Delta = 0 and lambda = 1 for every sample: the hardness would change "
                "nothing. Choose a temperature near the spread of the cosines (the paper: 1.0; 0.05-0.1 spreads "
                "lambda more)"
            )
        z_w = profiles[np.searchsorted(anchors, chosen_rows)]
        z_l = profiles[np.searchsorted(anchors, rejected_rows)]
        return np.linalg.norm(z_w - z_l, axis=1)  # Eq. 6, rank-aligned

    def _pairwise_deltas(self, chosen_rows, rejected_rows) -> np.ndarray:
        out = np.empty(len(chosen_rows), dtype=np.float64)
        chunk = max(1, (64 << 20) // (8 * self.dim))
        for start in range(0, len(chosen_rows), chunk):
            w = self._gather(chosen_rows[start : start + chunk])
            l = self._gather(rejected_rows[start : start + chunk])  # noqa: E741
            out[start : start + chunk] = 1.0 - np.einsum("pd,pd->p", w, l).astype(np.float64)
        return out

    def score(
        self,
        chosen,
        rejected,
        k: int = 10,
        temperature: float = 1.0,
        mode: str = "topk",
        delta_mean: float | None = None,
    ) -> HardnessScores:
        """lambda (float32), Delta (float64) and the mean Delta used, per sample (Eq. 6; ``1 - cos(e_w, e_l)`` for
        ``mode="pairwise"``).

        ``chosen``/``rejected``: one item row per sample (ints), or per sample an equal-length sequence of rows
        (several aligned pairs; Delta is then the mean over them). ``delta_mean=None`` uses the mean Delta of these
        samples: score the whole training set, then validation/test samples with the training set's ``delta_mean``.
        """
        chosen_rows, chosen_counts = _flatten_samples(chosen, "chosen")
        rejected_rows, rejected_counts = _flatten_samples(rejected, "rejected")
        if len(chosen_counts) != len(rejected_counts):
            raise ValueError(f"chosen has {len(chosen_counts)} samples but rejected has {len(rejected_counts)}")
        mismatched = np.flatnonzero(chosen_counts != rejected_counts)
        if len(mismatched):
            raise ValueError(
                f"samples {_listed(mismatched)} have chosen and rejected sequences of different lengths; aligned "
                "pairs need equal lengths"
            )
        deltas = self._sample_deltas(chosen_rows, rejected_rows, chosen_counts, k, temperature, mode)
        lambdas, used_mean = lambdas_from_deltas(deltas, delta_mean)
        return HardnessScores(lambdas=lambdas, deltas=deltas, delta_mean=used_mean)

    # ------------------------------------------------------------------ helpers

    def _check_k(self, k):
        if not _is_int(k) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k >= self.num_items:
            raise ValueError(
                f"k={k} but the catalogue has {self.num_items} items: an anchor has only {self.num_items - 1} other "
                f"items, so k must be at most {self.num_items - 1}"
            )

    def _check_rows(self, rows: np.ndarray, what: str, sample_of_pair: np.ndarray | None = None) -> np.ndarray:
        bad = (rows < 0) | (rows >= self.num_items)
        if bad.any():
            where = np.flatnonzero(bad)
            detail = _listed(rows[where])
            if sample_of_pair is not None:
                detail += f" in samples {_listed(np.unique(sample_of_pair[where]))}"
            raise IndexError(f"{what} item rows out of range [0, {self.num_items}): {detail}")
        return rows

    def _progress(self, iterable, desc: str, *, long: bool):
        show = long if self.config.show_progress is None else self.config.show_progress
        return tqdm(iterable, desc=desc, disable=not show, leave=False)

    def __repr__(self):
        return (
            f"HardnessIndex(num_items={self.num_items}, dim={self.dim}, index={self.config.index!r}, "
            f"items_with_image={int(self.has_image.sum())})"
        )


def topk_profiles(scores, temperature: float = 1.0) -> np.ndarray:
    """Eq. 5: ``Z = softmax(c / tau)`` of each row of Top-K cosines (sorted descending), float64 ``[n, K]``."""
    profiles = np.asarray(scores, dtype=np.float64) / temperature  # a new array: the steps below work in place
    profiles -= profiles.max(axis=-1, keepdims=True)
    np.exp(profiles, out=profiles)
    profiles /= profiles.sum(axis=-1, keepdims=True)
    return profiles


def lambda_ceiling(k: int | None = None) -> float:
    """The largest possible ``lambda_max / lambda_min`` over any set of samples, for any embedding.

    Delta (Eq. 6) is the L2 distance of two probability vectors, so ``0 <= Delta <= sqrt(2)``, and lambda
    ``= sigmoid(Delta) / sigmoid(mean Delta)`` gives ``lambda_max / lambda_min <= sigmoid(sqrt 2) / sigmoid(0) =
    1.609`` (``k=None``). The Top-K profiles are sorted (rank-aligned), which tightens it: the sorted distributions
    over K ranks are the convex hull of ``(1/j, ..., 1/j, 0, ...)`` (j = 1..K), the distance is largest between the
    one-hot and the uniform profile, ``sqrt(1 - 1/K)``, so with ``k`` the ceiling is ``sigmoid(sqrt(1 - 1/K)) /
    sigmoid(0)`` (1.442 for K = 10). ``docs/hardness.md`` derives both."""
    if k is None:
        bound = math.sqrt(2.0)
    elif _is_int(k) and k >= 1:
        bound = math.sqrt(1.0 - 1.0 / k)
    else:
        raise ValueError(f"k must be None or a positive integer, got {k!r}")
    return float(sigmoid(bound) / sigmoid(0.0))


def lambda_spread(lambdas) -> dict[str, float]:
    """How far lambda spreads: ``min``, ``p1``, ``p5``, ``p25``, ``median``, ``p75``, ``p95``, ``p99``, ``max``,
    ``mean``, ``std`` and ``max_over_min`` (compare it with :func:`lambda_ceiling`), plus ``count``."""
    values = np.asarray(lambdas, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"lambda_spread needs a non-empty array of finite positive lambdas, got {values.size} values")
    names = ("min", "p1", "p5", "p25", "median", "p75", "p95", "p99", "max")
    quantiles = np.quantile(values, (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0))
    spread = {name: float(q) for name, q in zip(names, quantiles)}
    spread.update(mean=float(values.mean()), std=float(values.std()), max_over_min=float(values.max() / values.min()),
                  count=int(values.size))
    return spread


def lambdas_from_deltas(deltas, delta_mean: float | None = None) -> tuple[np.ndarray, float]:
    """Eq. 6 right: ``lambda = sigmoid(Delta) / sigmoid(delta_mean)``; returns ``(lambda float32, delta_mean used)``.

    ``delta_mean=None`` uses the mean of ``deltas`` (the training set's; reuse it for validation/test pairs).
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    if not np.isfinite(deltas).all():
        raise ValueError(f"non-finite Delta at samples {_listed(np.flatnonzero(~np.isfinite(deltas)))}")
    if delta_mean is None:
        if deltas.size == 0:
            raise ValueError("no samples: the mean Delta is undefined (pass delta_mean to score an empty set)")
        delta_mean = float(deltas.mean())
    elif not (isinstance(delta_mean, (int, float, np.floating)) and math.isfinite(delta_mean) and delta_mean >= 0):
        raise ValueError(f"delta_mean must be a finite number >= 0 (a mean of Deltas), got {delta_mean!r}")
    lambdas = sigmoid(deltas) / sigmoid(float(delta_mean))
    return lambdas.astype(np.float32), float(delta_mean)


def add_hardness_column(
    dataset,
    source,
    item_rows: Mapping | None = None,
    *,
    item_ids: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    images: Sequence | None = None,
    chosen_column: str = "chosen_item",
    rejected_column: str = "rejected_item",
    column: str = "hano_lambda",
    k: int = 10,
    temperature: float = 1.0,
    mode: str = "topk",
    delta_mean: float | None = None,
    overwrite: bool = False,
    index_options: dict | None = None,
    cache_dir=None,
    use_cache: bool = True,
    progress: bool = True,
):
    """Add the float32 column ``column`` (lambda, Eq. 4-6) to a ``datasets.Dataset`` of DPO rows.

    ``source`` is one of

    * a :class:`HardnessIndex` over the item embeddings;
    * item embeddings: an :class:`~hanorec_trl.encoders.ItemEmbeddings` (from
      :func:`~hanorec_trl.encoders.encode_items`; its ``item_rows`` is the default) or a ``(text, image)`` pair of
      ``[num_items, d]`` arrays (``image`` may be None); a :class:`HardnessIndex` is built with ``index_options``;
    * an item encoder (:class:`~hanorec_trl.encoders.ItemEncoder`) with the item table ``item_ids``, ``titles`` and
      optionally ``images``: the items are encoded first (cached under ``cache_dir`` unless ``use_cache=False``).

    Each row's ``chosen_column``/``rejected_column`` hold one item id each, or two equal-length lists of ids
    (several aligned pairs). Ids are strings or integers, of the type of ``item_rows``' keys; ``item_rows`` maps
    them to rows of the embeddings, and ``item_rows=None`` means the ids are the rows (integers). Returns
    ``(dataset_with_column, delta_mean_used)``: score the training set with ``delta_mean=None`` and validation/test
    sets with the training set's value.
    """
    missing = [name for name in (chosen_column, rejected_column) if name not in dataset.column_names]
    if missing:
        raise KeyError(f"dataset has no column(s) {missing}; its columns are {dataset.column_names}")
    if column in dataset.column_names and not overwrite:
        raise ValueError(f"dataset already has a column {column!r}; pass overwrite=True to replace it")
    index, item_rows = _index_and_rows(source, item_rows, item_ids, titles, images, index_options,
                                       dict(cache_dir=cache_dir, use_cache=use_cache, progress=progress))
    table = dataset.select_columns([chosen_column, rejected_column]).to_dict()
    chosen, chosen_counts = _ids_to_rows(table[chosen_column], chosen_column, item_rows, index.num_items)
    rejected, rejected_counts = _ids_to_rows(table[rejected_column], rejected_column, item_rows, index.num_items)
    mismatched = np.flatnonzero(chosen_counts != rejected_counts)
    if len(mismatched):
        first = int(mismatched[0])
        raise ValueError(
            f"rows {_listed(mismatched)} have {chosen_column!r} and {rejected_column!r} of different lengths (row "
            f"{first}: {chosen_counts[first]} vs {rejected_counts[first]}); aligned pairs need equal-length lists"
        )
    scores = index.score(_per_sample(chosen, chosen_counts), _per_sample(rejected, rejected_counts), k=k,
                         temperature=temperature, mode=mode, delta_mean=delta_mean)
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    from datasets import Value

    dataset = dataset.add_column(column, scores.lambdas, feature=Value("float32"))
    return dataset, scores.delta_mean


# ---------------------------------------------------------------------- module helpers


def _config_with(config: HardnessIndexConfig | None, options: dict) -> HardnessIndexConfig:
    config = config or HardnessIndexConfig()
    names = {f.name for f in dataclasses.fields(HardnessIndexConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown HardnessIndex option(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(config, **options) if options else config


def _as_embedding_array(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (TypeError, RuntimeError) as error:
        raise TypeError(
            f"{name} must be a [num_items, d] array of real numbers (a torch bf16 tensor: use .float().cpu().numpy()); "
            f"got {type(values).__name__}: {error}"
        ) from None
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must be a [num_items, d] array of real numbers, got shape {array.shape} {array.dtype}"
        )
    return array


def _flatten_samples(values, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of all pairs (int64) and pairs per sample, from ints or per-sample sequences of ints."""
    try:
        array = np.asarray(values)
    except ValueError:  # ragged: samples with different numbers of pairs
        array = None
    if array is not None and array.dtype.kind in "iu" and array.ndim in (1, 2):
        counts = np.full(array.shape[0], 1 if array.ndim == 1 else array.shape[1], dtype=np.int64)
        return array.astype(np.int64, copy=False).ravel(), counts
    rows: list[int] = []
    counts = np.empty(len(values), dtype=np.int64)
    for sample, value in enumerate(values):
        items = [value] if _is_int(value) else value
        if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, np.ndarray)):
            raise TypeError(
                f"{name}[{sample}] must be an item row (int) or a sequence of item rows, got {type(value).__name__} "
                f"{value!r} (map item ids to rows first, e.g. with add_hardness_column)"
            )
        for item in items:
            if not _is_int(item):
                raise TypeError(f"{name}[{sample}] contains {item!r} ({type(item).__name__}); item rows are integers")
        rows.extend(int(item) for item in items)
        counts[sample] = len(items)
    return np.asarray(rows, dtype=np.int64), counts


def _index_and_rows(source, item_rows, item_ids, titles, images, index_options, encode_options):
    """The :class:`HardnessIndex` and the id -> row map for :func:`add_hardness_column`'s ``source``."""
    if isinstance(source, HardnessIndex):
        if index_options:
            raise ValueError("index_options apply when add_hardness_column builds the index; source is an index")
        return source, item_rows
    from .encoders import ItemEmbeddings, ItemEncoder, encode_items

    if isinstance(source, ItemEncoder):
        if item_ids is None or (titles is None and not source.encodes_item_ids):
            raise ValueError("with an item encoder, add_hardness_column needs the item table: item_ids= and titles= "
                             "(and images= for image embeddings; item_ids= alone for an encoder keyed by item id)")
        source = encode_items(source, item_ids, titles, images, **encode_options)
    if isinstance(source, ItemEmbeddings):
        text, image = source.text, source.image
        item_rows = source.item_rows if item_rows is None else item_rows
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        text, image = source
    else:
        raise TypeError(
            "add_hardness_column takes a HardnessIndex, item embeddings (ItemEmbeddings or a (text, image) pair of "
            f"arrays) or an ItemEncoder with item_ids/titles/images; got {type(source).__name__}"
        )
    return HardnessIndex(text, image, **(index_options or {})), item_rows


def _per_sample(rows: np.ndarray, counts: np.ndarray):
    """Flattened pair rows back into what :meth:`HardnessIndex.score` takes: a 1-D (one pair per sample) or 2-D
    (the same number of pairs per sample) integer array, else one list of rows per sample."""
    if len(counts) and (counts == counts[0]).all():
        return rows if counts[0] == 1 else rows.reshape(len(counts), int(counts[0]))
    return np.split(rows, np.cumsum(counts)[:-1]) if len(counts) else rows


def _ids_to_rows(values, column: str, item_rows: Mapping | None, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset item ids (or lists of ids) -> rows (int64, all pairs flattened) and ids per dataset row.

    The ids are of the type of ``item_rows``' keys (strings unless the keys are integers); ``item_rows=None``: the
    ids are the rows."""
    as_rows = item_rows is None
    keys_are_ints = as_rows or (len(item_rows) > 0 and _is_int(next(iter(item_rows))))
    id_type, kind = ((int, np.integer), "integers") if keys_are_ints else (str, "strings")
    is_id = (lambda v: _is_int(v)) if keys_are_ints else (lambda v: isinstance(v, str))
    rows: list[int] = []
    counts = np.empty(len(values), dtype=np.int64)
    unknown: dict = {}
    out_of_range: dict = {}
    for row, value in enumerate(values):
        ids = [value] if isinstance(value, id_type) and not isinstance(value, bool) else value
        if not isinstance(ids, (list, tuple)) or not all(is_id(item) for item in ids):
            source = "item rows (item_rows=None)" if as_rows else "the keys of item_rows"
            raise TypeError(
                f"row {row} of column {column!r} holds {value!r}: item ids must be {kind} (like {source}), or lists "
                f"of {kind} for several aligned pairs"
            )
        if not ids:
            raise ValueError(f"row {row} of column {column!r} is an empty list: every row needs at least one pair")
        for item in ids:
            found = item if as_rows else item_rows.get(item)
            if found is None:
                unknown.setdefault(item, []).append(row)
                found = -1
            elif not (_is_int(found) and 0 <= found < num_items):
                out_of_range[item] = found
                found = -1
            rows.append(int(found))
        counts[row] = len(ids)
    if unknown:
        shown = "; ".join(f"{item!r} (rows {_listed(where)})" for item, where in list(unknown.items())[:_SHOWN])
        more = f"; and {len(unknown) - _SHOWN} more ids" if len(unknown) > _SHOWN else ""
        raise KeyError(f"{len(unknown)} item ids in column {column!r} are not in item_rows: {shown}{more}")
    if out_of_range:
        shown = ", ".join(f"{item!r} -> {row!r}" for item, row in list(out_of_range.items())[:_SHOWN])
        mapped = "has item rows" if as_rows else "item_rows maps ids of"
        raise IndexError(f"{mapped} column {column!r} outside the index's rows [0, {num_items}): {shown}")
    return np.asarray(rows, dtype=np.int64), counts


def _listed(values) -> str:
    values = [int(v) for v in values]
    text = ", ".join(map(str, values[:_SHOWN]))
    return text + (f", ... and {len(values) - _SHOWN} more" if len(values) > _SHOWN else "")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _transposed(matrix: np.ndarray, tile: int = 256) -> np.ndarray:
    """A C-contiguous transpose, tile by tile (about 2x faster than numpy's strided copy of a large block)."""
    out = np.empty((matrix.shape[1], matrix.shape[0]), dtype=matrix.dtype)
    for i in range(0, matrix.shape[0], tile):
        for j in range(0, matrix.shape[1], tile):
            out[j : j + tile, i : i + tile] = matrix[i : i + tile, j : j + tile].T
    return out


@contextlib.contextmanager
def _faiss_threads(num_threads: int | None):
    """Run FAISS with ``num_threads`` OpenMP threads inside the block (unchanged when None)."""
    if num_threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(num_threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)
