"""``HaNoDPOTrainer``: TRL's ``DPOTrainer`` with HaNoRec's adaptive beta and LoRA noise (paper Sec. 3,
``docs/trainer.md``).

How the per-sample, current-batch beta' gets into TRL 1.16 without copying its loss code
-----------------------------------------------------------------------------------------
TRL computes the loss in the private ``DPOTrainer._compute_loss``, where ``self.beta`` multiplies each pair's margin
and is first read after the policy and reference forwards. For every batch this trainer

1. computes the reference log-probs first (``compute_ref_log_probs``, the same function TRL uses to precompute
   them) and hands them to TRL as if precomputed;
2. passes TRL a thin callable in place of the model: it runs the real model, sums the completion log-probs exactly
   as TRL does, forms the reward gaps ``R_i = beta0 * delta_i`` (Eq. 7), gathers them across processes, updates eta
   (Eq. 8) and sets ``self.beta`` to the detached per-sample tensor ``beta'_i = max(eta * lambda_i * beta0, floor)``
   (Eq. 11);
3. lets TRL finish: ``-logsigmoid(beta' * delta)`` (Eq. 12), and the reward metrics ``beta' * logratio``.

``self.beta`` is restored to beta0 afterwards. With hardness and responsiveness off the trainer calls TRL's loss
unchanged. ``tests/test_trainer_parity.py`` pins both paths to ``trl.DPOTrainer`` and fails if TRL's internals move.

NoDO (Eq. 10) wraps the whole ``training_step`` (forward, backward, checkpoint recompute) in :func:`lora_noise`,
never ``evaluate`` or the reference forward (adapters disabled there, so the LoRA modules do not run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOTrainer
from trl.trainer.utils import use_adapter

from .checkpoints import HANO_STATE_NAME, checkpoint_problem, last_complete_checkpoint
from .config import HaNoDPOConfig
from .fast.forward import (
    frozen_vision_without_graph,
    packed_forward,
    parameters_sharded,
    trl_layout_inputs,
    unsupported_reason,
    vision_tower_frozen,
)
from .fast.packing import PACKED_KEY, PackedPreferenceCollator
from .fast.vision_cache import VisionFeatureCache, module_fingerprint
from .files import atomic_file
from .model_utils import unwrap_hf_model
from .noise import lora_linears, lora_noise
from .responsiveness import ResponsivenessTracker

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(FloatingPointError):
    """Training produced a non-finite loss or gradient norm; the message names the step and the usual causes."""


def validate_lambda_column(dataset: Any, column: str, name: str, maximum: float = math.inf) -> None:
    """Checks that ``dataset[column]`` exists and holds finite numbers in [0, ``maximum``]; errors name the rows."""
    if dataset is None or isinstance(dataset, IterableDataset):
        return  # streamed rows are checked batch by batch
    if not isinstance(dataset, Dataset):
        return
    if column not in dataset.column_names:
        raise ValueError(
            f"use_hardness=True needs a column {column!r} with the hardness lambda of each row in the {name} dataset; "
            f"its columns are {dataset.column_names}. Compute it with hanorec_trl.add_hardness_column (from a "
            "HardnessIndex, item embeddings or an item encoder), or set use_hardness=False."
        )
    import pyarrow as pa

    arrow_type = dataset.features.arrow_schema.field(column).type
    if not (pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)):
        raise TypeError(
            f"column {column!r} of the {name} dataset must hold one number per row (lambda), but its type is "
            f"{arrow_type}"
        )
    values = np.asarray(dataset.data.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        shown = ", ".join(f"row {i}: {values[i]}" for i in bad[:5])
        raise ValueError(
            f"column {column!r} of the {name} dataset has {bad.size} invalid lambda value(s) (NaN, inf or negative; "
            f"lambda must be finite and >= 0): {shown}"
        )
    large = np.flatnonzero(values > maximum)
    if large.size:
        shown = ", ".join(f"row {i}: {values[i]:g}" for i in large[:5])
        raise ValueError(
            f"column {column!r} of the {name} dataset has {large.size} lambda value(s) above lambda_max={maximum:g} "
            f"({shown}). Eq. 6 gives lambda = sigmoid(Delta) / sigmoid(mean Delta), below 10 for cosine "
            "similarities; such a value would scale beta (and the gradients) by it. Fix the column, or raise "
            "HaNoDPOConfig.lambda_max if it is intended."
        )


class HardnessCollator:
    """Wraps a collator: takes ``column`` out of each example, collates the rest, adds it back as a float tensor.

    TRL's preference collators ignore unknown keys, so without this the hardness column would never reach the loss.
    """

    def __init__(self, inner: Callable, column: str, maximum: float = math.inf):
        self.inner = inner
        self.column = column
        self.maximum = maximum

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if any(self.column not in example for example in examples):
            raise ValueError(
                f"a batch has examples without the hardness column {self.column!r} (use_hardness=True); add it to "
                "every row with hanorec_trl.add_hardness_column"
            )
        values = [example[self.column] for example in examples]
        try:
            lambdas = torch.tensor(values, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise TypeError(f"hardness column {self.column!r} must hold one number per row, got {values[:4]}") from e
        if lambdas.dim() != 1:
            raise TypeError(f"hardness column {self.column!r} must hold one number per row, got {values[:4]}")
        bad = ~torch.isfinite(lambdas) | (lambdas < 0) | (lambdas > self.maximum)
        if bad.any():
            raise ValueError(
                f"invalid lambda in a batch (NaN, inf, negative or above lambda_max={self.maximum:g}) in column "
                f"{self.column!r}: {lambdas[bad].tolist()[:5]}"
            )
        batch = self.inner([{k: v for k, v in example.items() if k != self.column} for example in examples])
        batch[self.column] = lambdas
        return batch


class _AdaptiveBetaForward:
    """Stands in for the policy model inside TRL's loss: runs it, then sets the trainer's per-sample beta'."""

    def __init__(self, trainer: HaNoDPOTrainer, model: Callable, ref_logps: tuple, lambdas: torch.Tensor, mode: str):
        self.trainer = trainer
        self.model = model
        self.ref_chosen, self.ref_rejected = ref_logps
        self.lambdas = lambdas
        self.mode = mode
        self.done = False

    def __call__(self, **kwargs: Any) -> Any:
        outputs = self.model(**kwargs)
        if self.done or not kwargs.get("fused_lm_head"):
            return outputs  # the deprecated logits recomputation of return_outputs=True
        self.done = True
        # The same sequence log-probs as TRL: per-token log-probs (zero outside the completion) summed over positions.
        seq_len = kwargs["labels"].size(1) - 1
        logps = outputs.log_probs[:, -seq_len:].sum(dim=1).detach()
        chosen, rejected = logps.chunk(2, dim=0)
        delta = (chosen - self.ref_chosen) - (rejected - self.ref_rejected)
        self.trainer._set_adaptive_beta(delta, self.lambdas, self.mode)
        return outputs


