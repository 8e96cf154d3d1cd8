"""Issue 27 (and issue 13's run-directory rows), the pipeline part: every case of the issue's reliability probe, and
what held before and must keep holding, on the stage folders of hanorec_trl/pipeline (docs/reliability.md).

One finished run of the FAST recipe (tests/pipeline_utils.py) is made once per session; each test works on its own
copy, or on a recipe changed by a field or two, so that a stage's identity (every resolved field and the content of
its inputs) is what the test varies. Kill -9 and Ctrl-C run the example script in a subprocess that
tests/interrupt_hook/sitecustomize.py interrupts at a chosen DPO step.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_utils import (
    REPO,
    adapter_bytes,
    copy_run,
    edit_recipe,
    finished_run,
    read_yaml,
    record,
    refused,
    run,
    snapshot,
    write_recipe,
)

from hanorec_trl.files import LockError, LockFile
from hanorec_trl.pipeline.run_dir import LOCK_FILE, RUN_FORMAT, RunDir
from hanorec_trl.pipeline.stage import PARTIAL, RECORD, STARTED, stage_key

HOOK = Path(__file__).resolve().parent / "interrupt_hook"
STAGES = ("data", "eval-baselines", "sft", "hardness", "dpo-hano", "eval-sft", "eval-hano", "report")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return finished_run(tmp_path_factory)


def recipe_with(base, folder: Path, stage: str, **fields) -> Path:
    """The finished run's recipe with fields of one stage file changed."""
    shutil.copytree(base["recipe"], folder)
    edit_recipe(folder, stage, **fields)
    return folder


def stage_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def as_killed_during_dpo(root: Path) -> Path:
    """The run as a kill during DPO training leaves it: ``dpo-hano.partial`` with its checkpoints and start record,
    no adapter yet, nothing downstream."""
    partial = root / ("dpo-hano" + PARTIAL)
    (root / "dpo-hano").rename(partial)
    for name in (RECORD, "log_history.json"):
        (partial / name).unlink()
    shutil.rmtree(partial / "adapter")
    for name in ("eval-hano", "report"):
        shutil.rmtree(root / name)
    return partial


# ------------------------------------------------------------------------------------------------ identity


def test_two_runs_whose_data_stages_finish_in_the_same_second_are_never_confused(base, tmp_path, monkeypatch):
    """The earlier identity (arguments + one-second 'finished' stamps of the upstream stages) confused split seed 0
    and 1 when their data stages finished in the same second: --reuse_from made the second run's report show the
    first run's models and test rows. Every record of the second run carries the first run's stamp here."""
    from hanorec_trl.scripts.data import load_prepared

    stamp = record(base["run"] / "data")["finished"]
    original = time.strftime
    monkeypatch.setattr(time, "strftime", lambda fmt, *t: stamp if fmt == "%Y-%m-%d %H:%M:%S" else original(fmt, *t))
    recipe = write_recipe(tmp_path / "seed1", {"data": {"seed": 1}, "hardness": None, "dpo": None})
    root = tmp_path / "run"
    assert run("--recipe", recipe, "--run_dir", root, "--reuse_from", base["run"]) == 0
    for name in ("data", "eval-baselines", "sft", "eval-sft", "report"):
        assert record(root / name)["finished"] == stamp  # the same second as the first run's data stage
        assert record(root / name)["reused_from"] is None, name  # nothing of the seed-0 run fits the seed-1 data
    assert record(root / "data")["fingerprint"] != record(base["run"] / "data")["fingerprint"]
    own = load_prepared(root / "data")
    results = json.loads((root / "report" / "results.json").read_text())
    assert results["dataset"] == own.data.name != json.loads((base["run"] / "report" / "results.json").read_text())[
        "dataset"]
    assert results["test_rows"] == [ex.sequence_id for ex in own.test_examples]
    assert set(results["models"]) == {"baseline-popularity", "sft"}  # not the first run's HaNoRec
    assert results["per_row_ranks"]["sft"] == json.loads((root / "eval-sft" / "results.json").read_text())[
        "per_row_ranks"]["sft"]


