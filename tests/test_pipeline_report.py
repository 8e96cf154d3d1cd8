"""Issue 27: the report stage (hanorec_trl/scripts/report.py) over one or several evaluation results: runs made in
separate run directories merge when they share the test rows and agree on every model they share; it never
overwrites. (The assertions of the earlier tests/test_merge_reports.py, on the stage that replaced
benchmarks/merge_reports.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pipeline_utils import finished_run, record, refused, snapshot

from hanorec_trl.evaluation.reporting import ReportError, merge_results
from hanorec_trl.pipeline.running import script_main
from hanorec_trl.scripts import report

ROWS = [f"u{i}:3" for i in range(8)]


def results(ranks: dict[str, list[int]], labels: dict[str, str], rows=ROWS, **metrics) -> dict:
    """An evaluation's results.json as the evaluation stage lays it out: metrics per model, per-row ranks, rows."""
    models = {name: {"label": labels[name], "hr@1": sum(r == 1 for r in values) / len(values), "hr@10": 1.0,
                     "ndcg@10": 0.5, **metrics.get(name, {})} for name, values in ranks.items()}
    return {"dataset": "toy", "models": models, "test_rows": rows, "per_row_ranks": ranks}


SFT = [2, 2, 2, 2, 1, 1, 3, 3]
DPO = [1, 2, 2, 2, 1, 1, 3, 3]
POPULARITY = [1, 3, 3, 3, 3, 3, 3, 3]
FIRST = results({"baseline-popularity": POPULARITY, "sft": SFT, "dpo-seed0": DPO},
                {"baseline-popularity": "popularity", "sft": "SFT", "dpo-seed0": "DPO (seed 0)"})
SECOND = results({"baseline-popularity": POPULARITY, "sft": SFT, "wo_sam-seed0": [1, 1, 1, 2, 1, 1, 3, 3]},
                 {"baseline-popularity": "popularity", "sft": "SFT", "wo_sam-seed0": "w/o SAM (seed 0)"})


def written(folder: Path, content: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(content))
    return folder


def run_report(capsys, *sources: Path, out: Path) -> int:
    return script_main(report.parse, report.main, ["--results", *map(str, sources), "--output_dir", str(out)])


def test_a_variant_of_one_run_is_paired_with_plain_dpo_of_another(tmp_path, capsys):
    a, b = written(tmp_path / "a" / "eval", FIRST), written(tmp_path / "b" / "eval", SECOND)
    assert run_report(capsys, a, b, out=tmp_path / "merged") == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert list(merged["models"]) == ["baseline-popularity", "sft", "dpo-seed0", "wo_sam-seed0"]
    assert merged["merged_from"] == [str(a / "results.json"), str(b / "results.json")]
    assert merged["test_rows"] == ROWS
    pairs = {(d["model"], d["reference"], d["metric"]): d for d in merged["paired_differences"]}
    wo_sam_vs_dpo = pairs[("wo_sam", "dpo", "hr@1")]  # rows 2 and 3 hit where DPO ranks 2: +2/8
    assert wo_sam_vs_dpo["difference"] == pytest.approx(2 / 8) and wo_sam_vs_dpo["rows"] == 8
    assert pairs[("dpo", "sft", "hr@1")]["difference"] == pytest.approx(1 / 8)
    assert ("wo_sam", "baseline-popularity", "hr@1") in pairs
    markdown = (tmp_path / "merged" / "results.md").read_text()
    assert "| w/o SAM (1 seed) | DPO (1 seed) | HR@1 | 8 | +0.2500 |" in markdown
    assert "| popularity |" in markdown and "| SFT |" in markdown
    assert record(tmp_path / "merged")["summary"]["models"] == list(merged["models"])


def test_results_that_disagree_on_a_shared_models_ranks_or_on_the_rows_are_refused_naming_it(tmp_path):
    other_sft = results({"sft": [1] * 8, "wo_sam-seed0": [1] * 8}, {"sft": "SFT", "wo_sam-seed0": "w/o SAM"})
    with pytest.raises(ReportError, match=r"b.json: sft ranks the target differently on 6 test rows than in a.json"):
        merge_results([("a.json", FIRST), ("b.json", other_sft)])
    other_rows = results({"sft": SFT, "x-seed0": SFT}, {"sft": "SFT", "x-seed0": "x"}, rows=[f"u{i}:4" for i in
                                                                                            range(8)])
    with pytest.raises(ReportError, match=r"b.json: other test rows than a.json"):
        merge_results([("a.json", FIRST), ("b.json", other_rows)])
    shorter = results({"sft": SFT[:6], "x-seed0": SFT[:6]}, {"sft": "SFT", "x-seed0": "x"}, rows=None)
    with pytest.raises(ReportError, match=r"b.json: sft ranks the target differently"):
        merge_results([("a.json", FIRST), ("b.json", shorter)])


def test_results_that_disagree_on_a_shared_models_metrics_are_refused_naming_it():
    """The same ranks but another AUC: another evaluation of the model (another auc_probability, other AUC rows); the
    merged table would show one of the two in silence."""
    first = results({"sft": SFT}, {"sft": "SFT"}, sft={"auc": 0.6})
    other = results({"sft": SFT, "x-seed0": SFT}, {"sft": "SFT", "x-seed0": "x"}, sft={"auc": 0.9})
    with pytest.raises(ReportError, match=r"b.json: sft .*a.json"):
        merge_results([("a.json", first), ("b.json", other)])


