"""Resume: the responsiveness state is saved in checkpoints, so a resumed run continues the same eta trajectory."""

import json

import pytest
from conftest import preference_dataset
from trainer_utils import make_trainer

from hanorec_trl.checkpoints import HANO_STATE_NAME
from hanorec_trl.testing import tiny_qwen2

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

    eta_full = per_step(full.state.log_history, "hano/eta")
    eta_resumed = per_step(resumed.state.log_history, "hano/eta")
    assert eta_full[3] != 1.0 and eta_full[4] != 1.0, "eta stayed at 1: the comparison would be vacuous"
    for step in (3, 4):
        assert eta_resumed[step] == pytest.approx(eta_full[step], rel=1e-6)
        assert per_step(resumed.state.log_history, "loss")[step] == pytest.approx(
            per_step(full.state.log_history, "loss")[step], rel=1e-6
        )
    assert resumed.responsiveness_tracker.state_dict() == pytest.approx(full.responsiveness_tracker.state_dict())


def test_why_the_tracker_is_not_an_exportable_state_callback(tiny_tok, tmp_path):
    """docs/design.md: persisted through a ``TrainerCallback`` with ``ExportableState`` (transformers' mechanism) the
    tracker comes back only with ``restore_callback_states_from_checkpoint=True``, which also changes how every other
    callback resumes; with the default a resumed run restarts eta. HaNoDPOTrainer therefore keeps hano_state.json."""
    import trainer_utils
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
    from trl import DPOTrainer

    from hanorec_trl.responsiveness import ResponsivenessTracker
    from hanorec_trl.trainer import HaNoDPOTrainer

    class TrackerCallback(TrainerCallback, ExportableState):
        def __init__(self, config: dict, tracker_state: dict | None = None):
            self.config, self.tracker = config, ResponsivenessTracker(**config)
            if tracker_state is not None:
                self.tracker.load_state_dict(tracker_state)

        def state(self) -> dict:
            return {"args": {"config": self.config, "tracker_state": self.tracker.state_dict()}, "attributes": {}}

    class CallbackTrainer(HaNoDPOTrainer):
        @property
        def responsiveness_tracker(self):  # transformers replaces a restored callback by a new instance
            return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, TrackerCallback)).tracker

        @responsiveness_tracker.setter
        def responsiveness_tracker(self, tracker):
            names = ("momentum", "eps", "warmup", "eta_min", "eta_max", "mode")
            self.add_callback(TrackerCallback({name: getattr(tracker, name) for name in names}))

        def _save_checkpoint(self, model, trial):
            DPOTrainer._save_checkpoint(self, model, trial)

        def _load_optimizer_and_scheduler(self, checkpoint):
            DPOTrainer._load_optimizer_and_scheduler(self, checkpoint)

        def train(self, resume_from_checkpoint=None, **kwargs):
            return DPOTrainer.train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    ds = preference_dataset(n=8, with_images=False, lambdas=[0.8, 1.2] * 4)
    original = trainer_utils.HaNoDPOTrainer
    trainer_utils.HaNoDPOTrainer = CallbackTrainer
    try:
        full = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "full", **CONFIG)
        full.train()
        checkpoint = str(tmp_path / "full" / "checkpoint-2")
        eta = {}
        for restore in (False, True):
            resumed = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / f"resumed-{restore}",
                                   restore_callback_states_from_checkpoint=restore, **CONFIG)
            resumed.train(resume_from_checkpoint=checkpoint)
            eta[restore] = per_step(resumed.state.log_history, "hano/eta")
    finally:
        trainer_utils.HaNoDPOTrainer = original
    eta_full = per_step(full.state.log_history, "hano/eta")
    assert eta[True][3] == eta_full[3] and eta[True][4] == eta_full[4]  # exact when every callback is restored
    assert eta[False][3] == 1.0 != eta_full[3]  # the default: eta starts over