def test_a_dpo_seed_change_on_reuse_from_trains_dpo_again_and_records_the_seed(base, tmp_path):
    """`--reuse_from ref` with another DPO seed reused every stage (the adapter byte-identical to seed 0's) and
    run.json claimed the new seed."""
    recipe = recipe_with(base, tmp_path / "seed7", "dpo", seed=7)
    root = tmp_path / "run"
    assert run("--recipe", recipe, "--run_dir", root, "--reuse_from", base["run"]) == 0
    source = str(base["run"].resolve())
    for name in ("eval-baselines", "sft", "hardness", "eval-sft"):
        assert record(root / name)["reused_from"] == str(Path(source) / name), name
    dpo = record(root / "dpo-hano")
    assert dpo["reused_from"] is None and dpo["config"]["HaNoDPOConfig.seed"] == 7
    assert record(base["run"] / "dpo-hano")["config"]["HaNoDPOConfig.seed"] == 0
    assert adapter_bytes(root / "dpo-hano") != adapter_bytes(base["run"] / "dpo-hano")
    assert record(root / "eval-hano")["reused_from"] is None
    assert json.loads((root / "run.json").read_text())["recipe"] == str(recipe.resolve())
    assert read_yaml(recipe / "dpo.yaml")["seed"] == 7


def test_a_dpo_seed_change_on_resume_is_refused_naming_the_seed_and_changes_nothing(base, tmp_path, capsys):
    """`--resume --dpo.seed 7` reused the seed-0 adapter and run.json then claimed seed 7. The finished stage is
    another configuration: refused, and the run directory (run.json included) stays as it was."""
    root = copy_run(base["run"], tmp_path / "run")
    recipe = recipe_with(base, tmp_path / "seed7", "dpo", seed=7)
    before = snapshot(root)
    refused(capsys, run("--recipe", recipe, "--run_dir", root, "--resume"), f"{root / 'dpo-hano'}",
            "HaNoDPOConfig.seed: was 0, now 7")
    assert snapshot(root) == before


def test_a_run_directory_moved_elsewhere_resumes_with_every_stage_reused(base, tmp_path, capsys):
    """Paths inside the run directory are recorded relative to it (stage.py): a moved (or copied) run directory
    resumes without redoing or refusing a trained or evaluated stage (the report, derived in seconds, may be
    written again)."""
    root = copy_run(base["run"], tmp_path / "moved")
    kept = [name for name in STAGES if name != "report"]
    records = {name: (root / name / RECORD).read_bytes() for name in kept}
    assert run("--recipe", base["recipe"], "--run_dir", root, "--resume") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for name in kept:
        assert (root / name / RECORD).read_bytes() == records[name], f"{name} was redone"
    assert out.count("done earlier with the same configuration") >= len(kept), out
    assert record(root / "report")["summary"]["models"] == record(base["run"] / "report")["summary"]["models"]


def test_a_record_that_lacks_a_field_or_has_one_more_is_refused_naming_it(base, tmp_path, capsys):
    """A record written by a version of the pipeline without a field (or with one since removed), its key computed
    from what it recorded: resume must not take the missing field for 'unchanged'."""
    root = copy_run(base["run"], tmp_path / "run")
    path = root / "dpo-hano" / RECORD
    original = json.loads(path.read_text())
    value = original["config"]["HaNoDPOConfig.lambda_max"]

    def rewrite(config):
        changed = dict(original, config=config, key=stage_key(config, original["inputs"]))
        path.write_text(json.dumps(changed, indent=2))

    rewrite({k: v for k, v in original["config"].items() if k != "HaNoDPOConfig.lambda_max"})
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--resume"),
            f"HaNoDPOConfig.lambda_max: was '<not recorded>', now {value!r}")
    rewrite({**original["config"], "HaNoDPOConfig.retired_option": 3})
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--resume"),
            "HaNoDPOConfig.retired_option: was 3, now '<not recorded>'")
    assert not (root / ("dpo-hano" + PARTIAL)).exists()


