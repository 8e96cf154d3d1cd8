"""Issue 13 (reliability), the pipeline part: cases that need trained stages (docs/reliability.md).

One base run (the fast settings of tests/test_pipeline.py, on a copy of the synthetic data whose posters include
truncated files) is trained once per module; each test works on its own copy of that run directory.
"""

import json
import os
import shutil
import signal
import warnings

import pytest
from test_pipeline import FAST

from hanorec_trl.data import MissingImageWarning, SyntheticConfig, write_synthetic_movielens
from hanorec_trl.pipeline import main
from hanorec_trl.pipeline.rundir import LOCK_FILE, MARKER, STARTED

TRUNCATED = [str(i) for i in range(1, 21)]  # a third of the 60 posters: some are in every split


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    data = folder / "ml"
    write_synthetic_movielens(data, SyntheticConfig(num_users=40, num_items=60, seed=0))
    for item in TRUNCATED:  # header intact, pixel data cut: PIL fails only when decoding
        poster = data / "posters" / f"{item}.jpg"
        poster.write_bytes(poster.read_bytes()[: poster.stat().st_size // 2])
    root = folder / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(FAST + ["--data_dir", str(data), "--output_dir", str(root)]) == 0
    image_warnings = [str(w.message) for w in caught if issubclass(w.category, MissingImageWarning)]
    return {"root": root, "data": data, "image_warnings": image_warnings}


def args(base, root, *extra):
    return FAST + ["--data_dir", str(base["data"]), "--output_dir", str(root), *extra]


def copy_of(base, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(base["root"], root)
    return root


def interrupt_dpo(root, *, checkpoints: bool = True):
    """As a kill during DPO leaves it: no DPO marker, no evaluation of its model (optionally no checkpoints)."""
    for path in (root / "dpo" / "hano" / MARKER, root / "eval" / "hano" / MARKER):
        path.unlink()
    if not checkpoints:
        shutil.rmtree(root / "dpo" / "hano" / "trainer")


def adapter(root):
    from safetensors.torch import load_file

    return load_file(str(root / "dpo" / "hano" / "adapter" / "adapter_model.safetensors"))


def assert_same_adapter(got, want):
    import torch

    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def dpo_marker(root):
    return json.loads((root / "dpo" / "hano" / MARKER).read_text())


def test_truncated_posters_get_the_placeholder_and_one_warning_in_the_pipeline(base):
    root = base["root"]
    assert (root / "report" / "results.json").is_file() and not (root / LOCK_FILE).exists()
    named = [m for m in base["image_warnings"] if "truncated" in m]
    assert named, base["image_warnings"]
    assert any(f"'{item}'" in m for m in named for item in TRUNCATED)
    assert (root / "dpo" / "hano" / STARTED).is_file()  # each stage recorded its arguments when it started


def test_resume_of_an_unfinished_stage_refuses_changed_arguments(base, tmp_path, capsys):
    root = copy_of(base, tmp_path)
    interrupt_dpo(root)
    stage = root / "dpo" / "hano"
    before = {str(p): p.read_bytes() for p in stage.rglob("*") if p.is_file()}
    assert main(args(base, root, "--resume", "--beta", "0.5", "--dpo_learning_rate", "0.01")) == 2
    err = capsys.readouterr().err
    assert "stage 'dpo/hano'" in err and "started with other arguments" in err, err
    assert "beta: was 0.1, now 0.5" in err and "dpo_learning_rate: was 0.0001, now 0.01" in err
    assert {str(p): p.read_bytes() for p in stage.rglob("*") if p.is_file()} == before  # checkpoints untouched
    assert not (root / LOCK_FILE).exists()


def test_resume_skips_a_partial_newest_checkpoint_and_stays_bit_exact(base, tmp_path, capsys):
    root = copy_of(base, tmp_path)
    weights = adapter(root)
    newest = root / "dpo" / "hano" / "trainer" / "checkpoint-2"
    # killed between the checkpoint write and the HaNo state write (as an earlier version could leave it)
    interrupt_dpo(root)
    (newest / "hano_state.json").unlink()
    assert main(args(base, root, "--resume")) == 0
    out = capsys.readouterr().out
    assert "checkpoint-2 is incomplete (no hano_state.json" in out
    assert dpo_marker(root)["summary"]["resumed_from"].endswith("checkpoint-1")
    assert_same_adapter(adapter(root), weights)
    # killed while the adapter was written: a truncated file, not a SafetensorError
    interrupt_dpo(root)
    file = newest / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    assert main(args(base, root, "--resume")) == 0
    assert "is truncated" in capsys.readouterr().out
    assert dpo_marker(root)["summary"]["resumed_from"].endswith("checkpoint-1")
    assert_same_adapter(adapter(root), weights)


def test_ctrl_c_saves_a_checkpoint_prints_the_resume_command_and_resumes_bit_exact(base, tmp_path, capsys,
                                                                                   monkeypatch):
    from hanorec_trl.pipeline import training

    root = copy_of(base, tmp_path)
    weights = adapter(root)
    interrupt_dpo(root, checkpoints=False)
    original = training.StageProgressCallback.on_step_end
    handler = signal.getsignal(signal.SIGINT)

    def ctrl_c_after_step_1(self, args, state, control, **kwargs):
        result = original(self, args, state, control, **kwargs)
        if self.description.startswith("DPO") and state.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in the terminal sends
        return result

    monkeypatch.setattr(training.StageProgressCallback, "on_step_end", ctrl_c_after_step_1)
    # --save_steps 5: the only checkpoint is the one the interruption writes
    assert main(args(base, root, "--resume", "--save_steps", "5")) == 130
    err = capsys.readouterr().err
    checkpoint = root / "dpo" / "hano" / "trainer" / "checkpoint-1"
    assert f"checkpoint saved: {checkpoint}" in err and "Traceback" not in err, err
    assert f"--run.run_dir {root} --run.resume" in err
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "hano_state.json").is_file()
    assert not (root / "dpo" / "hano" / MARKER).exists() and not (root / LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the stage's handler was removed
    monkeypatch.setattr(training.StageProgressCallback, "on_step_end", original)
    assert main(args(base, root, "--resume")) == 0
    assert dpo_marker(root)["summary"]["resumed_from"].endswith("checkpoint-1")
    assert_same_adapter(adapter(root), weights)
