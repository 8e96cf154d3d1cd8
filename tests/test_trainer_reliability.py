"""Issue 28, trainer and configuration: a value that trains nothing is refused (the message names the field), a
late or deep failure becomes an early one, and nothing non-finite is ever applied to the weights or saved
(docs/reliability.md, "Trainer and configuration"; docs/trainer.md, "Differences from DPOTrainer")."""

import logging
import math
import re
import warnings

import pytest
import torch
from conftest import preference_dataset
from safetensors.torch import load_file
from trainer_utils import first_batch, make_trainer
from transformers import TrainerCallback

from hanorec_trl import HaNoDPOConfig
from hanorec_trl.noise import lora_noise
from hanorec_trl.testing import tiny_qwen2
from hanorec_trl.trainer import NonFiniteTrainingError

NAN = float("nan")


def config(tmp_path, **fields):
    return HaNoDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **fields)


# -------------------------------------------------------------------------------- refused in __post_init__


@pytest.mark.parametrize(
    "fields, name",
    [
        (dict(beta_floor=0.1), "beta_floor"),  # = beta: every warm-up step and lambda <= 1 pair at the floor
        (dict(beta_floor=0.5), "beta_floor"),
        (dict(lora_noise_std=1e6), "lora_noise_std"),
        (dict(lora_noise_std=1.0), "lora_noise_std"),
        (dict(lora_noise_std=100.0, lora_noise_mode="relative"), "lora_noise_std"),
        (dict(max_grad_norm=NAN), "max_grad_norm"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(lora_noise_seed=-5), "lora_noise_seed"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**32), "seed"),
        (dict(data_seed=-1), "data_seed"),
        (dict(max_steps=2.7), "max_steps"),
        (dict(max_steps=0), "max_steps"),
        (dict(max_length=1), "max_length"),
        (dict(learning_rate=NAN), "learning_rate"),
        (dict(learning_rate=-1e-4), "learning_rate"),
        (dict(weight_decay=NAN), "weight_decay"),
        (dict(adam_beta1=1.5), "adam_beta1"),
        (dict(adam_epsilon=NAN), "adam_epsilon"),
        (dict(num_train_epochs=NAN), "num_train_epochs"),
        (dict(per_device_train_batch_size=0), "per_device_train_batch_size"),
        (dict(gradient_accumulation_steps=1.5), "gradient_accumulation_steps"),
        (dict(label_smoothing=NAN), "label_smoothing"),
        (dict(ld_alpha=2.0), "ld_alpha"),
        (dict(discopop_tau=0.0), "discopop_tau"),
        (dict(responsiveness_eps=0.0), "responsiveness_eps"),
        (dict(beta_dpo_alpha=NAN), "beta_dpo_alpha"),
        (dict(max_nonfinite_steps=0), "max_nonfinite_steps"),
        (dict(hardness_column=""), "hardness_column"),
        (dict(responsiveness="median"), "responsiveness"),
    ],
)
def test_config_refuses_values_that_train_nothing_or_fail_late(fields, name, tmp_path):
    with pytest.raises(ValueError, match=rf"^{name} (must|\()"):
        config(tmp_path, **fields)


def test_values_transformers_checks_keep_its_message(tmp_path):
    with pytest.raises(ValueError, match="warmup_steps >= 0"):  # transformers' own check, first
        config(tmp_path, warmup_steps=-1)


def test_beta_floor_is_only_checked_when_beta_is_adaptive(tmp_path):
    config(tmp_path, beta_floor=0.5, use_hardness=False, use_responsiveness=False)  # the floor is unused: plain TRL


# -------------------------------------------------------------------------------- refused when the data is seen


def test_all_zero_lambda_column_is_refused(tiny_tok, tmp_path):
    """Every beta' would be the floor: loss ln 2 and zero gradients at every step."""
    ds = preference_dataset(n=4, with_images=False, lambdas=[0.0] * 4)
    with pytest.raises(ValueError, match=r"beta_floor \(1e-06\) is at or above every beta' the train dataset can "
                                         r"reach: the largest lambda in column 'hano_lambda' is 0"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path)


def test_floor_above_every_reachable_beta_is_refused(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[0.1, 0.2, 0.1, 0.2])
    # eta = 1 (responsiveness off): beta' = max(lambda * 0.1, 0.05) = 0.05 for every pair
    with pytest.raises(ValueError, match=r"beta_floor \(0.05\).*largest lambda in column 'hano_lambda' is 0.2"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, beta_floor=0.05, use_responsiveness=False)
    with pytest.raises(ValueError, match=r"eta <= 2"):  # eta_max bounds eta: still every pair at the floor
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, beta_floor=0.05, eta_max=2.0)
    # eta unbounded: a batch could lift beta' above the floor, so this is accepted
    make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, beta_floor=0.05)


def test_max_length_that_drops_every_row_is_refused(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    with pytest.raises(ValueError, match=r"^max_length=8 drops every row of the train dataset \(4 rows\)"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, max_length=8)


def test_huge_noise_gives_exactly_zero_gradients(tiny_tok, tmp_path):
    """Why lora_noise_std has an upper bound: at 1e6 the gradient is exactly 0 (the tiny model's numbers behind
    docs/nodo.md's bound)."""
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, per_device_train_batch_size=4,
                           use_responsiveness=False, lora_noise_std=0.0)
    batch = first_batch(trainer)
    trainer.model.train()
    norms = {}
    for std in (0.01, 1e6):
        trainer.model.zero_grad()
        with lora_noise(trainer.model, std=std, generator=torch.Generator().manual_seed(0)):
            trainer.compute_loss(trainer.model, batch).backward()
        norms[std] = sum(p.grad.double().pow(2).sum() for p in trainer.model.parameters() if p.grad is not None)
    assert norms[0.01] > 1e-6 and norms[1e6] == 0.0


