"""Issue 13 (reliability), the fast part: every bad input of docs/reliability.md gets what that table promises.

Run-directory ownership, inputs inside the run directory and the lock use folders written by hand (no training);
the trainer cases use the tiny text model for a few steps. The pipeline cases that need trained stages (an unfinished
stage resumed with other arguments, a partial checkpoint, Ctrl-C, a truncated poster) are in
tests/test_pipeline_reliability.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import preference_dataset, solid_image
from data_utils import small_movielens, write_movielens
from trainer_utils import make_trainer

from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer
from hanorec_trl.checkpoints import HANO_STATE_NAME, checkpoint_problem, last_complete_checkpoint
from hanorec_trl.data import DataFormatError, MissingImageWarning, load_movielens_1m
from hanorec_trl.data.movielens import read_movielens_movies
from hanorec_trl.data.recdata import ControlCharacterWarning
from hanorec_trl.pipeline import main
from hanorec_trl.pipeline.arguments import PipelineConfigError
from hanorec_trl.pipeline.command_line import parse_args
from hanorec_trl.pipeline.rundir import LOCK_FILE, RUN_FORMAT, STARTED, RunDir, RunDirError, RunLock
from hanorec_trl.testing import tiny_qwen2
from hanorec_trl.trainer import NonFiniteTrainingError


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): 'every byte survives' is ``snapshot`` equality."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv, capsys, *fragments) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def user_folder(root: Path, run_json: str) -> Path:
    """A user's folder that happens to hold a file named run.json and stage-like subfolders with their data."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(run_json)
    for name in ("data", "model", "sft"):
        (root / name).mkdir()
        (root / name / "precious.txt").write_text(f"user data in {name}/")
    (root / "notes.md").write_text("my notes")
    return root


