"""Per-sample beta' (Eq. 11-12): the loss recomputed by hand from policy and reference log-probs."""

import pytest
import torch
import torch.nn.functional as F
from conftest import preference_dataset
from trainer_utils import first_batch, make_trainer, rows_of, sequence_logps, standard_batch, trainer_batch

from hanorec_trl.testing import tiny_qwen2, tiny_qwen2_5_vl

LAMBDAS = [0.5, 2.0, 1.3, 0.8]


@pytest.mark.parametrize("kind", ["vlm", "text"])
@pytest.mark.parametrize("fast", [True, False], ids=["packed", "standard"])
def test_loss_is_mean_logsigmoid_of_per_sample_beta(kind, fast, tiny_tok, tiny_processor, tmp_path):
    vlm = kind == "vlm"
    model = tiny_qwen2_5_vl(tiny_tok) if vlm else tiny_qwen2(tiny_tok)
    ds = preference_dataset(n=4, with_images=vlm, lambdas=LAMBDAS)
    trainer = make_trainer(model, tiny_processor if vlm else tiny_tok, ds, tmp_path, use_hardness=True,
                           use_responsiveness=False, lora_noise_std=0.0, per_device_train_batch_size=4, beta=0.2,
                           fast_prompt_once=fast)
    assert (trainer.fast_path_off_reason is None) == fast
    assert sorted(first_batch(trainer)["hano_lambda"].tolist()) == pytest.approx(sorted(LAMBDAS))  # survived TRL
    rows = rows_of(trainer, 4)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer_batch(trainer, rows))

    batch = standard_batch(trainer, rows)  # hand computation on TRL's own layout, from plain logits
    with torch.no_grad():
        policy = sequence_logps(trainer.model, batch)
        with trainer.model.disable_adapter():
            reference = sequence_logps(trainer.model, batch)
    ratio = policy - reference
    delta = ratio[:4] - ratio[4:]
    assert delta.abs().min() > 1e-4, "policy == reference: the test would be vacuous"
    beta = 0.2 * batch["hano_lambda"]
    expected = -F.logsigmoid(beta * delta).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    m = trainer._metrics["train"]
    assert m["hano/beta_min"][-1] == pytest.approx(0.1) and m["hano/beta_max"][-1] == pytest.approx(0.4)
    assert m["hano/lambda_mean"][-1] == pytest.approx(sum(LAMBDAS) / 4)
    assert m["rewards/chosen"][-1] == pytest.approx((beta * ratio[:4]).mean().item(), rel=1e-4)
    assert trainer.beta == 0.2  # restored after the loss

    # changing one row's lambda changes the loss
    rows[1]["hano_lambda"] = 5.0
    loss2 = trainer.compute_loss(trainer.model, trainer_batch(trainer, rows))
    assert abs(loss2.item() - loss.item()) > 1e-5


def test_eta_scales_beta_and_floor_applies(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1e-9, 1.0, 1.0, 1.0])
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, use_hardness=True, use_responsiveness=True,
                           responsiveness_warmup=0, lora_noise_std=0.0, per_device_train_batch_size=4,
                           beta_floor=1e-3)
    batch = first_batch(trainer)
    trainer.model.train()
    trainer.responsiveness_tracker.update(torch.tensor([5.0, 6.0]))  # a data average far above this batch's gaps
    trainer.compute_loss(trainer.model, batch)
    m = trainer._metrics["train"]
    eta = m["hano/eta"][-1]
    assert eta < 1.0
    assert m["hano/beta_min"][-1] == pytest.approx(1e-3)  # max(eta * 1e-9 * beta0, floor)
    assert m["hano/beta_max"][-1] == pytest.approx(eta * 0.1, rel=1e-6)


def test_evaluate_uses_last_eta_and_keeps_state(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, eval_dataset=ds, use_hardness=True,
                           responsiveness_warmup=0, lora_noise_std=0.0, max_steps=2)
    trainer.train()
    state = trainer.responsiveness_tracker.state_dict()
    metrics = trainer.evaluate()
    assert trainer.responsiveness_tracker.state_dict() == state
    assert metrics["eval_hano/eta"] == pytest.approx(state["last_eta"])