def test_an_unfinished_stage_lacking_a_field_in_its_start_record_is_refused_naming_it(tmp_path):
    from hanorec_trl.pipeline.stage import Stage, StageError

    config = {"HaNoDPOConfig.beta": 0.1, "HaNoDPOConfig.lambda_max": 100.0}
    stage = Stage("dpo", tmp_path / "dpo", config, {"model": "m"}, ("trainer",))
    partial = stage.begin(keep=("trainer",))
    (partial / "trainer" / "checkpoint-1").mkdir(parents=True)
    started = json.loads((partial / STARTED).read_text())
    older = {"HaNoDPOConfig.beta": 0.1}
    (partial / STARTED).write_text(json.dumps(dict(started, config=older, key=stage_key(older, started["inputs"]))))
    with pytest.raises(StageError, match=r"HaNoDPOConfig.lambda_max: was '<not recorded>', now 100.0"):
        Stage("dpo", tmp_path / "dpo", config, {"model": "m"}, ("trainer",)).check_partial()
    assert (partial / "trainer" / "checkpoint-1").is_dir()


def test_data_of_another_folder_with_the_same_name_is_refused_on_resume(tmp_path, capsys):
    """`/a/ml-1m` resumed as `/b/ml-1m`: other content is refused naming the input and the field; the same content
    under another absolute path is refused naming the field only (stage.py: every field resolved, a path outside
    the run directory absolute), and the same folder is reused."""
    from hanorec_trl.data import SyntheticConfig, write_synthetic_movielens

    first = write_synthetic_movielens(tmp_path / "a" / "ml-1m", SyntheticConfig(num_users=30, num_items=80, seed=0))
    moved = tmp_path / "c" / "ml-1m"
    shutil.copytree(first, moved)
    other = tmp_path / "b" / "ml-1m"
    shutil.copytree(first, other)
    ratings = (other / "ratings.dat").read_text(encoding="latin-1").splitlines()
    (other / "ratings.dat").write_text("\n".join(ratings[:-1]) + "\n", encoding="latin-1")  # one rating fewer
    # hardness_k as large as the catalogue: refused right after the data stage, which is all this test needs
    recipe = write_recipe(tmp_path / "recipe", {"hardness": {"hardness_k": 80}})
    root = tmp_path / "run"
    refused(capsys, run("--recipe", recipe, "--data_dir", first, "--run_dir", root), "hardness_k 80")
    data = snapshot(root / "data")
    first, other, moved = first.resolve(), other.resolve(), moved.resolve()
    refused(capsys, run("--recipe", recipe, "--data_dir", other, "--run_dir", root, "--resume"),
            f"DataArguments.data_dir: was {str(first)!r}, now {str(other)!r}", "input data: was")
    line = refused(capsys, run("--recipe", recipe, "--data_dir", moved, "--run_dir", root, "--resume"),
                   f"DataArguments.data_dir: was {str(first)!r}, now {str(moved)!r}")
    assert "input data" not in line  # the content is the same
    refused(capsys, run("--recipe", recipe, "--data_dir", first, "--run_dir", root, "--resume"), "hardness_k 80")
    assert snapshot(root / "data") == data


# ------------------------------------------------------------------------------------------------ ownership


def user_folder(root: Path, run_json: str) -> Path:
    """A user's folder that happens to hold a file named run.json and stage-like subfolders with their data."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(run_json)
    for name in ("data", "sft", "report"):
        (root / name).mkdir()
        (root / name / "precious.txt").write_text(f"user data in {name}/")
    (root / "notes.md").write_text("my notes")
    return root


@pytest.mark.parametrize("run_json", ['{"name": "my experiment"}', "not json at all", '{"format": "other/1"}'])
def test_overwrite_and_resume_never_touch_a_folder_with_a_foreign_run_json(base, tmp_path, capsys, run_json):
    root = user_folder(tmp_path / "mine", run_json)
    before = snapshot(root)
    for flag in ("--overwrite", "--resume"):
        refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, flag),
                f"{flag}: {root} is not a run directory of this pipeline", str(root / "run.json"), "Refusing")
    assert snapshot(root) == before


def test_a_used_run_directory_needs_resume_or_overwrite_and_resume_needs_a_run(base, tmp_path, capsys):
    root = copy_run(base["run"], tmp_path / "run")
    before = snapshot(root)
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root), "exists and is not empty", "--resume",
            "--overwrite")
    assert snapshot(root) == before
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", tmp_path / "absent", "--resume"),
            "holds no run to continue")
    assert not (tmp_path / "absent").exists()
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--resume", "--overwrite"),
            "exclude each other")


def test_overwrite_refuses_user_files_inside_stage_folders_and_deletes_nothing(base, tmp_path, capsys):
    """--overwrite deleted a user's report/notes.md, data/my-dataset-copy/ratings.dat and eval/README-mine.txt."""
    root = copy_run(base["run"], tmp_path / "run")
    (root / "report" / "notes.md").write_text("my notes")
    (root / "data" / "my-dataset-copy").mkdir()
    (root / "data" / "my-dataset-copy" / "ratings.dat").write_text("1::1::5::1\n")
    (root / "eval-sft" / "README-mine.txt").write_text("mine")
    before = snapshot(root)
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--overwrite"), "nothing was deleted",
            "report/notes.md", "data/my-dataset-copy/ratings.dat", "eval-sft/README-mine.txt")
    assert snapshot(root) == before


