"""Title-image similarity of items as the model represents them (paper Fig. 1c and Fig. 4).

The paper tracks, per item, the cosine between the MLLM's representation of the title and of the poster, before
and after preference optimization ("the weak get weaker" under plain DPO). The hardness encoder's embeddings
(docs/design.md section 2: input token embeddings, vision-tower features) do not move when only LoRA adapters on the
language model train, so this probe reads both modalities *through the language model*: the mean of its last hidden
states over the title's tokens (alone), and over the image's tokens (``<|vision_start|><|image_pad|>...<|vision_end|>``
alone). Both therefore change with the adapters, and their cosine is comparable between the SFT and the DPO model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..encoders import QwenVLItemEncoder, load_item_image, masked_mean
from ..model_utils import eval_mode, model_device
from ..model_utils import unwrap_hf_model as unwrap_model

IMAGE_ONLY_TEXT = "<|vision_start|><|image_pad|><|vision_end|>"


def contextual_image_embeddings(model, processor, images: Sequence[Any], batch_size: int = 8,
                                progress: bool = True) -> np.ndarray:
    """Mean last hidden state of the language model over each image's tokens (the image alone in the sequence)."""
    hf_model = unwrap_model(model)
    image_token_id = hf_model.config.image_token_id
    out = []
    device = model_device(model)
    with eval_mode(model), tqdm(total=len(images), desc="image representations", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            batch = processor(text=[IMAGE_ONLY_TEXT] * len(chunk), images=chunk, return_tensors="pt", padding=True)
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            hidden = hf_model.model(**batch, use_cache=False).last_hidden_state
            out.append(masked_mean(hidden.float(), batch["input_ids"] == image_token_id).cpu().numpy())
            bar.update(len(chunk))
    return np.concatenate(out)


def title_image_similarity(model, processor, item_ids: Sequence[str], titles: Sequence[str],
                           images: Sequence[Any], *, batch_size: int = 8, progress: bool = True) -> np.ndarray:
    """cos(title representation, image representation) per item, both read through the language model."""
    encoder = QwenVLItemEncoder(model, processor, title_mode="contextual", batch_size=batch_size)
    text = np.concatenate(
        [encoder.encode_titles(titles[i : i + batch_size]) for i in range(0, len(titles), batch_size)]
    )
    pictures = [load_item_image(item, image) for item, image in zip(item_ids, images)]
    image = contextual_image_embeddings(model, processor, pictures, batch_size=batch_size, progress=progress)
    text /= np.linalg.norm(text, axis=1, keepdims=True).clip(min=1e-12)
    image /= np.linalg.norm(image, axis=1, keepdims=True).clip(min=1e-12)
    return (text * image).sum(axis=1)


__all__ = ["contextual_image_embeddings", "title_image_similarity"]
