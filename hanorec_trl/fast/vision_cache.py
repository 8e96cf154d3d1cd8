"""Cache of merged visual features per distinct image (``docs/fast_path.md``).

Items repeat across thousands of recommendation prompts (a poster appears in every history and candidate list that
contains its movie), and the vision tower is frozen during LoRA training on the language model. Each distinct image's
features (after the merger, in the language model's dimension) are therefore computed once and reused. Entries are
keyed by the image's content and the model's vision fingerprint, so a changed image or changed vision weights never
hit a stale entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_file

logger = logging.getLogger(__name__)


def image_key(image) -> str:
    """Content hash of a PIL image (mode, size and pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def module_fingerprint(module: nn.Module, extra: str = "") -> str:
    """A cheap fingerprint of a module's weights: per parameter its name, shape, dtype, sum, sum of squares and a few
    values. Changing any weight changes it (with overwhelming probability); computing it reads each tensor once."""
    digest = hashlib.sha256(extra.encode())
    with torch.no_grad():
        for name, param in module.named_parameters():
            flat = param.detach().reshape(-1)
            stats = torch.stack([flat.double().sum(), flat.double().pow(2).sum()]).tolist()
            probe = flat[:: max(1, flat.numel() // 8)][:8].double().tolist()
            digest.update(f"{name}{tuple(param.shape)}{param.dtype}{stats}{probe}".encode())
    return digest.hexdigest()[:24]


class VisionFeatureCache:
    """Merged visual features per image, in memory and optionally on disk.

    Args:
        fingerprint: identifies the vision weights and image preprocessing; part of every key.
        device: where cached features live (``"cpu"`` keeps GPU memory free; features move with the batch).
        directory: optional folder for a persistent cache (one ``.pt`` file per image, written atomically).
    """

    def __init__(self, fingerprint: str, device: str | torch.device = "cpu",
                 directory: str | os.PathLike | None = None):
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        self.directory = Path(directory) / fingerprint if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def counts(self) -> dict[str, int]:
        """Distinct images held, and the lookups answered from the cache (hits) or not (misses)."""
        return {"images": len(self), "hits": self.hits, "misses": self.misses}

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        features = self._memory.get(key)
        if features is None and self.directory is not None and self._path(key).exists():
            features = torch.load(self._path(key), map_location=self.device, weights_only=True)
            self._memory[key] = features
        if features is None:
            self.misses += 1
        else:
            self.hits += 1
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().to(self.device)
        self._memory[key] = features
        if self.directory is not None and not self._path(key).exists():
            with atomic_file(self._path(key)) as tmp:
                torch.save(features.cpu(), tmp)