def test_results_without_per_row_ranks_are_refused_naming_the_file():
    """Without each model's rank on every row, neither the pairing nor the agreement of shared models can be
    checked."""
    old = {k: v for k, v in FIRST.items() if k != "per_row_ranks"}
    with pytest.raises(ReportError, match=r"old.json: .*per_row_ranks"):
        merge_results([("old.json", old)])


def test_the_same_results_twice_or_a_copy_or_one_label_twice_are_refused(tmp_path, capsys):
    a, b = written(tmp_path / "a", FIRST), written(tmp_path / "b", SECOND)
    refused(capsys, run_report(capsys, a, b, a, out=tmp_path / "m"), f"{a / 'results.json'} is given twice")
    copy = written(tmp_path / "copy", FIRST)
    refused(capsys, run_report(capsys, a, copy, out=tmp_path / "m"), f"{copy / 'results.json'} adds no model to "
            f"{a / 'results.json'}", "the same results twice?")
    refused(capsys, run_report(capsys, a, tmp_path / "a" / "results.json", out=tmp_path / "m"), "given twice")
    refused(capsys, run_report(capsys, a, tmp_path / "a" / ".." / "a", out=tmp_path / "m"))  # another spelling
    same_label = results({"sft": SFT, "hano-seed0": DPO}, {"sft": "SFT", "hano-seed0": "DPO (seed 0)"})
    refused(capsys, run_report(capsys, a, written(tmp_path / "c", same_label), out=tmp_path / "m"),
            "two models carry the label 'DPO (seed 0)'")
    refused(capsys, run_report(capsys, a, tmp_path / "absent", out=tmp_path / "m"), "absent", "does not exist")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_the_report_never_overwrites(tmp_path, capsys):
    a, b = written(tmp_path / "a", FIRST), written(tmp_path / "b", SECOND)
    out = tmp_path / "out"
    assert run_report(capsys, a, b, out=out) == 0
    before = snapshot(out)
    assert run_report(capsys, a, b, out=out) == 0  # the same report: done earlier
    assert "done earlier with the same configuration" in capsys.readouterr().out
    refused(capsys, run_report(capsys, a, out=out), f"{out} holds the report stage made from something else",
            "ReportArguments.results")
    (b / "results.json").write_text(json.dumps({**SECOND, "dataset": "toy, evaluated again"}))
    refused(capsys, run_report(capsys, a, b, out=out), "input results[1]")
    assert snapshot(out) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("my own table")
    refused(capsys, run_report(capsys, a, out=mine), f"{mine} exists but", "stage.json")
    assert (mine / "results.md").read_text() == "my own table" and sorted(p.name for p in mine.iterdir()) == [
        "results.md"]


def test_a_runs_evaluations_report_alone_as_in_the_run(tmp_path_factory, tmp_path, capsys):
    """The report stage over a finished run's evaluation folders gives the run's own table; the same evaluation
    given twice under two names is refused."""
    base = finished_run(tmp_path_factory)["run"]
    folders = [base / name for name in ("eval-baselines", "eval-sft", "eval-hano")]
    assert run_report(capsys, *folders, out=tmp_path / "report") == 0
    mine = json.loads((tmp_path / "report" / "results.json").read_text())
    theirs = json.loads((base / "report" / "results.json").read_text())
    for key in ("models", "per_row_ranks", "test_rows", "paired_differences"):
        assert mine[key] == theirs[key], key
    shutil.copytree(base / "eval-hano", tmp_path / "eval-hano-copy")
    refused(capsys, run_report(capsys, *folders, tmp_path / "eval-hano-copy", out=tmp_path / "again"),
            "adds no model")


def test_every_trained_model_is_paired_with_popularity_and_with_the_strongest_full_data_baseline(tmp_path, capsys):
    """The strongest baseline is the full-data fit with the best NDCG@10 on these rows: a data-matched fit or list
    position that ranks better does not take its place."""
    ranks = {"baseline-popularity": POPULARITY, "baseline-item_knn": [1, 1, 2, 2, 1, 2, 2, 2],
             "baseline-markov": [2, 3, 2, 3, 2, 3, 2, 3], "baseline-item_knn-matched": [1] * 8,
             "baseline-position": [1] * 8, "sft": SFT, "dpo-seed0": DPO}
    labels = {"baseline-popularity": "popularity", "baseline-item_knn": "item-kNN", "baseline-markov": "Markov",
              "baseline-item_knn-matched": "item-kNN (data-matched)", "baseline-position": "list position",
              "sft": "SFT", "dpo-seed0": "DPO (seed 0)"}
    assert run_report(capsys, written(tmp_path / "a", results(ranks, labels)), out=tmp_path / "out") == 0
    merged = json.loads((tmp_path / "out" / "results.json").read_text())
    pairs = {(d["model"], d["reference"], d["metric"]): d for d in merged["paired_differences"]}
    assert {ref for _, ref, _ in pairs} == {"baseline-popularity", "baseline-item_knn", "sft"}
    assert pairs[("sft", "baseline-item_knn", "hr@1")]["difference"] == pytest.approx(2 / 8 - 3 / 8)
    assert pairs[("dpo", "baseline-item_knn", "hr@1")]["difference"] == pytest.approx(3 / 8 - 3 / 8)
    assert "| SFT | item-kNN | HR@1 | 8 | -0.1250 |" in (tmp_path / "out" / "results.md").read_text()
