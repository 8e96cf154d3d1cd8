"""beta' wherever TRL uses beta (issue 30, item 2): every loss_type of TRL 1.16, a weighted list, ld_alpha and every
f-divergence. A constant lambda = c with responsiveness and noise off must train exactly as trl.DPOTrainer at
beta = c * beta0 (docs/trainer.md, "How beta' enters each loss").

These also fail when TRL's internals move: the trainer hands TRL its per-sample beta through ``self.beta`` inside the
private ``_compute_loss`` and reproduces TRL's sequence log-probs for the reward gaps of eta.
"""

import pytest
import torch
from conftest import preference_dataset
from trainer_utils import first_batch, lora_grads, make_trainer, rows_of, sequence_logps, standard_batch

from hanorec_trl.testing import tiny_qwen2

BETA0 = 0.1
C = 2.0  # lambda of every row; c * beta0 = 0.2 is the same float32 whichever way it is rounded
TRL_LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]
CASES = {f"loss_type={t}": dict(loss_type=[t]) for t in TRL_LOSS_TYPES}
CASES["exo_pair"] = dict(loss_type=["exo_pair"], label_smoothing=1e-3)  # TRL requires label smoothing for EXO
CASES["robust"] = dict(loss_type=["robust"], label_smoothing=0.1)
del CASES["loss_type=exo_pair"], CASES["loss_type=robust"]
CASES["weighted list"] = dict(loss_type=["sigmoid", "ipo", "sft"], loss_weights=[1.0, 0.5, 0.3])
CASES["ld_alpha"] = dict(ld_alpha=0.5)
for _f in ("forward_kl", "js_divergence", "alpha_divergence"):
    CASES[f"f_divergence={_f}"] = dict(f_divergence_type=_f, f_alpha_divergence_coef=0.5)
HANO = dict(use_hardness=True, use_responsiveness=False, lora_noise_std=0.0)


def _loss_grads_metrics(trainer, batch=None):
    batch = first_batch(trainer) if batch is None else batch
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), lora_grads(trainer.model), {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _compare(tiny_tok, tmp_path, fields, lambdas, trl_beta, fast=False, **hano):
    n = len(lambdas)
    ds = preference_dataset(n=n, with_images=False, lambdas=lambdas)
    common = dict(per_device_train_batch_size=n, **fields)
    ours = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "hano", beta=BETA0, fast_prompt_once=fast,
                        **{**HANO, **hano}, **common)
    trl = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds.remove_columns("hano_lambda"), tmp_path / "trl", hano=False,
                       beta=trl_beta, **common)
    return _loss_grads_metrics(ours), _loss_grads_metrics(trl), ours, trl


@pytest.mark.parametrize("case", list(CASES))
def test_constant_lambda_equals_trl_at_scaled_beta(case, tiny_tok, tmp_path):
    (loss, grads, metrics), (loss_trl, grads_trl, metrics_trl), ours, trl = _compare(
        tiny_tok, tmp_path, CASES[case], [C] * 4, C * BETA0)
    if case != "loss_type=sft":  # sft's NLL has no beta: there beta' shows only in the reward metrics (below)
        trl.beta = BETA0
        with torch.no_grad():
            loss_at_beta0 = trl.compute_loss(trl.model, first_batch(trl)).item()
        assert loss_trl.item() != pytest.approx(loss_at_beta0, rel=1e-4), (
            "the loss does not depend on beta here: the comparison would not show that beta' reaches it")
    assert abs(metrics_trl["rewards/margins"]) > 1e-6, "policy == reference: vacuous"
    # TRL's batches, c * beta0 the same float32 either way: bit for bit
    assert torch.equal(loss, loss_trl), (loss.item(), loss_trl.item())
    assert grads.keys() == grads_trl.keys() and grads
    for name in grads_trl:
        assert torch.equal(grads[name], grads_trl[name]), name
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"):  # metrics use beta' too
        assert metrics[key] == metrics_trl[key], key
    assert metrics["hano/beta_min"] == metrics["hano/beta_max"] == pytest.approx(C * BETA0)
    assert ours.beta == BETA0  # restored after the loss