def test_overwrite_refuses_a_foreign_top_level_entry_or_a_linked_stage_folder(base, tmp_path, capsys):
    root = copy_run(base["run"], tmp_path / "run")
    (root / "thesis").mkdir()
    (root / "thesis" / "chapter1.tex").write_text("do not delete")
    before = snapshot(root)
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--overwrite"), "(thesis)",
            "nothing was deleted")
    assert snapshot(root) == before
    shutil.rmtree(root / "thesis")
    (root / "thesis.tex").write_text("do not delete")
    before = snapshot(root)
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--overwrite"), "(thesis.tex)")
    assert snapshot(root) == before
    (root / "thesis.tex").unlink()
    target = tmp_path / "elsewhere"
    shutil.copytree(root / "sft", target)
    shutil.rmtree(root / "sft")
    (root / "sft").symlink_to(target, target_is_directory=True)  # a link is never followed into
    before, outside = snapshot(root), snapshot(target)
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--overwrite"), "(sft)")
    assert snapshot(root) == before and snapshot(target) == outside


def test_overwrite_deletes_exactly_the_files_the_run_wrote(base, tmp_path):
    root = copy_run(base["run"], tmp_path / "run")
    rundir = RunDir(root)
    rundir.check(resume=False, overwrite=True)
    with_lock = rundir.lock()
    try:
        rundir.prepare(["data"], overwrite=True, extra={})
        assert sorted(p.name for p in root.iterdir()) == ["run.json", LOCK_FILE]
        assert json.loads((root / "run.json").read_text())["format"] == RUN_FORMAT
    finally:
        with_lock.release()
    assert sorted(p.name for p in root.iterdir()) == ["run.json"]


def test_inputs_inside_the_run_directory_are_refused_before_overwrite_deletes_anything(base, tmp_path, capsys):
    """--overwrite empties the run directory: an input inside it (data, recipe, the model SFT starts from) is
    refused before anything is read or deleted."""
    from hanorec_trl.data import SyntheticConfig, write_synthetic_movielens

    root = copy_run(base["run"], tmp_path / "run")
    before = snapshot(root)
    model = root / "sft" / "merged"  # what the pipeline wrote there, now the base of another recipe
    recipe = recipe_with(base, tmp_path / "from-merged", "sft", model_name_or_path=str(model))
    refused(capsys, run("--recipe", recipe, "--run_dir", root, "--overwrite"), str(model), "lies inside")
    assert snapshot(root) == before
    data = write_synthetic_movielens(root / "data" / "ml", SyntheticConfig(num_users=30, num_items=80, seed=0))
    (data / "ratings.dat").write_text("not::a::rating\n")  # had it been read, the error would name ratings.dat
    inside = shutil.copytree(base["recipe"], root / "report" / "recipe")
    before = snapshot(root)
    line = refused(capsys, run("--recipe", base["recipe"], "--data_dir", data, "--run_dir", root, "--overwrite"))
    assert "nothing was deleted" in line or "lies inside" in line, line
    line = refused(capsys, run("--recipe", inside, "--run_dir", root, "--overwrite"))
    assert "nothing was deleted" in line or "lies inside" in line, line
    assert snapshot(root) == before


# ------------------------------------------------------------------------------------------------ the lock


def test_a_second_run_on_a_locked_run_directory_is_refused_with_pid_and_host(base, tmp_path, capsys):
    root = copy_run(base["run"], tmp_path / "run")
    before = snapshot(root)
    lock = RunDir(root).lock()
    try:
        refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--resume"), "is in use by another run",
                f"pid {os.getpid()}", socket.gethostname(), str(root / LOCK_FILE))
    finally:
        lock.release()
    assert snapshot(root) == before