class _PackedPolicy:
    """Stands in for the policy model inside TRL's loss on a packed batch: returns TRL-layout per-token fields."""

    def __init__(self, model: Callable, batch: dict, cache: VisionFeatureCache | None):
        self.model, self.batch, self.cache = model, batch, cache

    def __call__(self, **kwargs: Any) -> Any:
        if not kwargs.get("fused_lm_head"):
            raise ValueError(
                "logits were requested (compute_metrics / return_outputs=True), which the prompt-once fast path does "
                "not build; set fast_prompt_once=False"
            )
        return packed_forward(self.model, self.batch, self.cache)


class HaNoDPOTrainer(DPOTrainer):
    r"""
    TRL's [`~trl.DPOTrainer`] with HaNoRec's hardness-aware, responsiveness-scaled beta and LoRA noise.

    Same constructor and behaviour as `DPOTrainer`; the differences (all switchable in [`HaNoDPOConfig`]):

    - **HaRS** (Eq. 4-8, 11): each pair i is trained at `beta'_i = max(eta_B * lambda_i * beta0, beta_floor)`, detached.
      `lambda_i` is read from the dataset column `hardness_column` (compute it offline with
      [`add_hardness_column`]); `eta_B` comes from the current batch's reward gaps `R_i = beta0 * delta_i`, gathered
      across processes, through a [`ResponsivenessTracker`] whose state is saved in checkpoints.
    - **NoDO** (Eq. 10): during every training step (forward, backward and any checkpoint recompute) the active LoRA
      matrices carry Gaussian noise (`lora_noise_std`); never in evaluation or in the reference forward.
    - Logs `hano/eta`, `hano/beta_mean`, `hano/beta_min`, `hano/beta_max`, `hano/lambda_mean`, `hano/nonfinite_beta`
      and `hano/noise_scale`; the reward metrics use beta'.

    With `use_hardness=False, use_responsiveness=False, lora_noise_std=0` it computes exactly what `DPOTrainer` does.

    Example (the README's library snippet, run by ``tests/test_readme_snippet.py``; more in ``docs/trainer.md``):

    ```python
    >>> from peft import LoraConfig
    >>> from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer, add_hardness_column
    >>> from hanorec_trl.model_utils import language_model_lora_regex

    >>> dataset, _ = add_hardness_column(dpo_dataset, (text_embeddings, image_embeddings), item_rows)
    >>> trainer = HaNoDPOTrainer(
    ...     model=model,
    ...     args=HaNoDPOConfig(output_dir="hano-dpo", beta=0.1, lora_noise_std=0.01, max_length=None),
    ...     train_dataset=dataset,
    ...     processing_class=processor,
    ...     peft_config=LoraConfig(r=8, lora_alpha=32, target_modules=language_model_lora_regex(model)),
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "dpo", "hanorec"]
    _name = "HaNoDPO"
    # The model card (``create_model_card``) cites HaNoRec, then DPO, whose loss this trainer keeps (Eq. 12).
    _paper = {
        "title": "Multimodal Large Language Models with Adaptive Preference Optimization for Sequential Recommendation",
        "id": None,  # no paper-page id to link to; the card then names the method without a link
        "citation": textwrap.dedent("""\
            @misc{wang_hanorec,
                title        = {{Multimodal Large Language Models with Adaptive Preference Optimization for
                                 Sequential Recommendation}},
                author       = {Yu Wang and Yonghui Yang and Le Wu and Yi Zhang and Richang Hong},
                note         = {HaNoRec: Hardness-aware and Noise-regularized preference optimization for
                                Recommendation},
            }""") + "\n\n" + DPOTrainer._paper["citation"],
    }

    def __init__(
        self,
        model,
        ref_model=None,
        args: HaNoDPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            # bf16 only where it can run (TRL's default, bf16=True, is refused on a CPU)
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            args = HaNoDPOConfig(f"{str(model_name).split('/')[-1] or 'model'}-HaNoDPO", bf16=bf16)
        elif not isinstance(args, HaNoDPOConfig):
            raise TypeError(
                f"HaNoDPOTrainer needs a HaNoDPOConfig, got {type(args).__name__}. Build one with the same fields, "
                "e.g. HaNoDPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init})."
            )
        if (
            ref_model is None
            and peft_config is None
            and not isinstance(model, str)
            and not is_peft_model(model)
            and not args.precompute_ref_log_probs
            and not getattr(model.config, "_name_or_path", "")
        ):
            raise ValueError(
                "Full fine-tuning without a ref_model: TRL would reload the reference from the model's name, but this "
                f"{type(model).__name__} was built in memory and has none. Pass ref_model= (a frozen copy), or "
                "peft_config=LoraConfig(...) so that the reference is the model with its adapter disabled."
            )
        if args.use_hardness:
            validate_lambda_column(train_dataset, args.hardness_column, "train", args.lambda_max)
            evals = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]
            for name, dataset in evals:
                validate_lambda_column(dataset, args.hardness_column, name, args.lambda_max)

        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._vision_caches: dict[int, VisionFeatureCache | None] = {}
        self.fast_path_off_reason = self._fast_path_off_reason(data_collator, compute_metrics)
        if self.fast_path_off_reason is None:
            self.data_collator = PackedPreferenceCollator(self.processing_class, max_length=args.max_length)
            logger.info("HaNoDPOTrainer: prompt-once fast path on")
        elif args.fast_prompt_once:
            logger.warning("HaNoDPOTrainer: prompt-once fast path off: %s", self.fast_path_off_reason)
        if args.use_hardness:
            self.data_collator = HardnessCollator(self.data_collator, args.hardness_column, args.lambda_max)
        self._maybe_cache_reference_logps()
        self.responsiveness_tracker = ResponsivenessTracker(
            momentum=args.responsiveness_momentum,
            eps=args.responsiveness_eps,
            warmup=args.responsiveness_warmup,
            eta_min=args.eta_min,
            eta_max=args.eta_max,
            mode=args.responsiveness,
        )
        if args.lora_noise_std > 0 and not lora_linears(self.model):
            raise ValueError(
                f"lora_noise_std={args.lora_noise_std} (NoDO) needs a PEFT LoRA model, but {type(self.model).__name__} "
                "has no active LoRA linear layer. Pass peft_config=LoraConfig(...) (or a PeftModel), or set "
                "lora_noise_std=0."
            )
        self._noise_step = -1
        self._noise_micro_step = 0

    # ------------------------------------------------------------------------------------------------ data plumbing
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [self.args.hardness_column] if self.args.use_hardness else []
        extra += ["ref_chosen_logps", "ref_rejected_logps"]  # cached reference log-probs (also for vision rows)
        self._signature_columns = [*self._signature_columns, *(c for c in extra if c not in self._signature_columns)]

    # ------------------------------------------------------------------------------------------------- fast path
    def _fast_path_off_reason(self, data_collator, compute_metrics) -> str | None:
        """Why the prompt-once packed batches cannot be used here, or None when they can (``docs/fast_path.md``)."""
        args = self.args
        if not args.fast_prompt_once:
            return "fast_prompt_once=False"
        if data_collator is not None:
            return "a custom data_collator was given"
        if compute_metrics is not None:
            return "compute_metrics needs logits, which packed batches do not build"
        if args.padding_free or args.use_liger_kernel or args.pad_to_multiple_of is not None:
            return "padding_free / use_liger_kernel / pad_to_multiple_of are set"
        if not self._is_vision_dataset and args.max_length is not None and args.truncation_mode != "keep_start":
            return f"truncation_mode={args.truncation_mode!r}"
        if self.aux_loss_enabled:
            return "mixture-of-experts auxiliary loss"
        if is_peft_model(self.model) and any(c.is_prompt_learning for c in self.model.peft_config.values()):
            return "prompt-learning PEFT methods prepend virtual tokens"
        for name, model in (("model", self.model), ("ref_model", self.ref_model)):
            if model is not None:
                reason = unsupported_reason(unwrap_hf_model(model))
                if reason:
                    return f"{name}: {reason}"
        return None

    def _vision_cache_for(self, model) -> VisionFeatureCache | None:
        """The feature cache of ``model``'s vision tower, when it is frozen and caching is on (one per model)."""
        hf_model = unwrap_hf_model(model)
        key = id(hf_model)
        if key not in self._vision_caches:
            cache = None
            if self.args.fast_vision_cache and vision_tower_frozen(hf_model) and not parameters_sharded(self):
                processor = getattr(self.processing_class, "image_processor", None)
                settings = json.dumps(processor.to_dict() if processor is not None else {}, sort_keys=True, default=str)
                fingerprint = module_fingerprint(hf_model.model.visual, extra=settings)
                device = "cpu" if self.args.vision_cache_device == "cpu" else hf_model.device
                cache = VisionFeatureCache(fingerprint, device=device, directory=self.args.vision_cache_dir)
            self._vision_caches[key] = cache
        return self._vision_caches[key]

    def _reference_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of a batch (packed or standard), without toggling gradient checkpointing.

        TRL re-enables checkpointing after each reference forward, which registers its input hooks again every step;
        under ``no_grad`` the toggle is not needed.
        """
        reference = self.ref_model if self.ref_model is not None else model
        adapter = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.accelerator.unwrap_model(self.model)):
            peft_model = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(peft_model, adapter_name="ref" if "ref" in peft_model.peft_config else None)
        with torch.no_grad(), adapter, self.accelerator.autocast():
            if PACKED_KEY in inputs:
                logps = packed_forward(reference, inputs, self._vision_cache_for(reference)).log_probs.sum(dim=1)
            else:
                skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
                kwargs = {k: v for k, v in inputs.items() if k not in skip}
                labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
                seq_len = labels.size(1) - 1
                out = reference(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)
                logps = out.log_probs[:, -seq_len:].sum(dim=1)
        return logps.chunk(2, dim=0)

    def _maybe_cache_reference_logps(self) -> None:
        """Adds ``ref_chosen_logps``/``ref_rejected_logps`` columns computed once with the packed forward."""
        args = self.args
        if not args.fast_ref_cache or args.precompute_ref_log_probs:
            return
        reason = None
        if self.fast_path_off_reason is not None:
            reason = "the prompt-once fast path is off"
        elif args.sync_ref_model:
            reason = "sync_ref_model changes the reference during training"
        elif self.is_deepspeed_enabled or self.is_fsdp_enabled:
            reason = "DeepSpeed/FSDP place the model only when training starts"
        if reason:
            logger.info("HaNoDPOTrainer: reference log-probs computed every step (%s)", reason)
            return
        self.train_dataset = self._with_reference_logps(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._with_reference_logps(v, k) for k, v in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = self._with_reference_logps(self.eval_dataset, "eval")

    def _with_reference_logps(self, dataset, name: str):
        if not isinstance(dataset, Dataset) or "ref_chosen_logps" in dataset.column_names:
            return dataset
        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        collator = PackedPreferenceCollator(self.processing_class, max_length=self.args.max_length)
        indices = list(range(len(dataset)))
        chosen, rejected = {}, {}
        with self.accelerator.split_between_processes(indices) as mine:
            loader = DataLoader(dataset.select(mine), batch_size=batch_size, collate_fn=collator, shuffle=False,
                                num_workers=self.args.dataloader_num_workers)
            done = 0
            for batch in tqdm(loader, desc=f"Reference log-probs ({name}, prompt-once)",
                              disable=not self.accelerator.is_local_main_process):
                batch = self._prepare_inputs(batch)
                ref_chosen, ref_rejected = self._reference_logps(self.model, batch)
                for offset, (c, r) in enumerate(zip(ref_chosen.tolist(), ref_rejected.tolist(), strict=True)):
                    chosen[mine[done + offset]], rejected[mine[done + offset]] = c, r
                done += ref_chosen.numel()
        merged_chosen, merged_rejected = {}, {}
        for part in gather_object([(chosen, rejected)]):
            merged_chosen.update(part[0])
            merged_rejected.update(part[1])
        dataset = dataset.add_column("ref_chosen_logps", [merged_chosen[i] for i in indices])
        return dataset.add_column("ref_rejected_logps", [merged_rejected[i] for i in indices])

    # ------------------------------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs, return_outputs):
        column = self.args.hardness_column
        lambdas = inputs.get(column) if self.args.use_hardness else None
        inputs = {k: v for k, v in inputs.items() if k != column}
        packed = PACKED_KEY in inputs
        if not packed and not self.args.uses_adaptive_beta:
            return super()._compute_loss(model, inputs, return_outputs)  # plain TRL

        if "ref_chosen_logps" in inputs:  # cached or precomputed
            ref_logps = (inputs["ref_chosen_logps"], inputs["ref_rejected_logps"])
        else:
            ref_logps = self._reference_logps(model, inputs)
        ref_logps = tuple(r.to(self.accelerator.device) for r in ref_logps)
        if packed:
            policy = _PackedPolicy(model, inputs, self._vision_cache_for(model))
            trl_inputs = trl_layout_inputs(inputs)
        else:
            policy, trl_inputs = model, dict(inputs)
        trl_inputs["ref_chosen_logps"], trl_inputs["ref_rejected_logps"] = ref_logps

        if self.args.uses_adaptive_beta:
            mode = "train" if self.model.training else "eval"
            if lambdas is None:
                if self.args.use_hardness:
                    raise ValueError(f"use_hardness=True but the batch has no {column!r} column")
                lambdas = torch.ones(trl_inputs["completion_mask"].size(0) // 2)
            policy = _AdaptiveBetaForward(self, policy, ref_logps, lambdas.to(self.accelerator.device, torch.float32),
                                          mode)
        precompute = self.precompute_ref_logps
        self.precompute_ref_logps = True  # hand TRL the reference log-probs computed above
        try:
            return super()._compute_loss(policy, trl_inputs, return_outputs)
        finally:
            self.precompute_ref_logps = precompute
            self.beta = self.args.beta

    def _set_adaptive_beta(self, delta: torch.Tensor, lambdas: torch.Tensor, mode: str) -> None:
        """Sets ``self.beta`` to beta'_i = max(eta * lambda_i * beta0, floor) for this batch (Eq. 7, 8, 11)."""
        args = self.args
        beta0 = args.beta
        if args.use_responsiveness:
            if mode == "train":
                gaps = self.accelerator.gather(beta0 * delta.float())  # Eq. 7, every rank sees every gap
                eta = self.responsiveness_tracker.update(gaps)
            else:  # evaluation reads the current eta and leaves the state alone
                eta = self.responsiveness_tracker.last_eta
        else:
            eta = 1.0
        beta = eta * lambdas * beta0
        nonfinite = ~torch.isfinite(beta)
        beta = torch.where(nonfinite, torch.full_like(beta, beta0), beta).clamp(min=args.beta_floor)
        self.beta = beta.detach()

        metrics = self._metrics[mode]
        all_beta = self.accelerator.gather(beta)
        metrics["hano/eta"].append(float(eta))
        metrics["hano/beta_mean"].append(all_beta.mean().item())
        metrics["hano/beta_min"].append(all_beta.min().item())
        metrics["hano/beta_max"].append(all_beta.max().item())
        metrics["hano/lambda_mean"].append(self.accelerator.gather(lambdas).mean().item())
        metrics["hano/nonfinite_beta"].append(self.accelerator.gather(nonfinite.sum()).sum().item())

    # --------------------------------------------------------------------------------------------------- NoDO
    def _noise_generator(self) -> torch.Generator:
        """A generator seeded by (seed, optimizer step, micro-step, rank): reproducible, and identical on resume."""
        step = self.state.global_step
        if step != self._noise_step:
            self._noise_step, self._noise_micro_step = step, 0
        else:
            self._noise_micro_step += 1
        seed = self.args.lora_noise_seed if self.args.lora_noise_seed is not None else self.args.seed
        key = np.random.SeedSequence([seed, step, self._noise_micro_step, self.accelerator.process_index])
        generator = torch.Generator(device=self.accelerator.device)
        generator.manual_seed(int(key.generate_state(1, dtype=np.uint64)[0] >> 1))
        return generator

    def training_step(self, model, inputs, num_items_in_batch=None):
        # a frozen vision tower never needs a graph: no backward through it, on any path (exact)
        with frozen_vision_without_graph(model):
            std = self.args.lora_noise_std
            if std == 0:
                loss = super().training_step(model, inputs, num_items_in_batch)
                self._check_finite("loss", loss)
                return loss
            with lora_noise(
                self.accelerator.unwrap_model(model), std=std, mode=self.args.lora_noise_mode,
                generator=self._noise_generator(),
            ) as info:
                loss = super().training_step(model, inputs, num_items_in_batch)
        self._check_finite("loss", loss)
        self._metrics["train"]["hano/noise_scale"].append(info["scale_mean"])
        return loss

    # ------------------------------------------------------------------------------------------ non-finite values
    def _get_grad_norm(self, model, grad_norm=None):
        """transformers' gradient norm (before the optimizer step), refused when it is not finite."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None:
            self._check_finite("gradient norm", grad_norm)
        return grad_norm

    def _check_finite(self, what: str, value) -> None:
        """Stops training with :class:`NonFiniteTrainingError` naming the step when ``value`` is NaN or inf (on any
        process), before the optimizer applies it and before a checkpoint stores it."""
        tensor = torch.as_tensor(value, dtype=torch.float32).detach().reshape(-1)[:1]
        if self.accelerator.num_processes > 1:
            tensor = self.accelerator.gather(tensor.to(self.accelerator.device))
        values = tensor.float().cpu()
        if bool(torch.isfinite(values).all()):
            return
        shown = next(float(v) for v in values if not math.isfinite(float(v)))
        step = self.state.global_step + 1
        raise NonFiniteTrainingError(
            f"training stopped at step {step}: the {what} is {shown} (not finite). Usual causes: a learning rate or "
            f"beta (now {self.args.beta}) too large, lambda values that are too large (column "
            f"{self.args.hardness_column!r}), fp16 overflow. Nothing of step {step} was applied or saved; the "
            f"checkpoints before it (in {self.args.output_dir}) are intact."
        )

    # -------------------------------------------------------------------------------------- checkpoint and resume
    def _save_checkpoint(self, model, trial):
        # The HaNo state goes in first: transformers writes trainer_state.json last and then rotates the older
        # checkpoints away, so a checkpoint that looks complete always holds it (checkpoint_problem).
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            self._save_hano_state(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))
        super()._save_checkpoint(model, trial)

    def _save_hano_state(self, folder: str) -> None:
        state = {"responsiveness": self.responsiveness_tracker.state_dict()}
        with atomic_file(os.path.join(folder, HANO_STATE_NAME)) as tmp, open(tmp, "w") as f:
            json.dump(state, f, indent=2)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint (an interrupted
        save is skipped, with a warning), and an explicit checkpoint that is incomplete is refused."""
        need_state = self.args.use_responsiveness
        if resume_from_checkpoint is True:
            found, skipped = last_complete_checkpoint(self.args.output_dir, hano_state=need_state)
            for path, why in skipped:
                logger.warning("HaNoDPOTrainer: skipping the incomplete checkpoint %s: %s", path, why)
            if found is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})"
                                 + (f"; incomplete: {skipped}" if skipped else ""))
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            problem = checkpoint_problem(resume_from_checkpoint, hano_state=need_state)
            if problem:
                raise ValueError(
                    f"cannot resume from {resume_from_checkpoint}: {problem}. Resume from an earlier complete "
                    "checkpoint (hanorec_trl.checkpoints.last_complete_checkpoint finds it) or start over."
                )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, HANO_STATE_NAME)
        if not os.path.exists(path):
            if self.args.use_responsiveness:
                raise ValueError(
                    f"{checkpoint} has no {HANO_STATE_NAME}: it was not written by HaNoDPOTrainer, or its save was "
                    "interrupted. Resuming from it would restart eta (a different result); resume from an earlier "
                    "complete checkpoint, or set use_responsiveness=False."
                )
            return
        with open(path) as f:
            state = json.load(f)
        self.responsiveness_tracker.load_state_dict(state["responsiveness"])

