"""Bad input to the trainer gets a clear error naming the problem (column, row, value)."""


import pytest
from conftest import preference_dataset, preference_rows
from datasets import Dataset
from trainer_utils import make_trainer
from trl import DPOConfig

from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer
from hanorec_trl.testing import tiny_qwen2


def test_missing_lambda_column_named_explicitly(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False)
    with pytest.raises(ValueError, match="hardness_column='hano_lambda'.*not a column of the train dataset.*"
                       "add_hardness_column"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, hardness_column="hano_lambda")
    eval_ds = preference_dataset(n=2, with_images=False)
    with pytest.raises(ValueError, match="not a column of the eval dataset"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, preference_dataset(n=4, with_images=False, lambdas=[1] * 4),
                     tmp_path, eval_dataset=eval_ds, hardness_column="hano_lambda")
    # switching hardness off accepts a dataset without lambda
    make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, use_hardness=False, hardness_column="hano_lambda")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_invalid_lambda_values_name_the_row(bad, tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0, 1.0, bad, 1.0])
    with pytest.raises(ValueError, match=r"row 2: (nan|inf|-0.5)"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path)


def test_lambda_column_of_wrong_type(tiny_tok, tmp_path):
    rows = preference_rows(n=4, with_images=False)
    for row in rows:
        row["hano_lambda"] = "easy"
    with pytest.raises(TypeError, match="one number per row.*string"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, Dataset.from_list(rows), tmp_path)


def test_plain_dpo_config_is_refused(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(TypeError, match="needs a HaNoDPOConfig"):
        HaNoDPOTrainer(model=tiny_qwen2(tiny_tok), args=args, train_dataset=ds, processing_class=tiny_tok)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(lora_noise_mode="multiplicative"), "lora_noise_mode"),
        (dict(responsiveness="median"), "responsiveness must be one of"),
        (dict(beta_floor=0.0), "beta_floor"),
        (dict(eta_min=2.0, eta_max=1.0), "eta_min"),
    ],
)
def test_config_refuses_what_cannot_work(fields, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        HaNoDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **fields)


def test_every_loss_ld_alpha_and_f_divergence_accepted_with_adaptive_beta(tmp_path):
    # beta' works with every TRL loss (tests/test_trainer_loss_types.py pins how)
    for fields in (dict(loss_type=["ipo"]), dict(ld_alpha=0.5), dict(f_divergence_type="forward_kl"),
                   dict(loss_type=["aot", "sigmoid"], loss_weights=[0.5, 1.0])):
        HaNoDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **fields)


def test_streamed_batch_with_bad_lambda(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path)
    examples = [dict(ds[i]) for i in range(2)]
    examples[1]["hano_lambda"] = float("nan")
    with pytest.raises(ValueError, match="invalid lambda in a batch"):
        trainer.data_collator(examples)
    del examples[1]["hano_lambda"]
    with pytest.raises(ValueError, match=r"examples \[1\] of a batch have no hardness column 'hano_lambda'"):
        trainer.data_collator(examples)


def test_full_finetuning_needs_a_reference(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    with pytest.raises(ValueError, match="Full fine-tuning without a ref_model"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, peft=False, lora_noise_std=0.0)
