"""The forward pass of a packed (prompt-once) batch, returning per-token log-probs in TRL's layout.

The model is called through its own ``forward`` with TRL's fused LM head (``fused_lm_head=True``), so the numerics of
the log-probs and of the metrics (entropy, mean logits, top-1) are TRL's. What changes is the input: one packed
sequence per prompt (see :mod:`.packing`), the segment attention mask, position ids recomputed for each completion as
in its standard sequence, and, for Qwen2-VL-family models, the image features spliced into the input embeddings from a
:class:`~.vision_cache.VisionFeatureCache` instead of running the vision tower again.
"""

from __future__ import annotations

import contextlib
import hashlib
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..model_utils import unwrap_hf_model
from .packing import PACKED_KEY, segment_mask_function
from .vision_cache import VisionFeatureCache

SUPPORTED_ATTENTION = ("sdpa", "eager")
PER_TOKEN_FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def is_qwen_vl(hf_model: nn.Module) -> bool:
    inner = getattr(hf_model, "model", None)
    return inner is not None and hasattr(inner, "get_rope_index") and hasattr(inner, "visual")


def vision_tower_frozen(hf_model: nn.Module) -> bool:
    return is_qwen_vl(hf_model) and not any(p.requires_grad for p in hf_model.model.visual.parameters())


@contextlib.contextmanager
def _instance_attribute(obj: Any, name: str, value: Any):
    """Sets ``obj.<name>`` on the instance for the duration, then restores what the instance had (e.g. an accelerate
    offload hook), or removes the attribute so that the class's method shows through again."""
    previous = obj.__dict__.get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if previous is None:
            delattr(obj, name)
        else:
            setattr(obj, name, previous)


@contextlib.contextmanager
def frozen_vision_without_graph(model: nn.Module):
    """Runs a frozen Qwen2-VL-family vision tower under ``no_grad`` inside the context (``docs/fast_path.md``).

    Under gradient checkpointing, transformers' ``enable_input_require_grads`` hooks the vision tower's patch
    embedding too, so autograd records the whole frozen tower and the backward pass runs (and recomputes) it, although
    nothing in it trains. Its output never needs a gradient when no parameter in it trains: cutting the graph there
    leaves every trainable gradient unchanged. Yields whether the tower was wrapped (False for text models, trainable
    or absent towers).
    """
    hf_model = unwrap_hf_model(model)
    if not vision_tower_frozen(hf_model):
        yield False
        return
    visual = hf_model.model.visual
    inner = visual.forward

    def forward(*args, **kwargs):
        with torch.no_grad():
            return inner(*args, **kwargs)

    with _instance_attribute(visual, "forward", forward):
        yield True


def _features_through_cache(keys: list[str], chunks, grids: torch.Tensor, cache: VisionFeatureCache,
                            get_image_features) -> list[torch.Tensor]:
    """Per-image merged features: each distinct key is looked up once (a hit or a miss), and the missing images run
    through ``get_image_features`` (the model's) once, together, under ``no_grad``, and are cached."""
    found: dict[str, torch.Tensor] = {}
    first_of: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in found and key not in first_of:
            features = cache.get(key)
            if features is None:
                first_of[key] = i
            else:
                found[key] = features
    if first_of:
        todo = list(first_of.values())
        with torch.no_grad():
            out = get_image_features(torch.cat([chunks[i] for i in todo]), grids[todo])
        for i, features in zip(todo, getattr(out, "pooler_output", out), strict=True):
            cache.put(keys[i], features)
            found[keys[i]] = features
    return [found[key] for key in keys]


