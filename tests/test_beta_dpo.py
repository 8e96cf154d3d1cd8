"""beta-DPO (Wu et al. 2024, arXiv 2407.08639) as responsiveness="beta_dpo" (issue 30, item 4): the batch beta
``beta0 * (1 + alpha * (mean margin - M_0))`` against a moving-average threshold M_0, checked against a hand
computation, with hardness on and off, any loss type, checkpointed like eta, and left alone by evaluation."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import preference_dataset
from trainer_utils import make_trainer, rows_of, sequence_logps, standard_batch

from hanorec_trl import ResponsivenessTracker
from hanorec_trl.checkpoints import HANO_STATE_NAME
from hanorec_trl.testing import tiny_qwen2

BETA0, ALPHA, MOMENTUM = 0.1, 0.6, 0.9
BETA_DPO = dict(use_responsiveness=True, responsiveness="beta_dpo", beta_dpo_alpha=ALPHA, responsiveness_warmup=0,
                lora_noise_std=0.0, beta=BETA0)


class HandRule:
    """The rule of docs/trainer.md ("beta-DPO") on plain floats: d = mean of the batch's log-ratio margins;
    eta = 1 + alpha * (d - M_0); then M_0 <- m * M_0 + (1 - m) * d; the first informative batch sets M_0 = d."""

    def __init__(self, alpha=ALPHA, momentum=MOMENTUM, eps=1e-6, warmup=0):
        self.alpha, self.momentum, self.eps, self.warmup = alpha, momentum, eps, warmup
        self.m0, self.t = 0.0, 0

    def update(self, margins):
        if sum(abs(BETA0 * d) for d in margins) / len(margins) < self.eps:
            return 1.0
        d = sum(margins) / len(margins)
        if self.t == 0:
            self.m0 = d
        eta = 1 + self.alpha * (d - self.m0)
        self.m0 = self.momentum * self.m0 + (1 - self.momentum) * d
        self.t += 1
        return 1.0 if self.t <= self.warmup else eta


MARGINS = [[0.0, 0.0], [0.5, 1.5], [2.0, 4.0, 3.0], [-1.0, 0.0], [1e-9, -1e-9], [10.0, 12.0], [0.2]]


@pytest.mark.parametrize("warmup", [0, 2])
def test_tracker_follows_the_rule_step_by_step(warmup):
    hand = HandRule(warmup=warmup)
    tracker = ResponsivenessTracker(mode="beta_dpo", alpha=ALPHA, momentum=MOMENTUM, warmup=warmup, beta0=BETA0)
    etas = []
    for margins in MARGINS:
        expected = hand.update(margins)
        got = tracker.update(BETA0 * torch.tensor(margins, dtype=torch.float64))  # the trainer hands it R = beta0*d
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), margins
        assert tracker.data_mean == pytest.approx(hand.m0, rel=1e-12, abs=1e-15) and tracker.steps == hand.t
        etas.append(got)
    if warmup == 0:  # above the running threshold: larger beta; below it: smaller (can reach the floor)
        assert etas[2] > 1 and etas[3] < 1 and etas[5] > 2


def test_state_round_trips_and_refuses_another_mode():
    tracker = ResponsivenessTracker(mode="beta_dpo", beta0=BETA0)
    for margins in MARGINS[:4]:
        tracker.update(BETA0 * torch.tensor(margins))
    copy = ResponsivenessTracker(mode="beta_dpo", beta0=BETA0)
    copy.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert copy.update(torch.tensor([0.3, 0.1])) == tracker.update(torch.tensor([0.3, 0.1]))
    with pytest.raises(ValueError, match="saved with mode 'beta_dpo'"):
        ResponsivenessTracker(mode="ema").load_state_dict(tracker.state_dict())


@pytest.mark.parametrize("lambdas", [[1.0] * 4, [0.5, 2.0, 1.0, 1.5]], ids=["hardness_off", "hardness_on"])
def test_loss_is_trl_sigmoid_at_the_batch_beta(lambdas, tiny_tok, tmp_path):
    """Hand computation from plain logits: with M_0 known, the batch's beta is beta0 * (1 + alpha * (d - M_0)),
    times lambda_i with hardness on; the loss is -logsigmoid(beta'_i * delta_i) averaged."""
    hardness = lambdas != [1.0] * 4
    ds = preference_dataset(n=4, with_images=False, lambdas=lambdas)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, use_hardness=hardness,
                           per_device_train_batch_size=4, fast_prompt_once=False, **BETA_DPO)
    trainer.responsiveness_tracker.update(BETA0 * torch.tensor([0.4, 0.8]))  # M_0 = 0.6
    rows = rows_of(trainer, 4)
    batch = standard_batch(trainer, rows)
    if not hardness:
        del batch["hano_lambda"]
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        policy = sequence_logps(trainer.model, batch)
        with trainer.model.disable_adapter():
            reference = sequence_logps(trainer.model, batch)
    ratio = policy - reference
    delta = (ratio[:4] - ratio[4:]).double()
    eta = 1 + ALPHA * (delta.mean().item() - 0.6)
    assert abs(eta - 1) > 1e-3, "the batch margin equals M_0: vacuous"
    beta = BETA0 * eta * torch.tensor([r["hano_lambda"] for r in rows], dtype=torch.float64)
    expected = -F.logsigmoid(beta * delta).mean()
    torch.testing.assert_close(loss.detach().double(), expected, rtol=1e-5, atol=1e-7)
    metrics = trainer._metrics["train"]
    assert metrics["hano/eta"][-1] == pytest.approx(eta, rel=1e-5)
    assert metrics["hano/beta_max"][-1] == pytest.approx(beta.max().item(), rel=1e-5)
    assert trainer.responsiveness_tracker.data_mean == pytest.approx(0.9 * 0.6 + 0.1 * delta.mean().item(), rel=1e-5)


def test_composes_with_another_loss_type(tiny_tok, tmp_path):
    ds = preference_dataset(n=8, with_images=False, lambdas=[1.0] * 8)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, loss_type=["ipo", "sft"],
                           loss_weights=[1.0, 0.1], max_steps=4, **BETA_DPO)
    trainer.train()
    etas = [h["hano/eta"] for h in trainer.state.log_history if "hano/eta" in h]
    assert len(etas) == 4 and etas[0] == 1.0 and len(set(etas[1:])) == 3  # the batch beta moves every step


def test_checkpointed_like_eta_and_evaluation_never_changes_it(tiny_tok, tmp_path):
    ds = preference_dataset(n=8, with_images=False, lambdas=[1.0] * 8)
    config = dict(max_steps=4, save_strategy="steps", save_steps=2, **BETA_DPO)
    full = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "full", eval_dataset=ds, **config)
    full.train()
    saved = json.loads((tmp_path / "full" / "checkpoint-2" / HANO_STATE_NAME).read_text())["responsiveness"]
    assert saved["mode"] == "beta_dpo" and saved["steps"] == 2

    state = full.responsiveness_tracker.state_dict()
    metrics = full.evaluate()
    assert full.responsiveness_tracker.state_dict() == state  # evaluation reads eta, never updates M_0
    assert metrics["eval_hano/eta"] == pytest.approx(state["last_eta"])

    resumed = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "resumed", **config)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    eta = {name: {h["step"]: h["hano/eta"] for h in t.state.log_history if "hano/eta" in h}
           for name, t in (("full", full), ("resumed", resumed))}
    assert eta["full"][3] != 1.0
    for step in (3, 4):
        assert eta["resumed"][step] == pytest.approx(eta["full"][step], rel=1e-6)
    assert resumed.responsiveness_tracker.state_dict() == pytest.approx(state)
