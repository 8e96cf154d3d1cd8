"""Swapping DPOTrainer for HaNoDPOTrainer in a working TRL script trains (issue 30, items 1 and 3).

Item 1: a dataset without the lambda column trains with lambda = 1 (one warning, hano/lambda_defaulted); NoDO on a
model without LoRA is skipped with a warning; a trainer built without ``args`` trains. Item 3: the fast path never
changes what runs: TRL's precompute of reference log-probs keeps TRL's collator, text rows on a Qwen2.5-VL model are
packed exactly, and a vision batch whose prompt fills ``max_length`` goes through TRL's collator.
"""

import logging
import warnings

import pytest
import torch
from conftest import preference_dataset, preference_rows
from datasets import Dataset
from trainer_utils import first_batch, lora_config, lora_grads, make_trainer, rows_of
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from hanorec_trl import HaNoDPOTrainer
from hanorec_trl.fast.packing import PACKED_KEY, PackedPreferenceCollator
from hanorec_trl.lambda_column import MissingHardnessWarning
from hanorec_trl.testing import tiny_qwen2, tiny_qwen2_5_vl
from hanorec_trl.trainer import NoLoRAWarning

TIMING = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}


def _history(trainer, drop=()):
    return [{k: v for k, v in h.items() if k not in TIMING and k not in drop} for h in trainer.state.log_history]


# ------------------------------------------------------------------------------------------------------ item 1


def test_dataset_without_lambda_column_trains_with_lambda_one(tiny_tok, tmp_path):
    """A plain TRL dataset with the defaults (hardness on, hardness_column unset): one warning, lambda = 1 visible
    in the logs, and the run is the one with use_hardness=False, value for value."""
    ds = preference_dataset(n=6, with_images=False)  # no hano_lambda column
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "default", responsiveness_warmup=0)
        trainer.train()
    missing = [w for w in caught if issubclass(w.category, MissingHardnessWarning)]
    assert len(missing) == 1, [str(w.message) for w in missing]
    assert "the train dataset has no 'hano_lambda' column: lambda = 1" in str(missing[0].message)
    assert "add_hardness_column" in str(missing[0].message)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(h["hano/lambda_defaulted"] == 1.0 and h["hano/lambda_mean"] == 1.0
                                    for h in logged)
    assert any(h["hano/eta"] != 1.0 for h in logged)  # responsiveness still works

    off = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "off", responsiveness_warmup=0,
                       use_hardness=False)
    off.train()
    assert all(h.get("hano/lambda_defaulted", 0.0) == 0.0 for h in off.state.log_history)
    assert _history(trainer, drop={"hano/lambda_defaulted"}) == _history(off, drop={"hano/lambda_defaulted"})


def test_lambda_column_read_when_present_with_the_default(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[0.5, 2.0, 1.0, 1.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingHardnessWarning)
        trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, per_device_train_batch_size=4,
                               lora_noise_std=0.0)
    batch = first_batch(trainer)
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    metrics = trainer._metrics["train"]
    assert metrics["hano/lambda_defaulted"][-1] == 0.0 and metrics["hano/lambda_mean"][-1] == pytest.approx(1.25)


def test_nodo_without_lora_is_skipped_with_a_warning(tiny_tok, tmp_path):
    """Full fine-tuning (no LoRA) with lora_noise_std > 0: one NoLoRAWarning, and training is that of
    lora_noise_std=0, value for value."""
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    histories, messages = [], []
    for std in (0.01, 0.0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / str(std), peft=False,
                                   ref_model=tiny_qwen2(tiny_tok), lora_noise_std=std, max_steps=2)
            trainer.train()
        messages.append([str(w.message) for w in caught if issubclass(w.category, NoLoRAWarning)])
        assert trainer.nodo_active is False
        histories.append(_history(trainer))
    assert len(messages[0]) == 1 and "lora_noise_std=0.01 (NoDO) is skipped" in messages[0][0] and not messages[1]
    assert histories[0] == histories[1] and len(histories[0]) == 3


def test_trainer_built_without_args_trains_a_plain_dataset(tiny_tok, tmp_path, monkeypatch):
    """TRL's test_tag_added: no args, a dataset without lambda; the defaults must train."""
    monkeypatch.chdir(tmp_path)
    model = tiny_qwen2(tiny_tok)
    with pytest.warns(MissingHardnessWarning):
        trainer = HaNoDPOTrainer(model=model, processing_class=tiny_tok, peft_config=lora_config(model),
                                 train_dataset=preference_dataset(n=2, with_images=False))
    assert {"dpo", "trl", "hanorec"} <= set(trainer.model.model_tags)
    trainer.args.max_steps, trainer.args.report_to = 1, []
    trainer.train()
    assert trainer.state.global_step == 1


# ------------------------------------------------------------------------------------------------------ item 3