def test_a_run_lock_that_is_a_link_is_refused_and_its_target_untouched(base, tmp_path, capsys):
    root = copy_run(base["run"], tmp_path / "run")
    target = tmp_path / "precious.txt"
    target.write_text("not a lock")
    (root / LOCK_FILE).symlink_to(target)
    before = snapshot(root)
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--resume"), f"{root / LOCK_FILE} is a link")
    assert target.read_text() == "not a lock" and snapshot(root) == before
    (root / LOCK_FILE).unlink()
    (root / LOCK_FILE).symlink_to(tmp_path / "absent.txt")  # a dangling link: its target is never created
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--resume"), "is a link")
    assert not (tmp_path / "absent.txt").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over_but_not_a_live_or_foreign_one(tmp_path):
    path = tmp_path / LOCK_FILE
    host = socket.gethostname()
    path.write_text(json.dumps({"pid": _dead_pid(), "host": host}))
    lock = LockFile(path)
    lock.acquire()
    assert lock.took_over is not None and json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process on this host that does not hold the flock is never taken over
        path.write_text(json.dumps({"pid": sleeper.pid, "host": host}))
        with pytest.raises(LockError, match=rf"pid {sleeper.pid} on host .*that process is alive"):
            LockFile(path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    path.write_text(json.dumps({"pid": 12345, "host": "another-host.example"}))
    with pytest.raises(LockError, match="another-host.example.*cannot be checked"):
        LockFile(path).acquire()
    path.unlink()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from hanorec_trl.files import "
         "LockFile; LockFile(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:  # a holder in another process (flock held) is refused
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=rf"pid {holder.pid} on host {host}.*holds the lock"):
            LockFile(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    LockFile(path).acquire()  # the holder was killed: its lock is taken over


# ------------------------------------------------------------------------------------------------ started stages


def test_an_unfinished_stage_resumed_with_other_arguments_is_refused_and_its_checkpoints_kept(base, tmp_path,
                                                                                              capsys):
    root = copy_run(base["run"], tmp_path / "run")
    partial = as_killed_during_dpo(root)
    recipe = recipe_with(base, tmp_path / "beta", "dpo", beta=0.5, learning_rate=0.01)
    before = snapshot(partial)
    refused(capsys, run("--recipe", recipe, "--run_dir", root, "--resume"), str(partial),
            "HaNoDPOConfig.beta: was 0.1, now 0.5", "HaNoDPOConfig.learning_rate: was 0.0001, now 0.01")
    assert snapshot(partial) == before


def test_an_unfinished_stage_without_checkpoints_starts_over_only_when_it_holds_nothing_else(tmp_path):
    """A stage that trains nothing (data, hardness, evaluation) and failed half-way: another configuration
    discards the unfinished folder, unless a user's file is in it."""
    from hanorec_trl.pipeline.stage import Stage, StageError

    def stage(value):
        return Stage("hardness", tmp_path / "hardness", {"HardnessArguments.hardness_k": value}, {"data": "d"},
                     ("pairs", "reference.json"))

    partial = stage(10).begin()
    (partial / "reference.json").write_text("{}")
    assert stage(5).check_partial(discard_other=True) is False and not partial.exists()
    partial = stage(10).begin()
    (partial / "notes.txt").write_text("mine")
    with pytest.raises(StageError, match=r"HardnessArguments.hardness_k: was 10, now 5"):
        stage(5).check_partial(discard_other=True)
    assert (partial / "notes.txt").read_text() == "mine"
    assert stage(10).check_partial() is True  # the same configuration continues


# ------------------------------------------------------------------------------------------------ records


def test_a_truncated_stage_record_is_a_one_line_error_on_resume(base, tmp_path, capsys):
    root = copy_run(base["run"], tmp_path / "run")
    path = root / "sft" / RECORD
    path.write_bytes(path.read_bytes()[:100])
    before = snapshot(root)
    line = refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--resume"), str(path),
                   "cut short or edited")
    assert "JSONDecodeError" not in line
    assert {k: v for k, v in snapshot(root).items() if k != "run.json"} == {
        k: v for k, v in before.items() if k != "run.json"}
    partial = as_killed_during_dpo(copy_run(base["run"], tmp_path / "run2"))
    (partial / STARTED).write_text('{"stage": "dpo", "key": ')
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", tmp_path / "run2", "--resume"),
            str(partial / STARTED))


