"""Interrupts a pipeline subprocess at a chosen DPO step, for tests/test_pipeline_reliability.py: put this folder on
``PYTHONPATH`` and set ``HANOREC_TEST_INTERRUPT`` to

* ``sigint:N``: Ctrl-C (SIGINT to the process itself) during DPO step N, after its backward pass;
* ``kill-in-step:N``: SIGKILL during DPO step N, after its backward pass, before the optimizer step;
* ``kill-after-checkpoint:N``: SIGKILL right after the checkpoint of step N is written (HaNo state included).

Without the variable this file does nothing (the command runs as typed)."""

import os

_WHEN = os.environ.get("HANOREC_TEST_INTERRUPT")

if _WHEN:
    import signal

    from hanorec_trl.trainer import HaNoDPOTrainer

    _KIND, _STEP = _WHEN.split(":")
    _STEP = int(_STEP)
    _training_step, _save_checkpoint = HaNoDPOTrainer.training_step, HaNoDPOTrainer._save_checkpoint

    def training_step(self, *args, **kwargs):
        loss = _training_step(self, *args, **kwargs)
        if self.state.global_step + 1 == _STEP and _KIND in ("sigint", "kill-in-step"):
            os.kill(os.getpid(), signal.SIGINT if _KIND == "sigint" else signal.SIGKILL)
        return loss

    def save_checkpoint(self, *args, **kwargs):
        _save_checkpoint(self, *args, **kwargs)
        if self.state.global_step == _STEP and _KIND == "kill-after-checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)

    HaNoDPOTrainer.training_step, HaNoDPOTrainer._save_checkpoint = training_step, save_checkpoint
