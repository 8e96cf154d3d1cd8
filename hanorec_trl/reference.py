"""Reference log-probs computed once, as columns of a preference dataset: what several DPO trainings from one SFT
model share (each then skips the reference forward, as with TRL's ``precompute_ref_log_probs``)."""

from __future__ import annotations

import shutil
import tempfile

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def add_reference_logps(dataset, model, processing_class, *, max_length: int | None = None, batch_size: int = 8,
                        peft_config=None):
    """``dataset`` with TRL's ``ref_chosen_logps`` / ``ref_rejected_logps`` columns: the log-probs of every chosen
    and rejected completion under the reference of a DPO training of ``model`` (with ``peft_config``: the model
    itself, its new adapters disabled), computed by :class:`~hanorec_trl.HaNoDPOTrainer`'s prompt-once reference
    pass under ``max_length``. Returns None where that pass does not apply (the trainer then computes the reference
    every step)."""
    import torch

    from .config import HaNoDPOConfig
    from .trainer import HaNoDPOTrainer

    scratch = tempfile.mkdtemp(prefix="hanorec-reference-")  # the trainer is built, never trained or saved
    try:
        config = HaNoDPOConfig(output_dir=scratch, max_length=max_length, per_device_train_batch_size=batch_size,
                               use_hardness=False, use_responsiveness=False, lora_noise_std=0.0, report_to="none",
                               use_cpu=not torch.cuda.is_available(), bf16=model.dtype == torch.bfloat16)
        trainer = HaNoDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processing_class,
                                 peft_config=peft_config)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    computed = trainer.train_dataset
    if not all(c in computed.column_names for c in REFERENCE_COLUMNS) or len(computed) != len(dataset):
        return None
    for column in REFERENCE_COLUMNS:
        dataset = dataset.add_column(column, [float(v) for v in computed[column]])
    return dataset


__all__ = ["REFERENCE_COLUMNS", "add_reference_logps"]
