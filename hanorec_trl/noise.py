"""Noise-regularised distribution optimisation, NoDO (paper Eq. 9-10; ``docs/nodo.md``).

Inside ``with lora_noise(model, std): ...`` every active LoRA layer computes with ``A' = A + s*eps_A`` and
``B' = B + s*eps_B`` (``eps ~ N(0, I)``), i.e. ``(B + s*eps_B)(A + s*eps_A) x``. The noise is added to the LoRA
weights in place when the context is entered and the saved originals are copied back, bit for bit, when it exits;
the forward and backward then cost exactly what they cost without noise, and autograd gives the gradient at the
perturbed point (``dL/dA' = dL/dA`` since ``A' = A + const``). Weights that cannot be changed in place (DeepSpeed
ZeRO-3 partitions, distributed tensors) get a forward hook instead, adding ``s * F.linear(input, eps)`` to the
module's output, which computes the same thing.

The noise is drawn once when the context is entered and reused until it exits, so a forward recomputed during the
backward pass (gradient checkpointing) sees the same noise: enter the context around forward *and* backward (a
backward after the exit fails loudly: the weights it needs were restored in place).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

NOISE_MODES = ("absolute", "relative")

__all__ = ["NOISE_MODES", "lora_linears", "lora_noise"]


def lora_linears(model: nn.Module, adapter_names: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``lora_A``/``lora_B`` linear of the active (or given) adapters, in model order."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise ImportError("lora_noise needs peft") from e

    found = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = adapter_names if adapter_names is not None else list(module.active_adapters)
        for adapter in adapters:
            if adapter not in module.lora_A:
                if adapter in getattr(module, "lora_embedding_A", {}):
                    raise NotImplementedError(
                        f"lora_noise supports LoRA on linear layers only; {name!r} is a LoRA embedding layer. "
                        "Remove embedding layers from target_modules or set lora_noise_std=0."
                    )
                continue
            for kind in ("lora_A", "lora_B"):
                sub = getattr(module, kind)[adapter]
                if type(sub) is not nn.Linear:
                    raise NotImplementedError(
                        f"lora_noise supports LoRA on linear layers only; {name}.{kind}.{adapter} is a "
                        f"{type(sub).__name__}. Remove that layer from target_modules or set lora_noise_std=0."
                    )
                found.append((f"{name}.{kind}.{adapter}", sub))
    return found


def _check_has_lora(model: nn.Module, modules: list) -> None:
    if modules:
        return
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        PeftModel = ()  # noqa: N806
    if not isinstance(model, PeftModel):
        raise ValueError(
            f"lora_noise needs a PEFT LoRA model, got {type(model).__name__} with no LoRA layers. Wrap it with "
            "peft.get_peft_model(model, LoraConfig(...)) (or pass peft_config= to the trainer), or set the noise std "
            "to 0."
        )
    raise ValueError(
        "lora_noise found no active LoRA linear layer in this PEFT model (adapters disabled, or not a LoRA adapter)."
    )


def _rms(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().pow(2).mean().sqrt()


@contextlib.contextmanager
def lora_noise(
    model: nn.Module,
    std: float = 0.01,
    mode: str = "absolute",
    generator: torch.Generator | None = None,
    adapter_names: list[str] | None = None,
) -> Iterator[dict[str, float]]:
    """Perturbs every active LoRA ``A`` and ``B`` with Gaussian noise for the duration of the context (Eq. 10).

    Args:
        model: a PEFT model (or any module containing PEFT LoRA layers).
        std: sigma_n. ``0`` makes the context a no-op.
        mode: ``"absolute"`` (the paper: ``s = std``) or ``"relative"`` (``s = std * RMS(W)`` per matrix, so the
            perturbation scales with each matrix; a zero-initialised ``B`` gets no noise until it is trained).
        generator: draws the noise; pass a seeded ``torch.Generator`` for reproducibility. Its device is used for
            sampling and the noise is moved to each weight's device.
        adapter_names: perturb these adapters instead of the active ones.

    Yields a dict with the number of perturbed matrices and the mean noise scale, for logging.

    Example:

    ```python
    >>> with lora_noise(peft_model, std=0.01, generator=torch.Generator().manual_seed(0)):
    ...     loss = peft_model(**batch).loss
    ...     loss.backward()  # same noise in a checkpoint recompute
    ```
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"lora noise mode must be one of {NOISE_MODES}, got {mode!r}")
    if std < 0 or not torch.isfinite(torch.tensor(float(std))):
        raise ValueError(f"lora noise std must be a finite number >= 0, got {std}")
    if std == 0:
        yield {"matrices": 0, "scale_mean": 0.0}
        return
    modules = lora_linears(model, adapter_names)
    _check_has_lora(model, modules)

    handles, restore, scales = [], [], []
    try:
        with torch.no_grad():
            for _, linear in modules:
                weight = linear.weight
                sample_device = generator.device if generator is not None else weight.device
                eps = torch.randn(weight.shape, generator=generator, device=sample_device, dtype=torch.float32)
                scale = std * _rms(weight).item() if mode == "relative" else std
                scales.append(scale)
                if scale == 0.0:
                    continue
                noise = (eps * scale).to(device=weight.device, dtype=weight.dtype)
                if _can_perturb_in_place(weight):
                    restore.append((weight, weight.detach().clone()))
                    weight.add_(noise)
                else:
                    handles.append(linear.register_forward_hook(_make_hook(noise)))
        yield {"matrices": len(modules), "scale_mean": sum(scales) / len(scales)}
    finally:
        with torch.no_grad():
            for weight, original in restore:
                weight.copy_(original)
        for handle in handles:
            handle.remove()


def _can_perturb_in_place(weight: torch.Tensor) -> bool:
    """A plain, materialised tensor (not a ZeRO-3 partition or a distributed tensor)."""
    if hasattr(weight, "ds_id") or weight.numel() == 0:
        return False
    return type(weight.data) is torch.Tensor


def _make_hook(noise: torch.Tensor):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        return output + F.linear(x.to(noise.dtype), noise).to(output.dtype)

    return hook