def test_responsiveness_eps_above_every_gap_warns(tiny_tok, tmp_path):
    ds = preference_dataset(n=10, with_images=False, lambdas=[1.0] * 10)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, responsiveness_eps=1e6,
                           responsiveness_warmup=0, max_steps=5)
    with pytest.warns(UserWarning, match=r"^responsiveness_eps=1000000.0: no batch of the first 5 optimizer steps"):
        trainer.train()
    assert all(h["hano/eta"] == 1.0 for h in trainer.state.log_history if "hano/eta" in h)


# -------------------------------------------------------------------------------- nothing non-finite applied


class WeightsAfterEachStep(TrainerCallback):
    def __init__(self):
        self.weights = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def _nan_loss_at(trainer, steps):
    """Makes the loss NaN at the given (1-based) optimizer steps, as an fp16 overflow or a bad batch would."""
    compute = trainer._compute_loss

    def poisoned(model, inputs, return_outputs):
        loss = compute(model, inputs, return_outputs)
        return loss * NAN if trainer.state.global_step + 1 in steps else loss

    trainer._compute_loss = poisoned


def test_a_non_finite_step_is_skipped_and_training_goes_on(tiny_tok, tmp_path, caplog):
    ds = preference_dataset(n=8, with_images=False, lambdas=[1.0] * 8)
    recorder = WeightsAfterEachStep()
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, callbacks=[recorder], max_steps=4)
    _nan_loss_at(trainer, {2})
    with caplog.at_level(logging.WARNING, logger="hanorec_trl.trainer"):
        trainer.train()
    assert trainer.state.global_step == 4
    before, skipped, after = recorder.weights[0], recorder.weights[1], recorder.weights[2]
    assert all(torch.equal(skipped[n], before[n]) for n in before)  # step 2 changed nothing
    assert not all(torch.equal(after[n], skipped[n]) for n in before)  # step 3 trained again
    assert all(torch.isfinite(w).all() for w in recorder.weights[-1].values())
    messages = [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith("HaNoDPOTrainer: step 2: the loss is nan (not finite); "
                                                         "the update is skipped")
    counts = {h["step"]: h["hano/nonfinite_steps"] for h in trainer.state.log_history if "hano/nonfinite_steps" in h}
    assert counts == {1: 0, 2: 1, 3: 1, 4: 1}


@pytest.mark.parametrize("limit", [1, 3])
def test_training_stops_at_max_nonfinite_steps_in_a_row_and_saves_nothing_non_finite(limit, tiny_tok, tmp_path):
    ds = preference_dataset(n=12, with_images=False, lambdas=[1.0] * 12)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, max_steps=6, max_nonfinite_steps=limit,
                           save_strategy="steps", save_steps=1, save_total_limit=None)
    _nan_loss_at(trainer, {2, 3, 4, 5, 6})
    with pytest.raises(NonFiniteTrainingError) as info:
        trainer.train()
    stop = 1 + limit
    message = str(info.value)
    assert re.match(rf"training stopped at step {stop}: the loss is nan \(not finite\)", message), message
    assert f"max_nonfinite_steps={limit}" in message and "\n" not in message
    assert ("steps 2-4" in message) if limit == 3 else ("step 2 was applied" in message)
    saved = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert saved == list(range(1, stop))  # the skipped steps' checkpoints hold the last finite weights
    for step in saved:
        tensors = load_file(tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors")
        assert tensors and all(torch.isfinite(t).all() for t in tensors.values())


def test_huge_learning_rate_stops_with_the_one_line_error(tiny_tok, tmp_path):
    """learning_rate=1e10: the first update makes the log-probs overflow, every later step is non-finite (the
    reward gaps of eta too); the run stops with NonFiniteTrainingError, not the tracker's ValueError."""
    ds = preference_dataset(n=12, with_images=False, lambdas=[1.0] * 12)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, learning_rate=1e10, max_steps=6,
                           responsiveness_warmup=0, save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteTrainingError, match=r"^training stopped at step \d: the (loss|gradient norm) is "
                                                     r"(nan|inf|-inf) \(not finite\).*learning_rate 1e\+?10") as info:
        trainer.train()
    assert "\n" not in str(info.value)
    for folder in tmp_path.glob("checkpoint-*"):
        tensors = load_file(folder / "adapter_model.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values()), folder.name


def test_an_optimizer_that_makes_weights_non_finite_is_stopped_before_any_save(tiny_tok, tmp_path):
    """weight_decay=nan is refused by HaNoDPOConfig; an optimizer built by the user with it still produces NaN
    weights: the check after the optimizer step stops training, and no checkpoint or save_model writes them."""
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, max_steps=2, save_strategy="steps",
                           save_steps=1)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = torch.optim.SGD(params, lr=1e-3, weight_decay=NAN)
    with pytest.raises(NonFiniteTrainingError, match=r"^training stopped at step 1: the optimizer step 1 left "
                                                     r"\d+ trainable weight tensor\(s\) not finite \(.*lora_"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))
    with pytest.raises(NonFiniteTrainingError, match="refuses to write non-finite weights"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


def test_gradient_norm_exactly_zero_three_steps_in_a_row_warns(tiny_tok, tmp_path):
    ds = preference_dataset(n=8, with_images=False, lambdas=[1.0] * 8)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, max_steps=4)
    compute = trainer._compute_loss
    trainer._compute_loss = lambda model, inputs, return_outputs: compute(model, inputs, return_outputs) * 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    zero = [str(w.message) for w in caught if "exactly 0" in str(w.message)]
    assert len(zero) == 1 and "steps 1-3" in zero[0] and "nothing trains" in zero[0]
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
