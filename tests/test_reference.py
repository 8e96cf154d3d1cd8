"""add_reference_logps: the reference log-probs a DPO training would use, computed once as dataset columns."""

import torch
from conftest import preference_dataset
from trainer_utils import lora_config, make_trainer

from hanorec_trl.reference import REFERENCE_COLUMNS, add_reference_logps
from hanorec_trl.testing import tiny_qwen2


def test_reference_columns_equal_trls_precomputed_reference(tiny_lm, tiny_tok, tmp_path):
    """The columns are what trl.DPOTrainer(precompute_ref_log_probs=True) computes for the same model, adapter and
    rows (the model with its new LoRA disabled), and they differ from the policy's (init_lora_weights=False), so a
    pass that forgot to disable the adapter would fail."""
    dataset = preference_dataset(with_images=False)
    torch.manual_seed(0)
    with_columns = add_reference_logps(dataset, tiny_lm, tiny_tok, batch_size=2, peft_config=lora_config(tiny_lm))
    assert with_columns is not None and set(REFERENCE_COLUMNS) <= set(with_columns.column_names)
    assert with_columns["prompt"] == dataset["prompt"]  # the rows, in their order

    fresh = tiny_qwen2(tiny_tok)  # the same seeded weights; PEFT changed tiny_lm in place
    trl = make_trainer(fresh, tiny_tok, dataset, tmp_path / "trl", hano=False, precompute_ref_log_probs=True)
    for column in REFERENCE_COLUMNS:
        ours, theirs = torch.tensor(with_columns[column]), torch.tensor(trl.train_dataset[column])
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, msg=column)
    assert not torch.allclose(torch.tensor(with_columns["ref_chosen_logps"]),
                              torch.tensor(with_columns["ref_rejected_logps"])), "chosen == rejected: vacuous"