def pipeline_run_dir(root: Path) -> Path:
    """A folder as the pipeline leaves it (run.json with the format marker, stage folders), without training."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"format": RUN_FORMAT, "config": {}}))
    (root / "data").mkdir()
    return root


# ------------------------------------------------------------------------------------------------ 1. ownership


@pytest.mark.parametrize("run_json", ['{"name": "my experiment"}', "not json at all", '{"format": "other/1"}'])
def test_overwrite_and_resume_never_touch_a_folder_with_a_foreign_run_json(tmp_path, capsys, run_json):
    root = user_folder(tmp_path / "mine", run_json)
    before = snapshot(root)
    refused(["--output_dir", str(root), "--overwrite"], capsys, "refusing to delete it", str(root / "run.json"))
    refused(["--output_dir", str(root), "--resume"], capsys, "refusing to touch it", str(root / "run.json"))
    assert snapshot(root) == before


def test_overwrite_refuses_a_run_directory_holding_something_else(tmp_path, capsys):
    root = pipeline_run_dir(tmp_path / "run")
    (root / "thesis.tex").write_text("do not delete")
    before = snapshot(root)
    refused(["--output_dir", str(root), "--overwrite"], capsys, "thesis.tex", "the pipeline never writes it")
    assert snapshot(root) == before
    (root / "thesis.tex").unlink()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (root / "sft").symlink_to(target, target_is_directory=True)  # a link is never followed into
    refused(["--output_dir", str(root), "--overwrite"], capsys, "a link or a file")
    assert (target / "keep.txt").read_text() == "keep"


def test_overwrite_deletes_only_the_pipelines_entries(tmp_path):
    root = pipeline_run_dir(tmp_path / "run")
    (root / "data" / "split.jsonl").write_text("{}")
    (root / "run.json.abc.tmp").write_text("left by a kill during an atomic write")
    rundir = RunDir(root)
    rundir.check(resume=False, overwrite=True)
    with rundir.lock():
        rundir.prepare(resume=False, overwrite=True)
        assert sorted(p.name for p in root.iterdir()) == [LOCK_FILE]
    assert list(root.iterdir()) == []


# ------------------------------------------------------------------------------------------------ 2. inputs inside


def test_inputs_inside_the_folder_overwrite_deletes_are_refused_before_loading(tmp_path, capsys):
    root = pipeline_run_dir(tmp_path / "run")
    data = small_movielens(root / "data" / "ml")
    # a broken file: had it been loaded, the error would name ratings.dat instead of the run directory
    (data / "ratings.dat").write_text("not::a::rating\n")
    recipe = root / "data" / "recipe.yaml"
    recipe.write_text(f"output_dir: {root}\noverwrite: true\n")
    model = root / "model" / "base"
    model.mkdir(parents=True)  # no config.json: had it been read, the error would say so
    before = snapshot(root)
    refused(["--output_dir", str(root), "--overwrite", "--data_dir", str(data)], capsys,
            f"--data.data_dir {data} lies inside", "--overwrite deletes the whole folder")
    refused(["--output_dir", str(root), "--resume", "--data_dir", str(data)], capsys,
            "lies inside", "empties the folder of an unfinished stage")
    refused(["--output_dir", str(root), "--overwrite", "--model", str(model)], capsys,
            f"--model.model_name_or_path {model} lies inside")
    refused(["--config", str(recipe)], capsys, f"--config {recipe} lies inside")
    assert snapshot(root) == before
    # the same inputs outside the run directory are accepted
    RunDir(root).check_paths_outside({"--data_dir": str(tmp_path / "ml"), "--config": str(tmp_path / "r.yaml")},
                                     resume=False, overwrite=True)


# ------------------------------------------------------------------------------------------------ 3. the lock


def test_a_second_run_on_a_locked_run_directory_is_refused_with_pid_and_host(tmp_path, capsys):
    root = pipeline_run_dir(tmp_path / "run")
    before = snapshot(root)
    with RunDir(root).lock():
        err = refused(["--output_dir", str(root), "--resume"], capsys, "is in use by another run",
                      f"pid {os.getpid()}", socket.gethostname())
        assert str(root / LOCK_FILE) in err
    assert snapshot(root) == before  # released: the lock file is gone, nothing else changed


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over_but_not_a_live_or_foreign_one(tmp_path):
    path = tmp_path / LOCK_FILE
    host = socket.gethostname()
    path.write_text(json.dumps({"pid": _dead_pid(), "host": host}))
    lock = RunLock(path)
    lock.acquire()
    assert lock.took_over is not None and json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    # a live process on this host (here: a sleeping child that does not hold the flock) is never taken over
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps({"pid": sleeper.pid, "host": host}))
        with pytest.raises(RunDirError, match=rf"pid {sleeper.pid} on host .*that process is alive"):
            RunLock(path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    path.write_text(json.dumps({"pid": 12345, "host": "another-host.example"}))
    with pytest.raises(RunDirError, match="another-host.example.*cannot be checked"):
        RunLock(path).acquire()
    # a holder in another process (flock held) is refused
    path.unlink()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from hanorec_trl.pipeline.rundir import "
         "RunLock; RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"pid {holder.pid} on host {host}.*holds the lock"):
            RunLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(path).acquire()  # the holder was killed: its lock is taken over


# ------------------------------------------------------------------------------------------------ 4. started stages


def test_an_unfinished_stage_with_checkpoints_refuses_other_arguments(tmp_path):
    rundir = RunDir(tmp_path)
    folder = tmp_path / "dpo" / "hano"
    folder.mkdir(parents=True)
    rundir.mark_started(folder, {"beta": 0.1, "dpo_learning_rate": 1e-4})
    assert rundir.check_started(folder, "dpo/hano", {"beta": 0.5}, keep=("trainer",)) is None  # nothing continued
    (folder / "trainer" / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"stage 'dpo/hano' .* started with other arguments \(beta: was 0.1, now "
                                          r"0.5; dpo_learning_rate: was 0.0001, now 0.01\)"):
        rundir.check_started(folder, "dpo/hano", {"beta": 0.5, "dpo_learning_rate": 0.01}, keep=("trainer",))
    assert rundir.check_started(folder, "dpo/hano", {"beta": 0.1, "dpo_learning_rate": 1e-4}, keep=("trainer",)) is None
    (folder / STARTED).unlink()  # a run directory of an earlier version: said, not refused
    assert "cannot be checked" in rundir.check_started(folder, "dpo/hano", {"beta": 0.5}, keep=("trainer",))


# ------------------------------------------------------------------------------------------------ 5. checkpoints


def _fake_checkpoint(folder: Path, step: int, *, hano: bool = True, state: bool = True) -> Path:
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(64)}, str(path / "adapter_model.safetensors"))
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    if hano:
        (path / HANO_STATE_NAME).write_text(json.dumps({"responsiveness": {}}))
    return path


def test_incomplete_checkpoints_are_skipped_for_the_previous_complete_one(tmp_path):
    good = _fake_checkpoint(tmp_path, 2)
    no_state = _fake_checkpoint(tmp_path, 4, state=False)
    truncated = _fake_checkpoint(tmp_path, 6)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    no_hano = _fake_checkpoint(tmp_path, 8, hano=False)
    assert "truncated" in checkpoint_problem(truncated)
    assert "trainer_state.json" in checkpoint_problem(no_state)
    assert checkpoint_problem(no_hano) is None and "hano_state.json" in checkpoint_problem(no_hano, hano_state=True)
    found, skipped = last_complete_checkpoint(tmp_path, hano_state=True)
    assert found == str(good) and [Path(p).name for p, _ in skipped] == ["checkpoint-8", "checkpoint-6",
                                                                          "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path)[0] == str(no_hano)  # without responsiveness the state is not needed


CONFIG = dict(max_steps=4, save_strategy="steps", save_steps=2, use_hardness=True, responsiveness_warmup=1,
              lora_noise_std=0.1)


def _per_step(history, key):
    return {h["step"]: h[key] for h in history if key in h}


def test_killed_right_after_the_checkpoint_write_resumes_bit_exact(tiny_tok, tmp_path, monkeypatch):
    """A kill between transformers' checkpoint write (which has already rotated the older checkpoint away) and the
    HaNo state write: the newest checkpoint must still hold the responsiveness state."""
    from transformers import Trainer

    ds = preference_dataset(n=8, with_images=False, lambdas=[0.8, 1.2] * 4)
    full = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "full", **CONFIG)
    full.train()

    original = Trainer._save_checkpoint

    def killed_after_step_4(self, model, trial):
        original(self, model, trial)
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "_save_checkpoint", killed_after_step_4)
    cut = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "cut", save_total_limit=1, **CONFIG)
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-4"]  # -2 rotated away
    assert (tmp_path / "cut" / "checkpoint-4" / HANO_STATE_NAME).is_file()

    # ... and a checkpoint without it is refused, not resumed with a fresh eta
    partial = _fake_checkpoint(tmp_path / "other", 2, hano=False)
    with pytest.raises(ValueError, match="hano_state.json"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "other", **CONFIG).train(
            resume_from_checkpoint=str(partial))

    # resuming the full run from step 2 with a newer partial checkpoint present: resume_from_checkpoint=True skips it
    resumed_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed_dir / "checkpoint-2")
    (resumed_dir / "checkpoint-4").mkdir()  # killed while writing: no trainer_state.json
    (resumed_dir / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"\x00" * 12)
    resumed = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, resumed_dir, **CONFIG)
    resumed.train(resume_from_checkpoint=True)
    for key in ("hano/eta", "loss"):
        got, want = _per_step(resumed.state.log_history, key), _per_step(full.state.log_history, key)
        for step in (3, 4):
            assert got[step] == pytest.approx(want[step], rel=1e-6), (key, step)
    assert _per_step(full.state.log_history, "hano/eta")[4] != 1.0  # eta moved: the comparison is not vacuous


# ------------------------------------------------------------------------------------------------ 6. bad values


@pytest.mark.parametrize(
    "fields, name",
    [
        (dict(beta=0.0), "beta"), (dict(beta=-0.1), "beta"), (dict(beta=float("nan")), "beta"),
        (dict(eta_max=0.0), "eta_max"), (dict(eta_max=float("nan")), "eta_max"), (dict(eta_min=-0.5), "eta_min"),
        (dict(eta_min=float("nan")), "eta_min"), (dict(responsiveness_warmup=-1), "responsiveness_warmup"),
        (dict(responsiveness_eps=-1e-3), "responsiveness_eps"), (dict(lora_noise_std=float("inf")), "lora_noise_std"),
        (dict(lora_noise_std=float("nan")), "lora_noise_std"), (dict(beta_floor=float("inf")), "beta_floor"),
        (dict(responsiveness_momentum=float("nan")), "responsiveness_momentum"), (dict(lambda_max=0.0), "lambda_max"),
    ],
)
def test_config_refuses_values_that_train_nothing_or_blow_up(fields, name, tmp_path):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        HaNoDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **fields)


def test_huge_lambda_is_refused_with_its_row(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0, 1e30, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"above lambda_max=100 \(row 1: 1e\+30\)"):
        make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path)


def test_non_finite_loss_or_gradient_stops_training_naming_the_step(tiny_tok, tmp_path):
    ds = preference_dataset(n=8, with_images=False, lambdas=[1.0, 1e30] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, lambda_max=math.inf, use_responsiveness=False,
                           save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteTrainingError) as info:
        trainer.train()
    match = re.match(r"training stopped at step (\d+): the (loss|gradient norm) is (nan|inf|-inf) \(not finite\)",
                     str(info.value))
    assert match, str(info.value)
    step = int(match.group(1))
    # nothing of the bad step was applied or saved; the checkpoints before it are there
    assert not (tmp_path / f"checkpoint-{step}").exists()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in range(1, step)][-2:]


def test_sft_stage_stops_on_a_logged_non_finite_gradient_norm():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from hanorec_trl.pipeline.training import StopOnNonFinite

    state, args = TrainerState(global_step=7), SimpleNamespace(output_dir="sft/trainer")
    StopOnNonFinite().on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": 2.0})
    with pytest.raises(NonFiniteTrainingError, match=r"step 7: the grad norm is nan .*sft/trainer"):
        StopOnNonFinite().on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": float("nan")})


def test_trainer_without_args_builds_on_cpu(tiny_tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from trainer_utils import lora_config

    model = tiny_qwen2(tiny_tok)
    trainer = HaNoDPOTrainer(model=model, args=None, processing_class=tiny_tok, peft_config=lora_config(model),
                             train_dataset=preference_dataset(n=2, with_images=False, lambdas=[1.0, 1.0]))
    assert isinstance(trainer.args, HaNoDPOConfig)


# ------------------------------------------------------------------------------------------------ 7. truncated images


def test_truncated_poster_gets_the_placeholder_or_a_strict_error(tmp_path):
    folder = small_movielens(tmp_path / "ml")
    poster = folder / "posters" / "3.jpg"
    poster.write_bytes(poster.read_bytes()[: poster.stat().st_size // 2])  # header intact, pixel data cut
    data = load_movielens_1m(folder)
    with pytest.warns(MissingImageWarning, match=r"could not be read \(items '3'.*truncated"):
        assert data.verify_images() == ["3"]
    assert data.image_path("3") is None
    with pytest.raises(DataFormatError, match=r"items '3'.*truncated"):
        load_movielens_1m(folder, strict_images=True).verify_images()
    # the datasets image column never sees the cut file: the placeholder bytes go in its place
    from hanorec_trl.data import ProtocolConfig, build_sft_dataset, build_split

    ratings = [f"{u}::{(u - 1) * 4 + k}::4::{k}" for u in (1, 2, 3) for k in (1, 2, 3, 4)]
    movies = [f"{i}::Movie {i} (1999)::Drama" for i in range(1, 13)]
    posters = {str(i): solid_image(i) for i in range(1, 13)}
    data = load_movielens_1m(write_movielens(tmp_path / "ml2", ratings, movies, posters))
    cut = tmp_path / "ml2" / "posters" / "2.jpg"  # in the history of user 1
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    split = build_split(data, ProtocolConfig(min_interactions=3, sequence_length=3, num_candidates=3,
                                             auc_num_unwatched=1, split_ratios=(1.0, 0.0, 0.0)))
    with pytest.warns(MissingImageWarning, match="items .2."):
        rows = build_sft_dataset(split.train, data, task="ranking", with_images=True)
    for row in rows:  # every image decodes
        assert all(image.size[0] > 0 for image in row["images"])


# ------------------------------------------------------------------------------------------------ 8. text encoding


MOVIES = ["1::Amélie (2001)::Comedy", "2::Léon (1994)::Drama", "3::Plain (1999)::Drama"]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252"])
def test_movies_file_encoding_is_detected(tmp_path, encoding):
    path = tmp_path / "movies.dat"
    lines = MOVIES + (["4::Don’t Stop (2000)::Drama"] if encoding == "cp1252" else [])
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    _, titles, _ = read_movielens_movies(path)
    assert titles["1"] == "Amélie (2001)" and titles["2"] == "Léon (1994)"
    if encoding == "cp1252":
        assert titles["4"] == "Don’t Stop (2000)"


def test_an_explicit_encoding_that_does_not_fit_names_the_lines(tmp_path):
    path = tmp_path / "movies.dat"
    path.write_bytes("".join(line + "\n" for line in MOVIES).encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"2 line\(s\) are not valid utf-8 text \(lines 1, 2;"):
        read_movielens_movies(path, encoding="utf-8")
    assert read_movielens_movies(path, encoding="latin-1")[1]["1"] == "Amélie (2001)"


def test_control_characters_are_removed_with_one_warning_naming_the_items(tmp_path):
    folder = write_movielens(tmp_path / "ml", ["1::1::4::1", "1::2::4::2", "1::3::4::3"],
                             ["1::Nul\x00 Movie (1999)::Drama", "2::Esc\x1b[31m Red (2000)::Drama",
                              "3::Fine (2001)::Drama"])
    with pytest.warns(ControlCharacterWarning) as record:
        data = load_movielens_1m(folder, images=False)
    messages = [str(w.message) for w in record if issubclass(w.category, ControlCharacterWarning)]
    assert len(messages) == 1 and "items '1', '2'" in messages[0]
    assert data.titles == {"1": "Nul Movie (1999)", "2": "Esc[31m Red (2000)", "3": "Fine (2001)"}


# ------------------------------------------------------------------------------------------------ 9. arguments


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--eval_ks", "0"], "--evaluation.eval_ks 0"),
        (["--eval_ks", "1", "20"], "each K must be between 1 and --protocol.num_candidates 10"),
        (["--hardness_k", "500"], "--hardness.hardness_k 500 (the synthetic catalogue"),
        (["--num_candidates", "1"], "--protocol.num_candidates 1 (must be at least 2)"),
        (["--sequence_length", "1"], "--protocol.sequence_length 1 (must be at least 2)"),
        (["--beta", "nan"], "beta must be a finite number > 0"),
        (["--dpo_learning_rate", "inf"], "--dpo.learning_rate inf"),
        (["--lora_dropout", "1.0"], "--model.lora_dropout 1.0"),
        (["--dpo_max_steps", "0"], "--dpo.max_steps 0"),
        (["--dpo_extra_args", '{"bta": 0.2}'], "'bta' (did you mean beta?) is not a field of HaNoDPOConfig"),
    ],
)
def test_pipeline_arguments_are_refused_before_any_stage(argv, fragment):
    with pytest.raises(PipelineConfigError, match=None) as info:
        parse_args(argv)
    assert fragment in str(info.value)


def test_catalogue_dependent_arguments_are_refused_before_the_run_directory_exists(tmp_path, capsys):
    data = small_movielens(tmp_path / "ml", num_items=8, poster_ids=())
    out = tmp_path / "run"
    refused(["--data_dir", str(data), "--output_dir", str(out), "--hardness_k", "8", "--num_candidates", "3",
             "--auc_num_unwatched", "1", "--min_interactions", "6"], capsys,
            "--hardness.hardness_k 8 (the catalogue has 8 items, so K can be at most 7)")
    assert not out.exists()


def test_bad_image_pattern_and_negative_ratings_are_named(tmp_path):
    folder = small_movielens(tmp_path / "ml")
    with pytest.raises(ValueError, match=r"image pattern '\{item_id\}\{0\}.jpg' is not a valid pattern"):
        load_movielens_1m(folder, image_pattern="{item_id}{0}.jpg")
    bad = write_movielens(tmp_path / "neg", ["1::1::4::1", "1::2::-3::2"], ["1::A (1999)::Drama", "2::B (1999)::Drama"])
    with pytest.raises(DataFormatError, match=r"ratings.dat:2: a rating must be a finite number >= 0, got '-3'"):
        load_movielens_1m(bad, images=False)


# ------------------------------------------------------------------------------------------------ the promise


def test_reliability_doc_lists_every_test_of_this_issue():
    """docs/reliability.md is the promise to users: each row names the test that keeps it true."""
    tests = Path(__file__).resolve().parent
    doc = (tests.parent / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", doc))
    everywhere = "".join(p.read_text() for p in sorted(tests.glob("test_*.py")))
    missing = sorted(name for name in named if f"def {name}(" not in everywhere)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    ours = Path(__file__).read_text() + (tests / "test_pipeline_reliability.py").read_text()
    defined = set(re.findall(r"^def (test_[a-z0-9_]+)\(", ours, flags=re.M))
    unlisted = sorted(defined - named - {"test_reliability_doc_lists_every_test_of_this_issue"})
    assert not unlisted, f"tests of issue 13 missing from docs/reliability.md: {unlisted}"