def pixel_key(pixels: torch.Tensor, grid: list[int]) -> str:
    """Content hash of one image's processed patches (as the image processor made them) and its grid."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{list(grid)}:{pixels.dtype}:{tuple(pixels.shape)}".encode())
    digest.update(pixels.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def cached_image_features(model: nn.Module, cache: VisionFeatureCache, inference: bool = False):
    """Inside the context, a frozen Qwen2-VL-family vision tower computes each distinct image once
    (``docs/fast_path.md``), for trainers that build their own batches, e.g. TRL's ``SFTTrainer``.

    The model's ``get_image_features`` is wrapped: the batch's pixels are split per image, each image is keyed by the
    hash of its processed patches (:func:`pixel_key`; exact: equal keys mean equal inputs to the tower), cached
    features are reused and the missing images run through the tower once, under ``no_grad``. The caller's model sees
    the same features. Yields whether the wrap applies (not for text models or trainable towers; ``inference=True``
    also caches a tower with trainable parameters, for evaluation while the weights stay fixed). Do not use it when
    parameters are sharded across processes (DeepSpeed ZeRO-3, FSDP): skipping the tower on one rank would stall the
    others' collective forward.
    """
    hf_model = unwrap_hf_model(model)
    if not (is_qwen_vl(hf_model) if inference else vision_tower_frozen(hf_model)):
        yield False
        return
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inner_model = hf_model.model
    original = inner_model.get_image_features

    def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
        grids = image_grid_thw.tolist()
        chunks = torch.split(pixel_values, [t * h * w for t, h, w in grids])
        keys = [pixel_key(chunk, grid) for chunk, grid in zip(chunks, grids, strict=True)]
        features = _features_through_cache(keys, chunks, image_grid_thw, cache,
                                           lambda pixels, grid: original(pixels, grid, **kwargs))
        device = hf_model.get_input_embeddings().weight.device
        return BaseModelOutputWithPooling(pooler_output=tuple(f.to(device) for f in features))

    with _instance_attribute(inner_model, "get_image_features", get_image_features):
        yield True


@contextlib.contextmanager
def image_feature_cache(model: nn.Module, inference: bool = False):
    """:func:`cached_image_features` with a fresh in-memory cache (features kept on the CPU) that lives as long as
    the context, over which the weights do not change; yields the cache, or None where the wrap does not apply."""
    hf_model = unwrap_hf_model(model)
    if not (is_qwen_vl(hf_model) if inference else vision_tower_frozen(hf_model)):
        yield None
        return
    cache = VisionFeatureCache("in-memory", device="cpu")  # the fingerprint only names an on-disk folder
    with cached_image_features(model, cache, inference=inference):
        yield cache


def parameters_sharded(trainer) -> bool:
    """Whether a transformers ``Trainer`` shards parameters across processes (DeepSpeed ZeRO-3 or FSDP): then every
    rank must run every module's forward, and a per-rank feature cache would stall the collectives."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        return plugin is None or getattr(plugin, "zero_stage", 3) == 3
    return False


def unsupported_reason(hf_model: nn.Module) -> str | None:
    """Why the packed forward cannot run this model exactly, or None when it can."""
    text_config = hf_model.config.get_text_config()
    attention = getattr(hf_model.config, "_attn_implementation", None)
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} takes no custom mask (supported: {SUPPORTED_ATTENTION})"
    layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"the model has {sorted(layer_types - {'full_attention'})} layers"
    if getattr(hf_model.config, "vision_config", None) is not None and not is_qwen_vl(hf_model):
        return f"{type(hf_model).__name__} is a vision-language model outside the Qwen2-VL family"
    return None


def _image_features(hf_model, batch: dict, cache: VisionFeatureCache | None) -> torch.Tensor:
    """Merged features of every image of the batch, in order; frozen towers run under no_grad, once per image."""
    grids = batch["image_grid_thw"]
    pixel_values = batch["pixel_values"]
    keys = batch.get("image_keys")
    patches = grids.prod(-1).tolist()
    if cache is None or keys is None:
        # a frozen tower needs no graph: no backward through it (TRL's input-grad hook would otherwise add one)
        with torch.no_grad() if vision_tower_frozen(hf_model) else contextlib.nullcontext():
            out = hf_model.model.get_image_features(pixel_values, grids)
        return torch.cat(list(getattr(out, "pooler_output", out)), dim=0)

    features = _features_through_cache(keys, torch.split(pixel_values, patches), grids, cache,
                                       hf_model.model.get_image_features)
    device = hf_model.get_input_embeddings().weight.device
    return torch.cat([f.to(device, non_blocking=True) for f in features], dim=0)


