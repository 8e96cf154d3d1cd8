"""Resume: the responsiveness state is saved in checkpoints, so a resumed run continues the same eta trajectory."""

import json

import pytest
from conftest import preference_dataset
from trainer_utils import make_trainer

from hanorec_trl.testing import tiny_qwen2
from hanorec_trl.trainer import HANO_STATE_NAME

CONFIG = dict(max_steps=4, save_strategy="steps", save_steps=2, use_hardness=True, responsiveness_warmup=1,
              lora_noise_std=0.1)


def per_step(log_history, key):
    return {h["step"]: h[key] for h in log_history if key in h}


def test_resume_gives_the_same_eta_and_losses(tiny_tok, tmp_path):
    ds = preference_dataset(n=8, with_images=False, lambdas=[0.8, 1.2] * 4)
    full = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "full", **CONFIG)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    saved = json.loads((checkpoint / HANO_STATE_NAME).read_text())["responsiveness"]
    assert saved["steps"] == 2

    resumed = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "resumed", **CONFIG)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    eta_full, eta_resumed = per_step(full.state.log_history, "hano/eta"), per_step(resumed.state.log_history, "hano/eta")
    assert eta_full[3] != 1.0 and eta_full[4] != 1.0, "eta stayed at 1: the comparison would be vacuous"
    for step in (3, 4):
        assert eta_resumed[step] == pytest.approx(eta_full[step], rel=1e-6)
        assert per_step(resumed.state.log_history, "loss")[step] == pytest.approx(
            per_step(full.state.log_history, "loss")[step], rel=1e-6
        )
    assert resumed.responsiveness_tracker.state_dict() == pytest.approx(full.responsiveness_tracker.state_dict())