@pytest.mark.parametrize("case", ["loss_type=sigmoid", "ld_alpha", "f_divergence=forward_kl", "loss_type=ipo"])
def test_packed_batches_equal_trl_at_scaled_beta(case, tiny_tok, tmp_path):
    """The prompt-once path (cached reference log-probs, LD-weighted with ld_alpha) gives the same loss; packing
    changes the reduction order, hence the tolerance."""
    (loss, grads, _), (loss_trl, grads_trl, _), ours, _ = _compare(tiny_tok, tmp_path, CASES[case], [C] * 4,
                                                                   C * BETA0, fast=True)
    assert ours.fast_path_off_reason is None
    torch.testing.assert_close(loss, loss_trl, rtol=1e-5, atol=1e-6)
    for name in grads_trl:
        torch.testing.assert_close(grads[name], grads_trl[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("loss_type", ["aot", "aot_unpaired"])
def test_sorting_losses_get_the_batch_mean_beta(loss_type, tiny_tok, tmp_path):
    """aot / aot_unpaired sort the batch's log-ratios, so a per-pair beta' would land on another pair: the rule is
    one beta for the batch, the mean of the pairs' beta' (docs/trainer.md)."""
    lambdas = [0.5, 2.0, 1.0, 2.5]
    mean_beta = sum(lambdas) / 4 * BETA0
    (loss, grads, metrics), (loss_trl, grads_trl, _), _, _ = _compare(
        tiny_tok, tmp_path, dict(loss_type=[loss_type, "sigmoid"]), lambdas, mean_beta)
    torch.testing.assert_close(loss, loss_trl, rtol=1e-6, atol=0)
    for name in grads_trl:
        torch.testing.assert_close(grads[name], grads_trl[name], rtol=1e-5, atol=1e-9, msg=name)
    assert metrics["hano/beta_min"] == metrics["hano/beta_max"] == pytest.approx(mean_beta)
    assert metrics["hano/lambda_mean"] == pytest.approx(sum(lambdas) / 4)


def test_per_pair_beta_stays_per_pair_without_a_sorting_loss(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[0.5, 2.0, 1.0, 2.5])
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, beta=BETA0, per_device_train_batch_size=4,
                           loss_type=["ipo"], **HANO)
    _loss_grads_metrics(trainer)
    metrics = trainer._metrics["train"]
    assert metrics["hano/beta_min"][-1] == pytest.approx(0.05) and metrics["hano/beta_max"][-1] == pytest.approx(0.25)


@pytest.mark.parametrize("fields", [dict(ld_alpha=0.5), dict(f_divergence_type="forward_kl"),
                                    dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5)],
                         ids=["ld_alpha", "forward_kl", "alpha_divergence"])
@pytest.mark.parametrize("fast", [False, True], ids=["standard", "packed"])
def test_reward_gaps_of_eta_are_trls_logged_margins(fields, fast, tiny_tok, tmp_path):
    """eta's reward gaps R_i = beta0 * (logratio_w - logratio_l) from TRL's own sequence log-probs (LD-weighted with
    ld_alpha; the log-ratio, not the f-divergence score): their mean is the rewards/margins TRL logs at beta' =
    beta0 (lambda = 1, eta = 1 during warm-up). Summing the log-probs without LD's weights, or taking TRL's
    f-divergence scores, fails here."""
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, beta=BETA0, per_device_train_batch_size=4,
                           use_hardness=True, use_responsiveness=True, responsiveness_warmup=100, lora_noise_std=0.0,
                           fast_prompt_once=fast, **fields)
    seen = []
    update = trainer.responsiveness_tracker.update
    trainer.responsiveness_tracker.update = lambda gaps: seen.append(gaps.clone()) or update(gaps)
    _, _, metrics = _loss_grads_metrics(trainer)
    (gaps,) = seen
    assert gaps.abs().min() > 1e-5, "policy == reference: vacuous"
    assert gaps.mean().item() == pytest.approx(metrics["rewards/margins"], rel=1e-5)
    if "ld_alpha" in fields:  # LD's weights matter on this batch: plain sums of the log-probs give another margin
        batch = standard_batch(trainer, rows_of(trainer, 4))
        with torch.no_grad():
            policy = sequence_logps(trainer.model, batch)
            with trainer.model.disable_adapter():
                reference = sequence_logps(trainer.model, batch)
        ratio = policy - reference
        plain = BETA0 * (ratio[:4] - ratio[4:]).mean().item()
        assert plain != pytest.approx(metrics["rewards/margins"], rel=1e-3)
