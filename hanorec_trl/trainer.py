"""``HaNoDPOTrainer``: TRL's ``DPOTrainer`` with HaNoRec's adaptive beta and LoRA noise (paper Sec. 3, DESIGN 2).

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

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOTrainer

from .config import HaNoDPOConfig
from .noise import _lora_linears, lora_noise
from .responsiveness import ResponsivenessTracker

logger = logging.getLogger(__name__)

HANO_STATE_NAME = "hano_state.json"


def validate_lambda_column(dataset: Any, column: str, name: str) -> None:
    """Checks that ``dataset[column]`` exists and holds finite, non-negative numbers; errors name the rows."""
    if dataset is None or isinstance(dataset, IterableDataset):
        return  # streamed rows are checked batch by batch
    if not isinstance(dataset, Dataset):
        return
    if column not in dataset.column_names:
        raise ValueError(
            f"use_hardness=True needs a column {column!r} with the hardness lambda of each row in the {name} dataset; "
            f"its columns are {dataset.column_names}. Compute it with hanorec_trl.add_hardness_column (or "
            f"hanorec_trl.encoders.add_lambda_column), or set use_hardness=False."
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


class HardnessCollator:
    """Wraps a collator: takes ``column`` out of each example, collates the rest, adds it back as a float tensor.

    TRL's preference collators ignore unknown keys, so without this the hardness column would never reach the loss.
    """

    def __init__(self, inner: Callable, column: str):
        self.inner = inner
        self.column = column

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
        bad = ~torch.isfinite(lambdas) | (lambdas < 0)
        if bad.any():
            raise ValueError(
                f"invalid lambda in a batch (NaN, inf or negative) in column {self.column!r}: "
                f"{lambdas[bad].tolist()[:5]}"
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

    Example:

    ```python
    >>> from peft import LoraConfig
    >>> from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer, add_hardness_column

    >>> dataset, _ = add_hardness_column(dpo_dataset, hardness_index, item_rows)  # adds "hano_lambda"
    >>> trainer = HaNoDPOTrainer(
    ...     model=model,
    ...     args=HaNoDPOConfig(output_dir="hano-dpo", beta=0.1, lora_noise_std=0.01),
    ...     train_dataset=dataset,
    ...     processing_class=processor,
    ...     peft_config=LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"),
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "dpo", "hanorec"]
    _name = "HaNoDPO"

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
            args = HaNoDPOConfig(f"{str(model_name).split('/')[-1] or 'model'}-HaNoDPO")
        elif not isinstance(args, HaNoDPOConfig):
            raise TypeError(
                f"HaNoDPOTrainer needs a HaNoDPOConfig, got {type(args).__name__}. Build one with the same fields, "
                "e.g. HaNoDPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init})."
            )
        if args.use_hardness:
            validate_lambda_column(train_dataset, args.hardness_column, "train")
            evals = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]
            for name, dataset in evals:
                validate_lambda_column(dataset, args.hardness_column, name)

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
        if args.use_hardness:
            self.data_collator = HardnessCollator(self.data_collator, args.hardness_column)
        self.responsiveness_tracker = ResponsivenessTracker(
            momentum=args.responsiveness_momentum,
            eps=args.responsiveness_eps,
            warmup=args.responsiveness_warmup,
            eta_min=args.eta_min,
            eta_max=args.eta_max,
            mode=args.responsiveness,
        )
        if args.lora_noise_std > 0 and not _lora_linears(self.model, None):
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
        column = self.args.hardness_column
        if self.args.use_hardness and column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, column]

    # ------------------------------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs, return_outputs):
        column = self.args.hardness_column
        lambdas = inputs.get(column) if self.args.use_hardness else None
        inputs = {k: v for k, v in inputs.items() if k != column}
        if not self.args.uses_adaptive_beta:
            return super()._compute_loss(model, inputs, return_outputs)

        mode = "train" if self.model.training else "eval"
        batch_size = inputs["input_ids"].size(0) // 2
        if lambdas is None:
            if self.args.use_hardness:
                raise ValueError(f"use_hardness=True but the batch has no {column!r} column")
            lambdas = torch.ones(batch_size)
        lambdas = lambdas.to(self.accelerator.device, torch.float32)

        if "ref_chosen_logps" in inputs:  # precompute_ref_log_probs=True
            ref_logps = (inputs["ref_chosen_logps"], inputs["ref_rejected_logps"])
        else:
            ref_logps = self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else model, inputs)
            inputs = {**inputs, "ref_chosen_logps": ref_logps[0], "ref_rejected_logps": ref_logps[1]}
        ref_logps = tuple(r.to(self.accelerator.device) for r in ref_logps)

        policy = _AdaptiveBetaForward(self, model, ref_logps, lambdas, mode)
        precompute = self.precompute_ref_logps
        self.precompute_ref_logps = True
        try:
            return super()._compute_loss(policy, inputs, return_outputs)
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
        std = self.args.lora_noise_std
        if std == 0:
            return super().training_step(model, inputs, num_items_in_batch)
        with lora_noise(
            self.accelerator.unwrap_model(model), std=std, mode=self.args.lora_noise_mode,
            generator=self._noise_generator(),
        ) as info:
            loss = super().training_step(model, inputs, num_items_in_batch)
        self._metrics["train"]["hano/noise_scale"].append(info["scale_mean"])
        return loss

    # -------------------------------------------------------------------------------------- checkpoint and resume
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if not os.path.isdir(folder):  # the checkpoint was rotated away or not written
            return
        state = {"responsiveness": self.responsiveness_tracker.state_dict()}
        tmp = os.path.join(folder, HANO_STATE_NAME + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, os.path.join(folder, HANO_STATE_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, HANO_STATE_NAME)
        if not os.path.exists(path):
            if self.args.use_responsiveness:
                logger.warning(
                    "%s has no %s (not written by HaNoDPOTrainer): eta restarts from a fresh ResponsivenessTracker",
                    checkpoint, HANO_STATE_NAME,
                )
            return
        with open(path) as f:
            state = json.load(f)
        self.responsiveness_tracker.load_state_dict(state["responsiveness"])