def test_a_truncated_stage_record_in_the_reuse_source_is_refused_before_anything_is_copied(base, tmp_path, capsys):
    source = copy_run(base["run"], tmp_path / "source")
    path = source / "hardness" / RECORD
    path.write_bytes(path.read_bytes()[:100])
    root = tmp_path / "run"
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--reuse_from", source), str(path))
    assert not [name for name in stage_folders(root) if name != "data"], stage_folders(root)


def test_reuse_from_refuses_what_is_not_another_run_directory(base, tmp_path, capsys):
    """A typo in --reuse_from must not silently train everything again, nor read a user's folder."""
    # hardness_k as large as the catalogue: should the check be missing, the run stops right after the data stage
    recipe = recipe_with(base, tmp_path / "recipe", "hardness", hardness_k=80)
    mine = user_folder(tmp_path / "mine", '{"name": "my experiment"}')
    for source, why in ((tmp_path / "absent", "no such folder"), (mine, "not a run directory of this pipeline")):
        root = tmp_path / f"run-{source.name}"
        refused(capsys, run("--recipe", recipe, "--run_dir", root, "--reuse_from", source), "--reuse_from",
                str(source), why)
        assert not root.exists()


# ------------------------------------------------------------------------------------------------ values


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("stage, fields, named", [
    ("sft", {"seed": -1}, "seed"),
    ("dpo", {"lora_noise_seed": -5}, "lora_noise_seed"),
    ("dpo", {"max_steps": 2.7}, "max_steps"),
    ("sft", {"max_steps": 2.7}, "max_steps"),
    ("dpo", {"max_steps": 0}, "max_steps"),
    ("dpo", {"learning_rate": 1e10}, "learning_rate"),
    ("dpo", {"learning_rate": INF}, "learning_rate"),
    ("sft", {"learning_rate": NAN}, "learning_rate"),
    ("dpo", {"weight_decay": INF}, "weight_decay"),
    ("dpo", {"beta": 1e30}, "beta"),
    ("dpo", {"beta": NAN}, "beta"),
    ("dpo", {"lora_dropout": 1.0}, "lora_dropout"),
    ("dpo", {"bta": 0.2}, "bta"),
    ("evaluate", {"eval_ks": [0]}, "eval_ks"),
    ("evaluate", {"eval_ks": [1, 20]}, "eval_ks"),
    ("data", {"num_candidates": 1}, "num_candidates"),
    ("data", {"sequence_length": 1}, "sequence_length"),
])
def test_each_late_value_is_refused_before_any_stage_runs(tmp_path, capsys, stage, fields, named):
    """Values accepted at parse time used to fail only after data, model, SFT and hardness ran."""
    recipe = write_recipe(tmp_path / "recipe", {stage: fields})
    root = tmp_path / "run"
    refused(capsys, run("--recipe", recipe, "--run_dir", root), named, f"{stage}.yaml")
    assert not root.exists(), stage_folders(root)


@pytest.mark.parametrize("stage, value", [("sft", 2), ("dpo", 1), ("dpo", 8)])
def test_a_max_length_shorter_than_every_row_is_refused_before_sft(tmp_path, capsys, stage, value):
    recipe = write_recipe(tmp_path / "recipe", {stage: {"max_length": value}})
    root = tmp_path / "run"
    refused(capsys, run("--recipe", recipe, "--run_dir", root), "max_length", f"{stage}.yaml")
    assert not [name for name in stage_folders(root) if name.startswith("sft")], stage_folders(root)