def test_precompute_ref_log_probs_for_a_dataset_given_to_evaluate(tiny_tok, tmp_path):
    """TRL's evaluate(eval_dataset=...) with precompute_ref_log_probs=True precomputes through self.data_collator's
    TRL layout; the trainer hands TRL its own collator there and keeps the packed one for the batches."""
    train, held_out = preference_dataset(n=4, with_images=False), preference_dataset(n=4, with_images=False, seed=3)
    results = {}
    for hano in (True, False):
        trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, train, tmp_path / str(hano), hano=hano,
                               precompute_ref_log_probs=True,
                               **(dict(use_hardness=False, use_responsiveness=False, lora_noise_std=0.0) if hano
                                  else {}))
        if hano:
            assert trainer.fast_path_off_reason is None and isinstance(trainer.data_collator, PackedPreferenceCollator)
        results[hano] = trainer.evaluate(eval_dataset=held_out)
        if hano:
            assert isinstance(trainer.data_collator, PackedPreferenceCollator)
    assert results[True]["eval_loss"] == pytest.approx(results[False]["eval_loss"], rel=1e-5)
    assert results[True]["eval_rewards/margins"] == pytest.approx(results[False]["eval_rewards/margins"], rel=1e-4)


@pytest.mark.parametrize("hano", [False, True], ids=["hano_off", "hano_on"])
def test_text_rows_on_a_qwen_vl_model_are_packed_exactly(hano, tiny_tok, tiny_processor, tmp_path):
    """A Qwen2.5-VL model trained on text-only preference rows (TRL's test_train_vlm_text_only_data): packed batches
    (no mm_token_type_ids) give TRL's loss and gradients."""
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    switches = dict(use_hardness=hano, use_responsiveness=False, lora_noise_std=0.0)
    results = {}
    for fast in (True, False):
        trainer = make_trainer(tiny_qwen2_5_vl(tiny_tok), tiny_processor, ds, tmp_path / str(fast),
                               fast_prompt_once=fast, per_device_train_batch_size=4, **switches)
        assert (trainer.fast_path_off_reason is None) == fast
        batch = first_batch(trainer)
        assert (PACKED_KEY in batch) == fast and "mm_token_type_ids" not in batch
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results[fast] = loss.detach(), lora_grads(trainer.model)
    (loss_fast, grads_fast), (loss_trl, grads_trl) = results[True], results[False]
    assert loss_trl.item() != pytest.approx(0.6931472, abs=1e-6)
    torch.testing.assert_close(loss_fast, loss_trl, rtol=0, atol=1e-6)
    for name in grads_trl:
        torch.testing.assert_close(grads_fast[name], grads_trl[name], rtol=1e-5, atol=1e-7, msg=name)


def _vision_prompt_lengths(processor, rows):
    collator = PackedPreferenceCollator(processor)
    return [len(collator._vision_row(dict(row))[1]) for row in rows]


def test_vision_prompt_that_fills_max_length_goes_through_trls_collator(tiny_tok, tiny_processor, tmp_path, caplog):
    """TRL truncates a vision row whose prompt alone reaches max_length (its completion is cut away) and trains on;
    the packed collator hands such a batch to TRL's collator unchanged (logged once), so the loss is TRL's."""
    rows = preference_rows(n=4, with_images=True, lambdas=[1.0] * 4)
    for k, row in enumerate(rows):  # prompts of different lengths: a longer closing line on rows 1-3
        row["prompt"][0]["content"].append({"type": "text", "text": " the list is done" * k})
    lengths = _vision_prompt_lengths(tiny_processor, rows)
    max_length = sorted(lengths)[1]  # at least one prompt fills max_length, at least one does not
    assert min(lengths) < max_length <= max(lengths)
    ds = Dataset.from_list(rows)
    switches = dict(use_hardness=False, use_responsiveness=False, lora_noise_std=0.0, max_length=max_length,
                    per_device_train_batch_size=4)
    hano = make_trainer(tiny_qwen2_5_vl(tiny_tok), tiny_processor, ds, tmp_path / "hano", **switches)
    trl = make_trainer(tiny_qwen2_5_vl(tiny_tok), tiny_processor, ds, tmp_path / "trl", hano=False,
                       max_length=max_length, per_device_train_batch_size=4)
    assert hano.fast_path_off_reason is None
    examples = rows_of(hano, 4)
    with caplog.at_level(logging.WARNING, logger="hanorec_trl.fast.packing"):
        ours = hano.data_collator([dict(e) for e in examples])
        hano.data_collator([dict(e) for e in examples])
    assert PACKED_KEY not in ours  # TRL's layout
    theirs = DataCollatorForVisionPreference(processor=tiny_processor, max_length=max_length)(
        [{k: v for k, v in e.items() if not k.startswith("ref_")} for e in examples])
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    fallbacks = [r.getMessage() for r in caplog.records if "TRL truncates" in r.getMessage()]
    assert len(fallbacks) == 1, fallbacks  # two batches fell back, logged once
    hano.model.train()
    trl.model.train()
    loss_hano = hano.compute_loss(hano.model, hano._prepare_inputs(ours))
    loss_trl = trl.compute_loss(trl.model, trl._prepare_inputs(theirs))
    assert torch.equal(loss_hano, loss_trl)
    hano.train()  # trains on, as TRL does (the reference cache fell back the same way)
    assert hano.state.log_history[-1]["train_loss"] is not None
