"""Issue 28, report scripts: ``benchmarks/compare_conditions.py`` takes ``--out`` as given, never overwrites a file (a
run's own ``report/results.json`` least of all) and refuses two conditions with one label; the report stage that
replaced ``benchmarks/merge_reports.py`` (``python -m hanorec_trl.scripts.report``) writes a new folder, never into a
run's report or a user's folder, and refuses results merged twice (docs/reliability.md, "Report scripts")."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from hanorec_trl.evaluation.reporting import ReportError, merge_results, read_results
from hanorec_trl.files import appended, new_files
from hanorec_trl.pipeline.running import script_main
from hanorec_trl.scripts import report

ROOT = Path(__file__).resolve().parents[1]
ROWS = [f"u{i}:3" for i in range(4)]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_report(folder: Path, variant: str, difference: float) -> Path:
    """A run directory's ``report/results.json`` and ``results.md`` as the pipeline writes them (SFT, DPO and one
    variant, per-row ranks, the variant's paired difference against DPO)."""
    ranks = {"sft": [2, 2, 1, 3], "dpo-seed0": [1, 2, 1, 3], f"{variant}-seed0": [1, 1, 1, 3]}
    labels = {"sft": "SFT", "dpo-seed0": "DPO (seed 0)", f"{variant}-seed0": f"{variant} (seed 0)"}
    results = {"dataset": "toy", "model": "tiny", "test_sequences": 4,
               "models": {name: {"label": labels[name], "hr@1": sum(r == 1 for r in v) / 4, "ndcg@10": 0.5}
                          for name, v in ranks.items()},
               "paired_differences": [{"model": variant, "reference": "dpo", "metric": "hr@1", "rows": 4,
                                       "difference": difference, "low": difference - 0.1, "high": difference + 0.1,
                                       "p_not_better": 0.3}],
               "test_rows": ROWS, "per_row_ranks": ranks}
    (folder / "report").mkdir(parents=True)
    path = folder / "report" / "results.json"
    path.write_text(json.dumps(results))
    (folder / "report" / "results.md").write_text("# Results: the run's own table\n")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def merge(argv: list[str]) -> int:
    """The report stage as a command (what ``benchmarks/merge_reports.py`` was): exit code 2 for a refusal."""
    return script_main(report.parse, report.main, argv)