def test_a_hardness_k_as_large_as_the_catalogue_is_refused_after_the_data_stage(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe", {"hardness": {"hardness_k": 80}})
    root = tmp_path / "run"
    refused(capsys, run("--recipe", recipe, "--run_dir", root), "hardness_k 80", "the catalogue has 80 items",
            "at most 79")
    assert stage_folders(root) == ["data"]


BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe")
    (recipe / "sft.yaml").write_text((recipe / "sft.yaml").read_text() + BOMB)
    assert len(BOMB) < 600
    start = time.perf_counter()
    refused(capsys, run("--recipe", recipe, "--run_dir", tmp_path / "run"), str(recipe / "sft.yaml"),
            "aliases expand")
    assert time.perf_counter() - start < 20 and not (tmp_path / "run").exists()


def test_a_recipe_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe")
    text = (recipe / "data.yaml").read_bytes()
    (recipe / "data.yaml").write_bytes(b"# caf\xe9 recipe\n" + text)  # ISO-8859-1, as an old editor saves it
    refused(capsys, run("--recipe", recipe, "--run_dir", tmp_path / "run"), f"{recipe / 'data.yaml'}, line 1",
            "0xe9", "UTF-8")


def test_a_key_given_twice_in_a_recipe_file_is_refused_naming_it(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe")
    text = (recipe / "dpo.yaml").read_text()
    (recipe / "dpo.yaml").write_text(text + "beta: 0.5\n")
    refused(capsys, run("--recipe", recipe, "--run_dir", tmp_path / "run"), str(recipe / "dpo.yaml"), "'beta'",
            "given twice")


def test_a_repeated_config_is_an_error_naming_it(tmp_path, capsys):
    from hanorec_trl.pipeline.running import script_main
    from hanorec_trl.scripts import dpo

    recipe = write_recipe(tmp_path / "recipe")
    a, b = recipe / "dpo.yaml", tmp_path / "other.yaml"
    b.write_text("beta: 0.5\n")
    argv = ["--config", str(a), "--config", str(b), "--output_dir", str(tmp_path / "dpo")]
    refused(capsys, script_main(dpo.parse, dpo.main, argv), "--config is given twice")
    refused(capsys, run("--config", b, "--config", a, "--run_dir", tmp_path / "run"), "--config is given twice")
    assert not (tmp_path / "dpo").exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ interruptions


def launch(command: list[str], interrupt: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HOOK), os.environ.get("PYTHONPATH", "")]))
    env.pop("HANOREC_TEST_INTERRUPT", None)
    if interrupt:
        env["HANOREC_TEST_INTERRUPT"] = interrupt
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def checkpoints(partial: Path) -> list[str]:
    return sorted(p.name for p in (partial / "trainer").glob("checkpoint-*"))


@pytest.fixture(scope="module")
def interrupted(base, tmp_path_factory):
    """The finished run's DPO stage trained again in a copy, interrupted three times: Ctrl-C during step 1 (the
    recipe saves every 2 steps, so only Ctrl-C can have saved checkpoint-1), kill -9 right after checkpoint-2 is
    written, kill -9 during step 3, then checkpoint-2's adapter cut in half (as a kill while it is written leaves
    it); each time continued with the command the first interruption printed. A user's notes.txt lies in the
    unfinished stage folder throughout. Returns what each step left."""
    root = copy_run(base["run"], tmp_path_factory.mktemp("interrupted") / "run")
    for name in ("dpo-hano", "eval-hano", "report"):
        shutil.rmtree(root / name)
    partial = root / ("dpo-hano" + PARTIAL)
    script = [sys.executable, str(REPO / "examples" / "train_movielens.py"), "--recipe", str(base["recipe"]),
              "--run_dir", str(root), "--resume"]
    steps = {"sigint": launch(script, "sigint:1")}
    steps["sigint-checkpoints"] = checkpoints(partial)
    printed = [line.strip() for line in steps["sigint"].stderr.splitlines() if line.strip().startswith("python ")]
    steps["printed"] = printed
    command = shlex.split(printed[-1]) if printed else script[1:]
    (partial / "notes.txt").write_text("my notes about this training")
    steps["after-checkpoint"] = launch([sys.executable, *command[1:]], "kill-after-checkpoint:2")
    steps["after-checkpoint-checkpoints"] = checkpoints(partial)
    steps["in-step"] = launch([sys.executable, *command[1:]], "kill-in-step:3")
    steps["in-step-checkpoints"] = checkpoints(partial)
    weights = partial / "trainer" / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # as a kill while it was written
    steps["final"] = launch([sys.executable, *command[1:]], None)
    return {"root": root, "steps": steps}


def test_ctrl_c_during_dpo_saves_a_checkpoint_prints_the_resume_command_and_exits_130(interrupted):
    root, steps = interrupted["root"], interrupted["steps"]
    result = steps["sigint"]
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "interrupted:" in result.stderr
    assert steps["sigint-checkpoints"] == ["checkpoint-1"]  # only Ctrl-C saves at step 1
    assert steps["printed"] and shlex.split(steps["printed"][-1])[-3:] == ["--run_dir", str(root), "--resume"]
    assert shlex.split(steps["printed"][-1])[1] == str(REPO / "examples" / "train_movielens.py")


