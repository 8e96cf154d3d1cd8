"""``HaNoDPOTrainer``: TRL's ``DPOTrainer`` with HaNoRec's adaptive beta and LoRA noise (paper Sec. 3,
``docs/trainer.md``).

How the per-sample, current-batch beta' gets into TRL 1.16 without copying its loss code
-----------------------------------------------------------------------------------------
TRL computes the loss in the private ``DPOTrainer._compute_loss``, where ``self.beta`` enters every loss branch
element-wise against per-pair tensors and the reward metrics, and is first read after the policy and reference
forwards. For every batch this trainer

1. computes the reference log-probs first (the same sequence log-probs as TRL's ``compute_ref_log_probs``) and hands
   them to TRL as if precomputed;
2. passes TRL a thin callable in place of the model: it runs the real model, forms TRL's sequence log-probs
   (:func:`trl_sequence_logps`, LD-weighted with ``ld_alpha``), the reward gaps ``R_i = beta0 * (logratio_w -
   logratio_l)`` (Eq. 7; exactly the margin TRL logs as ``rewards/margins`` at beta0), gathers them across
   processes, updates eta (Eq. 8) and sets ``self.beta`` to the detached per-sample tensor
   ``beta'_i = max(eta * lambda_i * beta0, floor)`` (Eq. 11) - or to its batch mean when a loss that sorts the
   batch (``aot``, ``aot_unpaired``) is in ``loss_type``;
3. lets TRL finish: each loss reads ``self.beta`` where it reads beta0 (Eq. 12 for ``sigmoid``), and the reward
   metrics become ``beta' * logratio``.

``self.beta`` is restored to beta0 afterwards. With hardness and responsiveness off the trainer calls TRL's loss
unchanged. ``tests/test_trainer_parity.py`` and ``tests/test_trainer_loss_types.py`` pin both paths to
``trl.DPOTrainer`` and fail if TRL's internals move.

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
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOTrainer
from trl.trainer.utils import use_adapter

from .checkpoints import HANO_STATE_NAME, checkpoint_problem, last_complete_checkpoint
from .config import SORTING_LOSS_TYPES, HaNoDPOConfig
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
from .lambda_column import HardnessCollator, MissingHardnessWarning, lambda_values, missing_column_message
from .model_utils import unwrap_hf_model
from .noise import lora_linears, lora_noise
from .nonfinite import (
    USUAL_CAUSES,
    NonFiniteSteps,
    NonFiniteTrainingError,
    WeightsFiniteCallback,
    describe,
    nonfinite_tensors,
)
from .responsiveness import ResponsivenessTracker

logger = logging.getLogger(__name__)

__all__ = ["HaNoDPOTrainer", "NoLoRAWarning", "NonFiniteTrainingError", "trl_sequence_logps"]

ZERO_GRADIENT_STEPS = 3  # optimizer steps in a row with a gradient norm of exactly 0 before the warning
ETA_SIGNAL_STEPS = 5  # optimizer steps without an informative batch before the responsiveness_eps warning


class NoLoRAWarning(UserWarning):
    """``lora_noise_std > 0`` but the model has no LoRA adapter: NoDO is skipped, the model trains without noise."""


def trl_sequence_logps(per_token_logps: torch.Tensor, completion_mask: torch.Tensor, ld_alpha: float | None
                       ) -> torch.Tensor:
    """TRL 1.16's sequence log-probs (``_compute_loss`` / ``compute_ref_log_probs``), reproduced so that the reward
    gaps of eta see what TRL's loss sees: the completion's per-token log-probs summed, or with LD-DPO (``ld_alpha``)
    ``shared + ld_alpha * tail``, where the shared part is as long as the shorter completion of the pair.

    ``completion_mask`` is TRL's ``[chosen; rejected]`` mask over the input positions (shifted by one here, as TRL
    does). The parity tests compare the result with TRL's own loss, so a change in TRL fails them.
    """
    shift_mask = completion_mask[..., 1:]
    per_token = per_token_logps[:, -shift_mask.size(1):]
    if ld_alpha is None:
        return per_token.sum(dim=1)
    positions = shift_mask.cumsum(dim=1)
    chosen_lens, rejected_lens = shift_mask.sum(dim=1).long().chunk(2, dim=0)
    shared = torch.minimum(chosen_lens, rejected_lens).repeat(2).to(per_token.device).unsqueeze(1)
    shared_logps = (per_token * ((positions > 0) & (positions <= shared))).sum(dim=1)
    tail_logps = (per_token * (positions > shared)).sum(dim=1)
    return shared_logps + ld_alpha * tail_logps


class _AdaptiveBetaForward:
    """Stands in for the policy model inside TRL's loss: runs it, then sets the trainer's per-sample beta'."""

    def __init__(self, trainer: HaNoDPOTrainer, model: Callable, ref_logps: tuple, completion_mask: torch.Tensor,
                 lambdas: torch.Tensor | None, mode: str):
        self.trainer = trainer
        self.model = model
        self.ref_chosen, self.ref_rejected = ref_logps
        self.completion_mask = completion_mask
        self.lambdas = lambdas
        self.mode = mode
        self.done = False

    def __call__(self, **kwargs: Any) -> Any:
        outputs = self.model(**kwargs)
        if self.done or not kwargs.get("fused_lm_head"):
            return outputs  # the deprecated logits recomputation of return_outputs=True
        self.done = True
        logps = trl_sequence_logps(outputs.log_probs, self.completion_mask, self.trainer.ld_alpha).detach()
        chosen, rejected = logps.chunk(2, dim=0)
        margin = (chosen - self.ref_chosen) - (rejected - self.ref_rejected)
        self.trainer._set_adaptive_beta(margin, self.lambdas, self.mode)
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

    - **HaRS** (Eq. 4-8, 11): each pair i is trained at `beta'_i = max(eta_B * lambda_i * beta0, beta_floor)`, detached,
      wherever TRL's loss uses beta (every `loss_type`, lists of them, `ld_alpha`, every f-divergence;
      `docs/trainer.md`). `lambda_i` is read from the dataset's hardness column (compute it offline with
      [`add_hardness_column`]; without it lambda = 1, with a warning); `eta_B` comes from the current batch's reward
      gaps `R_i = beta0 * delta_i`, gathered across processes, through a [`ResponsivenessTracker`] whose state is
      saved in checkpoints (`responsiveness="beta_dpo"`: beta-DPO's batch beta).
    - **NoDO** (Eq. 10): during every training step (forward, backward and any checkpoint recompute) the active LoRA
      matrices carry Gaussian noise (`lora_noise_std`); never in evaluation or in the reference forward. A model
      without LoRA adapters trains without noise (one warning).
    - **Nothing non-finite is applied or saved**: a step with a non-finite loss or gradient norm is skipped; training
      stops with `NonFiniteTrainingError` at the `max_nonfinite_steps`-th in a row (`hanorec_trl/nonfinite.py`).
    - Logs `hano/eta`, `hano/beta_mean`, `hano/beta_min`, `hano/beta_max`, `hano/lambda_mean`,
      `hano/lambda_defaulted`, `hano/nonfinite_beta`, `hano/noise_scale` and `hano/nonfinite_steps`; the reward
      metrics use beta'.

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
        self._lambda_default_warned = False
        if args.use_hardness:
            self._check_lambda_columns(args, train_dataset, eval_dataset)

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
        self._trl_data_collator = self.data_collator  # TRL's own (or the user's): used where TRL's code collates
        self._vision_caches: dict[int, VisionFeatureCache | None] = {}
        self.fast_path_off_reason = self._fast_path_off_reason(data_collator, compute_metrics)
        # one packed collator for the batches and the reference cache (its fallback is logged once)
        self._packed = PackedPreferenceCollator(self.processing_class, max_length=args.max_length,
                                                fallback=self._trl_data_collator)
        if self.fast_path_off_reason is None:
            self.data_collator = self._packed
            logger.info("HaNoDPOTrainer: prompt-once fast path on")
        elif args.fast_prompt_once:
            logger.warning("HaNoDPOTrainer: prompt-once fast path off: %s", self.fast_path_off_reason)
        if args.use_hardness:
            self.data_collator = HardnessCollator(self.data_collator, args.lambda_column, args.lambda_max,
                                                  required=args.hardness_column is not None)
        self._maybe_cache_reference_logps()
        self.responsiveness_tracker = ResponsivenessTracker(
            momentum=args.responsiveness_momentum,
            eps=args.responsiveness_eps,
            warmup=args.responsiveness_warmup,
            eta_min=args.eta_min,
            eta_max=args.eta_max,
            mode=args.responsiveness,
            alpha=args.beta_dpo_alpha,
            beta0=args.beta,
        )
        self._eta_signal_warned = False
        self.nodo_active = args.lora_noise_std > 0 and bool(lora_linears(self.model))
        if args.lora_noise_std > 0 and not self.nodo_active:
            warnings.warn(
                f"lora_noise_std={args.lora_noise_std} (NoDO) is skipped: {type(self.model).__name__} has no active "
                "LoRA linear layer, so the model trains without noise. Pass peft_config=LoraConfig(...) (or a "
                "PeftModel) for NoDO, or set lora_noise_std=0 to silence this warning.",
                NoLoRAWarning,
                stacklevel=2,
            )
        self._noise_step = -1
        self._noise_micro_step = 0
        # the non-finite guard (hanorec_trl/nonfinite.py); DeepSpeed steps its optimizer itself: stop at once there
        limit = 1 if self.is_deepspeed_enabled else args.max_nonfinite_steps
        self._nonfinite = NonFiniteSteps(limit)
        self._step_bad_loss: float | None = None
        self._zero_gradient_steps = 0
        self.add_callback(WeightsFiniteCallback(self))

    # ------------------------------------------------------------------------------------------------ data plumbing
    def _check_lambda_columns(self, args: HaNoDPOConfig, train_dataset, eval_dataset) -> None:
        """Checks the lambda column of every map-style dataset once (rows named), the reachable beta' against
        ``beta_floor``, and warns once when the column is absent and ``hardness_column`` was left unset."""
        evals = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]
        missing = []
        for name, dataset in [("train", train_dataset), *evals]:
            values = lambda_values(dataset, args.lambda_column, name, args.lambda_max,
                                   required=args.hardness_column is not None)
            if values is not None:
                self._check_reachable_beta(args, values, name)
            elif isinstance(dataset, Dataset):
                missing.append(f"the {name} dataset")
        if missing:
            self._warn_lambda_default(args.lambda_column, " and ".join(missing))

    def _warn_lambda_default(self, column: str, where: str) -> None:
        if not self._lambda_default_warned:
            self._lambda_default_warned = True
            warnings.warn(missing_column_message(column, where), MissingHardnessWarning, stacklevel=3)

    @staticmethod
    def _check_reachable_beta(args: HaNoDPOConfig, values: np.ndarray, name: str) -> None:
        """Refuses a column for which every beta' = max(eta * lambda * beta0, beta_floor) is the floor."""
        if values.size == 0:
            return
        largest = float(values.max())
        eta_bound = 1.0 if not args.use_responsiveness else (args.eta_max if args.eta_max is not None else math.inf)
        reachable = 0.0 if largest == 0 else largest * eta_bound * args.beta
        if reachable <= args.beta_floor:
            raise ValueError(
                f"beta_floor ({args.beta_floor}) is at or above every beta' the {name} dataset can reach: the largest "
                f"lambda in column {args.lambda_column!r} is {largest:g} and eta <= {eta_bound:g}, so eta * lambda * "
                f"beta <= {reachable:g}. Every pair would train at the floor (an all-zero column: loss ln 2 and zero "
                "gradients at every step). Fix the column, or lower beta_floor."
            )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """TRL's preparation; TRL drops rows whose prompt alone fills ``max_length``: said, and refused when that is
        every row (TRL would fail later, far from the cause)."""
        before = len(dataset) if isinstance(dataset, Dataset) else None
        prepared = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if before and isinstance(prepared, Dataset) and len(prepared) < before:
            if len(prepared) == 0:
                raise ValueError(
                    f"max_length={args.max_length} drops every row of the {dataset_name} dataset ({before} rows): "
                    "each prompt alone has max_length tokens or more, so no completion token would remain. Raise "
                    "max_length (or set it to None)."
                )
            logger.warning("HaNoDPOTrainer: max_length=%s: %d of %d rows of the %s dataset are dropped (their prompt "
                           "alone fills max_length), as TRL does", args.max_length, before - len(prepared), before,
                           dataset_name)
        return prepared

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [self.args.lambda_column] if self.args.use_hardness else []
        extra += ["ref_chosen_logps", "ref_rejected_logps"]  # cached reference log-probs (also for vision rows)
        self._signature_columns = [*self._signature_columns, *(c for c in extra if c not in self._signature_columns)]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL's precompute (``precompute_ref_log_probs=True``), always with TRL's own collator: TRL's code reads
        its batch layout (``completion_mask``), which the packed batches do not have."""
        collator = self.data_collator
        self.data_collator = getattr(self, "_trl_data_collator", collator)
        try:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        finally:
            self.data_collator = collator

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
        """Reference sequence log-probs of a batch (packed or standard), as TRL's ``compute_ref_log_probs`` forms
        them (:func:`trl_sequence_logps`), without toggling gradient checkpointing.

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
                per_token = packed_forward(reference, inputs, self._vision_cache_for(reference)).log_probs
                completion_mask = trl_layout_inputs(inputs)["completion_mask"]
            else:
                skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
                kwargs = {k: v for k, v in inputs.items() if k not in skip}
                completion_mask = inputs["completion_mask"]
                labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
                per_token = reference(**kwargs, labels=labels, fused_lm_head=True, use_cache=False).log_probs
            logps = trl_sequence_logps(per_token, completion_mask, self.ld_alpha)
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
        collator = self._packed
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
        column = self.args.lambda_column
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
            if lambdas is None and self.args.use_hardness:
                self._warn_lambda_default(column, "a batch")  # a streamed dataset, or one given to evaluate()
            mode = "train" if self.model.training else "eval"
            policy = _AdaptiveBetaForward(self, policy, ref_logps, trl_inputs["completion_mask"], lambdas, mode)
        precompute = self.precompute_ref_logps
        self.precompute_ref_logps = True  # hand TRL the reference log-probs computed above
        try:
            return super()._compute_loss(policy, trl_inputs, return_outputs)
        finally:
            self.precompute_ref_logps = precompute
            self.beta = self.args.beta

    def _set_adaptive_beta(self, margin: torch.Tensor, lambdas: torch.Tensor | None, mode: str) -> None:
        """Sets ``self.beta`` to beta'_i = max(eta * lambda_i * beta0, floor) for this batch (Eq. 7, 8, 11).

        ``margin`` is each pair's ``logratio_w - logratio_l`` from TRL's sequence log-probs; ``lambdas`` None means
        lambda = 1 (no hardness column). beta' is computed in float64 and handed to TRL in the log-probs' dtype, so
        a constant lambda = c gives TRL's loss at beta = c * beta0.
        """
        args = self.args
        beta0 = args.beta
        gaps = beta0 * margin.float()  # R_i, Eq. 7
        nonfinite_gaps = 0
        if args.use_responsiveness:
            eta = self.responsiveness_tracker.last_eta  # evaluation reads the current eta and leaves the state alone
            if mode == "train":
                gathered = self.accelerator.gather(gaps)  # every rank sees every gap, so all compute the same eta
                nonfinite_gaps = int((~torch.isfinite(gathered)).sum())
                if nonfinite_gaps == 0:  # a non-finite batch leaves the state alone; its step is skipped
                    eta = self.responsiveness_tracker.update(gathered)
                    self._warn_if_eta_has_no_signal()
        else:
            eta = 1.0
        lam = torch.ones(margin.numel(), dtype=torch.float64) if lambdas is None else lambdas.detach().cpu().double()
        defaulted = lambdas is None and args.use_hardness  # hardness asked for, but the rows have no column
        beta = lam * (eta * beta0)
        nonfinite = ~torch.isfinite(beta)
        beta = torch.where(nonfinite, torch.full_like(beta, beta0), beta).clamp(min=args.beta_floor)
        if SORTING_LOSS_TYPES.intersection(self.loss_types) and not bool((beta == beta[0]).all()):
            # these losses sort the batch's log-ratios: one beta for all pairs keeps them aligned
            beta = beta.mean().expand(beta.numel())
        self.beta = beta.to(margin.device, margin.dtype)

        device = self.accelerator.device
        metrics = self._metrics[mode]
        all_beta = self.accelerator.gather(beta.to(device, torch.float32))
        metrics["hano/eta"].append(float(eta))
        metrics["hano/beta_mean"].append(all_beta.mean().item())
        metrics["hano/beta_min"].append(all_beta.min().item())
        metrics["hano/beta_max"].append(all_beta.max().item())
        metrics["hano/lambda_mean"].append(self.accelerator.gather(lam.to(device, torch.float32)).mean().item())
        metrics["hano/lambda_defaulted"].append(float(defaulted))
        metrics["hano/nonfinite_beta"].append(self.accelerator.gather(nonfinite.sum().to(device)).sum().item())
        if nonfinite_gaps:
            metrics["hano/nonfinite_gaps"].append(float(nonfinite_gaps))

    def _warn_if_eta_has_no_signal(self) -> None:
        """Warns once when no batch of the first optimizer steps had a mean |R| above ``responsiveness_eps``."""
        tracker = self.responsiveness_tracker
        steps = self.state.global_step + 1  # this one included
        if self._eta_signal_warned or tracker.steps > 0 or steps < ETA_SIGNAL_STEPS:
            return
        self._eta_signal_warned = True
        warnings.warn(
            f"responsiveness_eps={self.args.responsiveness_eps}: no batch of the first {steps} "
            f"optimizer steps had a mean |reward gap| that large (the largest was {tracker.largest_magnitude:.3g}), so "
            "eta has stayed 1 and responsiveness has had no effect. Lower responsiveness_eps (default 1e-6).",
            UserWarning,
            stacklevel=2,
        )

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
            if not self.nodo_active:
                loss = super().training_step(model, inputs, num_items_in_batch)
            else:
                with lora_noise(
                    self.accelerator.unwrap_model(model), std=self.args.lora_noise_std,
                    mode=self.args.lora_noise_mode, generator=self._noise_generator(),
                ) as info:
                    loss = super().training_step(model, inputs, num_items_in_batch)
                self._metrics["train"]["hano/noise_scale"].append(info["scale_mean"])
        value = float(loss.detach().float().mean())
        if not math.isfinite(value) and self._step_bad_loss is None:
            self._step_bad_loss = value  # the optimizer step is then skipped in _get_grad_norm
        return loss

    # ------------------------------------------------------------------------------------------ non-finite values
    def _get_grad_norm(self, model, grad_norm=None):
        """transformers' gradient norm (right before the optimizer step); a step whose loss or gradient norm is not
        finite (on any process) is skipped: every gradient is dropped, so the optimizer leaves the weights and its
        own state alone (``hanorec_trl/nonfinite.py``)."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        bad_loss, self._step_bad_loss = self._step_bad_loss, None
        norm = float(grad_norm) if grad_norm is not None else 0.0
        flags = torch.tensor([bad_loss is not None, 0.0 if bad_loss is None else bad_loss, norm],
                             dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            rows = self.accelerator.gather(flags.float()).view(-1, 3).double().cpu()
            losses = rows[rows[:, 0] > 0, 1]
            bad_loss = float(losses[0]) if losses.numel() else None
            norm = float(rows[0, 2])
        # with fp16 loss scaling, an overflowing gradient is GradScaler's own business (it skips the step itself)
        bad_norm = not math.isfinite(norm) and self.accelerator.scaler is None
        if bad_loss is None and not bad_norm:
            self._nonfinite.finite()
            self._watch_zero_gradients(norm)
            return grad_norm
        for parameter in model.parameters():
            parameter.grad = None
        step = self.state.global_step + 1
        what, value = ("loss", bad_loss) if bad_loss is not None else ("gradient norm", norm)
        if self._nonfinite.nonfinite(step):
            first = self._nonfinite.first_of_run
            run = f"steps {first}-{step}" if first < step else f"step {step}"
            raise NonFiniteTrainingError(
                f"training stopped at step {step}: the {what} is {describe(value)} (not finite)"
                + (f", as in the {self._nonfinite.consecutive - 1} skipped step(s) before it" if first < step else "")
                + f" (max_nonfinite_steps={self._nonfinite.limit}). "
                f"Usual causes: {USUAL_CAUSES} (beta {self.args.beta:g}, learning_rate {self.args.learning_rate:g}). "
                f"Nothing of {run} was applied or saved; the checkpoints before it (in {self.args.output_dir}) are "
                "intact."
            )
        logger.warning(
            "HaNoDPOTrainer: step %d: the %s is %s (not finite); the update is skipped (%d in a row; training stops "
            "at %d, max_nonfinite_steps)", step, what, describe(value), self._nonfinite.consecutive,
            self._nonfinite.limit,
        )
        return grad_norm

    def _watch_zero_gradients(self, norm: float) -> None:
        """Warns once when the gradient norm has been exactly 0 for ``ZERO_GRADIENT_STEPS`` steps in a row."""
        self._zero_gradient_steps = self._zero_gradient_steps + 1 if norm == 0.0 else 0
        if self._zero_gradient_steps == ZERO_GRADIENT_STEPS:
            step = self.state.global_step + 1
            warnings.warn(
                f"the gradient norm has been exactly 0 for {ZERO_GRADIENT_STEPS} optimizer steps in a row (steps "
                f"{step - ZERO_GRADIENT_STEPS + 1}-{step}): nothing trains. Usual causes: saturated log-probs (fp16 "
                "underflow, a learning rate too large"
                + (f", lora_noise_std={self.args.lora_noise_std} swamping the adapter" if self.nodo_active else "")
                + ")" + (f", every beta' at beta_floor={self.args.beta_floor}" if self.args.uses_adaptive_beta
                         else "") + ".",
                UserWarning,
                stacklevel=2,
            )

    def _check_weights_finite(self, where: str) -> None:
        """Raises :class:`NonFiniteTrainingError` when a trainable weight holds a NaN or an infinity (any process)."""
        bad = nonfinite_tensors((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
        if self.accelerator.num_processes > 1:
            found = torch.tensor([float(len(bad))], device=self.accelerator.device)
            if not bool(self.accelerator.gather(found).sum() > 0):
                return
        elif not bad:
            return
        step = self.state.global_step + (0 if where == "saving" else 1)
        raise NonFiniteTrainingError(
            f"training stopped at step {step}: {where} left {len(bad) or 'some'} trainable weight tensor(s) not "
            f"finite ({', '.join(bad[:3]) or 'on another process'}). Usual causes: {USUAL_CAUSES}, NaN in an "
            "optimizer setting. They are not saved: the trainer refuses to write non-finite weights; the checkpoints "
            f"before step {step} (in {self.args.output_dir}) are intact."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and "loss" in logs:
            logs["hano/nonfinite_steps"] = self._nonfinite.total  # skipped updates so far
        super().log(logs, start_time)

    # -------------------------------------------------------------------------------------- checkpoint and resume
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        self._check_weights_finite("saving")
        super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, model, trial):
        self._check_weights_finite("saving")
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