def _position_ids(hf_model, batch: dict) -> torch.Tensor:
    """Position ids of every packed token: its position in the standard (prompt + one completion) sequence."""
    offsets = batch["position_offsets"]
    if not is_qwen_vl(hf_model) or "mm_token_type_ids" not in batch:
        return offsets  # text rows (also on a Qwen-VL model: its text positions are the same in all three axes)
    prompt_lengths = batch["prompt_lengths"]
    width = int(prompt_lengths.max())
    prompt_ids = batch["input_ids"][:, :width]
    prompt_mask = torch.arange(width, device=offsets.device)[None, :] < prompt_lengths[:, None]
    mm_types = batch["mm_token_type_ids"][:, :width] * prompt_mask
    rope, _ = hf_model.model.get_rope_index(
        prompt_ids.masked_fill(~prompt_mask, 0),
        mm_token_type_ids=mm_types,
        image_grid_thw=batch.get("image_grid_thw"),
        attention_mask=prompt_mask.long(),
    )  # (3, groups, width)
    in_prompt = offsets < prompt_lengths[:, None]
    clamped = torch.minimum(offsets, prompt_lengths[:, None] - 1).clamp(min=0)
    prompt_positions = rope.gather(2, clamped[None].expand(3, -1, -1))
    # text after the prompt continues from the largest prompt position (Qwen2-VL M-RoPE rule)
    next_position = (rope.masked_fill(~prompt_mask[None], -1).amax(dim=(0, 2)) + 1)[None, :, None]
    completion_positions = next_position + (offsets - prompt_lengths[:, None])
    return torch.where(in_prompt[None], prompt_positions, completion_positions)


def packed_forward(model: nn.Module, batch: dict[str, Any], cache: VisionFeatureCache | None = None) -> SimpleNamespace:
    """Runs a packed batch through ``model`` (fused LM head) and returns TRL-layout per-token fields.

    Returns an object with ``log_probs``, ``entropy``, ``mean_logits``, ``is_top1`` (and ``log_sum_sq_probs`` when the
    fused head computes it) of shape ``[2 * rows, width]``: rows ``[0, rows)`` are the chosen completions, the rest the
    rejected ones, each left-aligned and zero past its end — what TRL's ``_compute_loss`` reads from its own forward.
    """
    from transformers.masking_utils import create_causal_mask

    hf_model = unwrap_hf_model(model)
    input_ids = batch["input_ids"]
    segment_ids = batch[PACKED_KEY]
    embeddings = hf_model.get_input_embeddings()(input_ids)
    if is_qwen_vl(hf_model) and batch.get("pixel_values") is not None:
        features = _image_features(hf_model, batch, cache)
        image_mask = input_ids == hf_model.config.image_token_id
        if int(image_mask.sum()) != features.shape[0]:
            raise ValueError(
                f"the packed batch has {int(image_mask.sum())} image tokens but its images give {features.shape[0]} "
                "features; was the prompt truncated (max_length)?"
            )
        embeddings = embeddings.masked_scatter(image_mask[..., None], features.to(embeddings.dtype))
    text_config = hf_model.config.get_text_config()
    mask = create_causal_mask(
        text_config,
        embeddings,
        batch["attention_mask"],
        None,
        and_mask_function=segment_mask_function(segment_ids, batch["prompt_lengths"]),
    )
    outputs = model(
        inputs_embeds=embeddings,
        attention_mask=mask,
        position_ids=_position_ids(hf_model, batch),
        labels=batch["labels"],
        fused_lm_head=True,
        use_cache=False,
    )
    index, keep = batch["gather_index"], batch["gather_mask"]
    fields = {}
    for name in PER_TOKEN_FIELDS:
        value = getattr(outputs, name, None)
        if value is None:
            fields[name] = None
            continue
        gathered = value.reshape(-1)[index]
        fields[name] = gathered & keep if gathered.dtype == torch.bool else gathered * keep
    fields["aux_loss"] = getattr(outputs, "aux_loss", None)
    return SimpleNamespace(**fields)


def trl_layout_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Stand-in inputs for TRL's ``_compute_loss`` matching :func:`packed_forward`'s layout.

    ``completion_mask`` marks each completion's tokens at positions ``1..n`` (TRL shifts it by one);
    ``attention_mask`` sums, per row, to the tokens of the standard sequence (prompt + completion), so TRL's
    ``num_tokens`` metric counts what the standard path would.
    """
    keep = batch["gather_mask"]
    rows, width = keep.shape
    completion_mask = torch.zeros((rows, width + 1), dtype=torch.long, device=keep.device)
    completion_mask[:, 1:] = keep.long()
    attention_mask = completion_mask.clone()
    attention_mask[:, 0] = batch["standard_tokens"] - keep.sum(1)
    out = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
    }
    for name in ("ref_chosen_logps", "ref_rejected_logps"):
        if name in batch:
            out[name] = batch[name]
    return out