def test_kill_9_after_a_checkpoint_or_during_a_step_or_a_save_continues_from_the_last_complete_one(interrupted):
    steps = interrupted["steps"]
    for name in ("after-checkpoint", "in-step"):
        assert steps[name].returncode == -9, steps[name].stderr[-3000:]
    assert steps["after-checkpoint-checkpoints"] == ["checkpoint-1", "checkpoint-2"]
    assert steps["in-step-checkpoints"] == ["checkpoint-1", "checkpoint-2"]  # step 3 never saved
    assert "took over the lock of a run that is gone" in steps["in-step"].stdout  # the killed run's lock
    final = steps["final"]
    assert final.returncode == 0, final.stderr[-3000:]
    assert "checkpoint-2 is incomplete" in final.stdout and "truncated" in final.stdout, final.stdout[-3000:]
    assert record(interrupted["root"] / "dpo-hano")["summary"]["resumed_from"].endswith("checkpoint-1")


def test_an_interrupted_dpo_stage_resumes_bit_identical_to_an_uninterrupted_run(base, interrupted):
    root = interrupted["root"]
    assert interrupted["steps"]["final"].returncode == 0, interrupted["steps"]["final"].stderr[-3000:]
    history = json.loads((root / "dpo-hano" / "log_history.json").read_text())
    reference = json.loads((base["run"] / "dpo-hano" / "log_history.json").read_text())
    # what is not training: timings, the summary of the last train() call, and TRL's cumulative token counter (it
    # restarts from 0 in a resumed trainer)
    drop = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss",
            "num_tokens")
    assert [{k: v for k, v in h.items() if k not in drop} for h in history] == [
        {k: v for k, v in h.items() if k not in drop} for h in reference]
    assert adapter_bytes(root / "dpo-hano") == adapter_bytes(base["run"] / "dpo-hano")


def test_resume_never_deletes_a_users_file_in_an_unfinished_stage_folder(base, interrupted, capsys):
    root = interrupted["root"]
    assert interrupted["steps"]["final"].returncode == 0
    assert (root / "dpo-hano" / "notes.txt").read_text() == "my notes about this training"
    assert "notes.txt" not in record(root / "dpo-hano")["files"]  # not the run's: --overwrite refuses it
    refused(capsys, run("--recipe", base["recipe"], "--run_dir", root, "--overwrite"), "dpo-hano/notes.txt")


# ------------------------------------------------------------------------------------------------ data files


def test_truncated_posters_get_the_placeholder_and_one_warning_in_the_pipeline(tmp_path):
    """Posters whose header is intact but whose pixel data is cut: the data stage names them in a warning and its
    datasets carry the placeholder, so no later stage meets an undecodable image."""
    import warnings

    from hanorec_trl.data import MissingImageWarning, ProtocolConfig, SyntheticConfig, write_synthetic_movielens
    from hanorec_trl.scripts import data as data_stage

    folder = write_synthetic_movielens(tmp_path / "ml", SyntheticConfig(num_users=30, num_items=80, seed=0))
    cut = [str(i) for i in range(1, 41)]  # half the catalogue: some in every split
    for item in cut:
        poster = folder / "posters" / f"{item}.jpg"
        poster.write_bytes(poster.read_bytes()[: poster.stat().st_size // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = data_stage.main(data_stage.DataArguments(output_dir=str(tmp_path / "run" / "data"),
                                                        data_dir=str(folder), max_train_sequences=6),
                               ProtocolConfig(num_candidates=4, auc_num_unwatched=1))
    named = [str(w.message) for w in caught if issubclass(w.category, MissingImageWarning)]
    assert named and all("truncated" in m for m in named), named
    assert any(f"'{item}'" in m for m in named for item in cut), named
    assert done["stage"] == "data"
    prepared = data_stage.load_prepared(tmp_path / "run" / "data")
    for name in ("sft", "dpo", "eval_ranking"):
        for row in prepared.dataset(name):
            assert all(image.size[0] > 0 for image in row["images"])  # every image decodes
