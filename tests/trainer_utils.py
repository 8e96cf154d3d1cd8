"""Builders shared by the trainer tests: a HaNo or plain TRL DPO trainer around a tiny model, and hand-computed
sequence log-probabilities that do not go through TRL."""

import torch
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer
from hanorec_trl.model_utils import language_model_lora_regex

COMMON = dict(
    per_device_train_batch_size=2,
    per_device_eval_batch_size=2,
    max_steps=3,
    learning_rate=5e-3,
    use_cpu=True,
    bf16=False,
    report_to="none",
    logging_steps=1,
    save_strategy="no",
    disable_tqdm=True,
    max_length=None,
    seed=0,
    dataloader_num_workers=0,
)


def lora_config(model, **overrides):
    # init_lora_weights=False: B is random, so the policy differs from the reference from the first step.
    kwargs = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=language_model_lora_regex(model),
                  init_lora_weights=False)
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def make_trainer(model, processing_class, dataset, tmp_path, hano=True, eval_dataset=None, callbacks=None,
                 ref_model=None, peft=True, **config):
    cls_cfg, cls_tr = (HaNoDPOConfig, HaNoDPOTrainer) if hano else (DPOConfig, DPOTrainer)
    args = cls_cfg(output_dir=str(tmp_path), **{**COMMON, **config})
    return cls_tr(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        peft_config=lora_config(model) if peft else None,
        callbacks=callbacks,
    )


def first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def model_inputs(batch):
    skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "hano_lambda"}
    return {k: v for k, v in batch.items() if k not in skip}


def sequence_logps(model, batch):
    """Sum of log p(token) over completion tokens, from plain logits (no TRL code involved)."""
    logits = model(**model_inputs(batch), use_cache=False).logits.float()
    ids = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=1)


def lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def losses(log_history):
    return [h["loss"] for h in log_history if "loss" in h]


class GradRecorder:
    """TrainerCallback recording the LoRA gradients right before each optimizer step."""

    def __init__(self):
        self.grads = []

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(lora_grads(model))


def rows_of(trainer, n):
    """The first n rows of the trainer's (prepared) training dataset, in order."""
    return [dict(trainer.train_dataset[i]) for i in range(n)]


def standard_batch(trainer, rows):
    """TRL's own [chosen; rejected] batch of these rows (whatever collator the trainer uses)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DataCollatorForVisionPreference

    if "images" in rows[0]:
        collator = DataCollatorForVisionPreference(processor=trainer.processing_class)
    else:
        collator = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)
    batch = collator([{k: v for k, v in r.items() if k != "hano_lambda"} for r in rows])
    batch["hano_lambda"] = torch.tensor([r["hano_lambda"] for r in rows])
    return trainer._prepare_inputs(batch)


def trainer_batch(trainer, rows):
    """The batch the trainer's own collator (packed or standard) makes of these rows, on the trainer's device."""
    return trainer._prepare_inputs(trainer.data_collator([dict(r) for r in rows]))