def merge_refused(argv, capsys, *fragments) -> str:
    assert merge(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def refused(main, argv, capsys, *fragments) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_out_is_taken_as_given_never_cut_at_the_last_dot(tmp_path):
    """``--out ctau0.1`` then ``--out ctau0.05`` wrote ``ctau0.*`` twice, the second replacing the first."""
    a = run_report(tmp_path / "tau01", "hano", 0.25)
    b = run_report(tmp_path / "tau005", "hano", -0.25)
    out = tmp_path / "out"
    compare = script("compare_conditions").main
    assert compare(["--condition", "tau 0.1", str(a), "--out", str(out / "ctau0.1")]) == 0
    assert compare(["--condition", "tau 0.05", str(b), "--out", str(out / "ctau0.05")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ctau0.05.json", "ctau0.05.md", "ctau0.05.png",
                                                     "ctau0.1.json", "ctau0.1.md", "ctau0.1.png"]
    assert "+0.2500" in (out / "ctau0.1.md").read_text() and "-0.2500" in (out / "ctau0.05.md").read_text()
    c = run_report(tmp_path / "wo_sam", "wo_sam", 0.0)
    assert merge(["--results", str(a), str(c), "--output_dir", str(out / "tau0.1")]) == 0
    assert (out / "tau0.1" / "results.json").is_file() and (out / "tau0.1" / "results.md").is_file()
    assert not (out / "tau0").exists()
    assert appended("runs/tau0.1", ".json") == Path("runs/tau0.1.json")


def test_an_existing_output_is_refused_and_left_unchanged(tmp_path, capsys):
    a = run_report(tmp_path / "run", "hano", 0.25)
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").write_text("the user's own table")
    before = snapshot(tmp_path)
    refused(script("compare_conditions").main, ["--condition", "hard", str(a), "--out", str(out / "table")], capsys,
            f"{out / 'table.md'} already exists; nothing is overwritten")
    c = run_report(tmp_path / "other", "wo_sam", 0.0)
    (out / "merged").mkdir()
    (out / "merged" / "results.json").write_text("{}")
    merge_refused(["--results", str(a), str(c), "--output_dir", str(out / "merged")], capsys, str(out / "merged"))
    assert snapshot(tmp_path / "run") == {k.removeprefix("run/"): v for k, v in before.items() if k.startswith("run/")}
    assert (out / "table.md").read_text() == "the user's own table"
    assert (out / "merged" / "results.json").read_text() == "{}" and len(list((out / "merged").iterdir())) == 1
    assert sorted(p.name for p in out.iterdir()) == ["merged", "table.md"]  # nothing else written


def test_a_runs_own_report_is_never_replaced(tmp_path, capsys):
    """``--out run/report/results.json`` replaced the run's results.json and results.md (``read_results`` then
    refused the run as "not a pipeline report")."""
    own = run_report(tmp_path / "run", "hano", 0.25)
    before = snapshot(tmp_path / "run")
    compare = script("compare_conditions").main
    refused(compare, ["--condition", "hard", str(own), "--out", str(own.parent / "results")], capsys,
            "results.md, ", "results.json already exist")
    assert compare(["--condition", "hard", str(own), "--out", str(own)]) == 0  # appended: results.json.md, ...
    assert {k: v for k, v in snapshot(tmp_path / "run").items() if k in before} == before
    assert read_results(own)["models"]["hano-seed0"]["label"] == "hano (seed 0)"
    other = run_report(tmp_path / "other", "wo_sam", 0.0)
    merge_refused(["--results", str(own), str(other), "--output_dir", str(own.parent)], capsys, str(own.parent))
    assert {k: v for k, v in snapshot(tmp_path / "run").items() if k in before} == before


def test_the_same_report_merged_twice_is_refused_naming_it(tmp_path, capsys):
    a = run_report(tmp_path / "a", "hano", 0.25)
    b = run_report(tmp_path / "b", "wo_sam", 0.0)
    merge_refused(["--results", str(a), str(b), str(a), "--output_dir", str(tmp_path / "m")], capsys,
                  f"{a} is given twice")
    copy = tmp_path / "copy.json"
    shutil.copy(a, copy)
    merge_refused(["--results", str(a), str(copy), "--output_dir", str(tmp_path / "m")], capsys,
                  f"{copy} adds no model to {a}", "the same results twice?")
    assert not list(tmp_path.glob("m*"))
    with pytest.raises(ReportError, match="x.json is given twice"):
        merge_results([("x.json", read_results(a)), ("x.json", read_results(b))])


def test_two_conditions_with_one_label_or_one_report_under_two_labels_are_refused(tmp_path, capsys):
    a = run_report(tmp_path / "a", "hano", 0.25)
    b = run_report(tmp_path / "b", "hano", -0.25)
    compare = script("compare_conditions").main
    refused(compare, ["--condition", "hard", str(a), "--condition", "hard", str(b), "--out", str(tmp_path / "c")],
            capsys, f"--condition 'hard' is given twice ({a} and {b})")
    refused(compare, ["--condition", "hard", str(a), "--condition", "random", str(tmp_path / "a" / "report" / ".." /
                                                                                   "report" / "results.json"),
                      "--out", str(tmp_path / "c")], capsys, "is given twice (as --condition 'hard' and 'random')")
    assert not list(tmp_path.glob("c.*"))


def test_new_files_never_replaces_and_leaves_nothing_behind(tmp_path):
    first, second = tmp_path / "x.md", tmp_path / "sub" / "x.png"
    with pytest.raises(RuntimeError):
        with new_files([first, second]) as (a, b):
            a.write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []  # no output, no temporary file
    with pytest.raises(FileExistsError, match=r"x\.png was created meanwhile"):
        with new_files([first, second]) as (a, b):
            a.write_text("mine")
            b.write_text("mine")
            second.write_text("someone else's")  # another process takes the name while we write
    assert not first.exists() and second.read_text() == "someone else's"  # ours removed, theirs kept
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["x.png"]
    with new_files([first]) as (a,):
        assert a.suffix == ".md" and a.parent == tmp_path  # writers that go by the suffix (matplotlib) still work
        a.write_text("done")
    assert first.read_text() == "done"
