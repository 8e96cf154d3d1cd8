"""Stages record the stages they read (``upstream``), and ``--run.reuse_from`` copies finished stages of another run
directory that have the same arguments: a sweep of DPO settings from one SFT model (docs/pipeline.md)."""

import json
import shutil

import pytest
from test_pipeline import FAST

from hanorec_trl.pipeline import main
from hanorec_trl.pipeline.rundir import MARKER, UPSTREAM

SHARED = ["data", "model", "sft", "dpo/dpo", "eval/sft", "eval/dpo", "eval/baseline-popularity"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse") / "tau1"
    assert main(FAST + ["--output_dir", str(root), "--variants", "dpo", "hano"]) == 0
    return root


def marker(root, stage):
    return json.loads((root / stage / MARKER).read_text())


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "run.lock"}


def test_stages_record_the_stages_they_read(source):
    sft = marker(source, "sft")["finished"]
    assert marker(source, "dpo/dpo")["inputs"][UPSTREAM] == {"sft": sft}  # plain DPO does not read lambda
    assert marker(source, "dpo/hano")["inputs"][UPSTREAM] == {"sft": sft, "hardness": marker(source, "hardness")
                                                              ["finished"]}
    assert marker(source, "eval/hano")["inputs"][UPSTREAM] == {"dpo/hano": marker(source, "dpo/hano")["finished"]}
    # plain DPO does not record the hardness settings it cannot depend on; HaNoRec does
    assert "hardness_temperature" not in marker(source, "dpo/dpo")["inputs"]
    assert marker(source, "dpo/hano")["inputs"]["hardness_temperature"] == 1.0


def test_a_temperature_sweep_reuses_sft_and_plain_dpo_and_trains_only_what_changed(source, tmp_path, capsys):
    before = snapshot(source)
    capsys.readouterr()
    sweep = tmp_path / "tau01"
    assert main(FAST + ["--output_dir", str(sweep), "--variants", "dpo", "hano", "--run.reuse_from", str(source),
                        "--hardness.hardness_temperature", "0.1"]) == 0
    out = capsys.readouterr().out
    for stage in SHARED:
        assert f"[{stage}] reused: finished in {source}" in out, stage
        assert marker(sweep, stage)["reused_from"] == str((source / stage).resolve())
    for stage in ("hardness", "dpo/hano", "eval/hano"):  # the temperature changes lambda, so HaNoRec trains again
        assert f"[{stage}] running" in out, stage
        assert "reused_from" not in marker(sweep, stage)
    assert "reference log-probs shared" in out  # plain DPO's reference pass of the source run
    adapter = "dpo/dpo/adapter/adapter_model.safetensors"
    assert (sweep / adapter).read_bytes() == (source / adapter).read_bytes()
    assert marker(sweep, "eval/hano")["inputs"][UPSTREAM] == {"dpo/hano": marker(sweep, "dpo/hano")["finished"]}
    assert marker(sweep, "hardness")["inputs"]["hardness_temperature"] == 0.1
    results = json.loads((sweep / "report" / "results.json").read_text())
    assert {"sft", "dpo", "hano"} <= set(results["models"])
    assert snapshot(source) == before  # the source run is only read
    # the sweep resumes as any run, and deleting it leaves the source whole
    assert main(FAST + ["--output_dir", str(sweep), "--resume", "--variants", "dpo", "hano", "--run.reuse_from",
                        str(source), "--hardness.hardness_temperature", "0.1"]) == 0
    assert "running" not in capsys.readouterr().out
    shutil.rmtree(sweep)
    assert snapshot(source) == before


def test_a_model_trained_again_is_evaluated_again(source, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(source, root)
    shutil.rmtree(root / "dpo" / "dpo")  # retrained below: its old evaluation must not be reported for the new one
    assert main(FAST + ["--output_dir", str(root), "--resume", "--variants", "dpo", "hano"]) == 0
    out = capsys.readouterr().out
    assert "[dpo/dpo] running" in out and "[eval/dpo] dpo/dpo was redone since it finished: done again" in out
    assert "[eval/dpo] running" in out
    assert "[eval/hano] finished earlier: skipped" in out


def test_run_directories_without_upstream_records_resume_but_are_not_reused(source, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(source, old)
    for path in old.rglob(MARKER):  # as an earlier version wrote them
        recorded = json.loads(path.read_text())
        recorded["inputs"].pop(UPSTREAM, None)
        path.write_text(json.dumps(recorded))
    assert main(FAST + ["--output_dir", str(old), "--resume", "--variants", "dpo", "hano"]) == 0
    assert "running" not in capsys.readouterr().out
    sweep = tmp_path / "sweep"
    assert main(FAST + ["--output_dir", str(sweep), "--variants", "dpo", "--run.reuse_from", str(old)]) == 0
    out = capsys.readouterr().out
    assert "[data] reused" in out and "[model] reused" in out  # no upstream to check
    assert "[sft] running" in out and "[dpo/dpo] running" in out  # what it read cannot be proven the same


@pytest.mark.parametrize("where, message", [
    ("self", "is this run's own directory"),
    ("missing", "no such folder"),
    ("foreign", "is not a run directory of this pipeline"),
])
def test_reuse_from_refuses_what_is_not_another_run_directory(tmp_path, capsys, where, message):
    root = tmp_path / "run"
    root.mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    other = {"self": root, "missing": tmp_path / "missing", "foreign": tmp_path / "foreign"}[where]
    assert main(FAST + ["--output_dir", str(root), "--run.reuse_from", str(other)]) == 2
    assert message in capsys.readouterr().err
    assert list(root.iterdir()) == [] and (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
