"""merge_reports / benchmarks/merge_reports.py: one report from runs on the same test rows, paired over all of them."""

import importlib.util
import json
from pathlib import Path

import pytest

from hanorec_trl.pipeline.report import ReportMergeError, merge_reports, merged_markdown

ROOT = Path(__file__).resolve().parents[1]
ROWS = [f"u{i}:3" for i in range(8)]


def report(ranks: dict[str, list[int]], labels: dict[str, str], rows=ROWS) -> dict:
    """A results.json as write_report lays it out: metrics per model, per-row ranks, test rows."""
    models = {name: {"label": labels[name], "hr@1": sum(r == 1 for r in values) / len(values), "ndcg@10": 0.5}
              for name, values in ranks.items()}
    return {"dataset": "toy", "model": "tiny", "test_sequences": len(rows) if rows else None, "models": models,
            "paired_differences": [], "test_rows": rows, "per_row_ranks": ranks}


SFT = [2, 2, 2, 2, 1, 1, 3, 3]
DPO = [1, 2, 2, 2, 1, 1, 3, 3]
FIRST = report({"baseline-popularity": [1, 3, 3, 3, 3, 3, 3, 3], "sft": SFT, "dpo-seed0": DPO},
               {"baseline-popularity": "popularity", "sft": "SFT", "dpo-seed0": "DPO (seed 0)"})
SECOND = report({"baseline-popularity": [1, 3, 3, 3, 3, 3, 3, 3], "sft": SFT, "wo_sam-seed0": [1, 1, 1, 2, 1, 1, 3, 3]},
                {"baseline-popularity": "popularity", "sft": "SFT", "wo_sam-seed0": "w/o SAM (seed 0)"})


def test_a_variant_of_one_run_is_paired_with_plain_dpo_of_another():
    merged = merge_reports([("a.json", FIRST), ("b.json", SECOND)])
    assert list(merged["models"]) == ["baseline-popularity", "sft", "dpo-seed0", "wo_sam-seed0"]
    assert merged["merged_from"] == ["a.json", "b.json"] and merged["test_rows"] == ROWS
    pairs = {(d["model"], d["reference"], d["metric"]): d for d in merged["paired_differences"]}
    wo_sam_vs_dpo = pairs[("wo_sam", "dpo", "hr@1")]  # rows 2 and 3 hit where DPO ranks 2: +2/8
    assert wo_sam_vs_dpo["difference"] == pytest.approx(2 / 8) and wo_sam_vs_dpo["rows"] == 8
    assert pairs[("dpo", "sft", "hr@1")]["difference"] == pytest.approx(1 / 8)
    assert ("wo_sam", "baseline-popularity", "hr@1") in pairs
    markdown = merged_markdown(merged)
    assert "| w/o SAM (1 seed) | DPO (1 seed) | HR@1 | 8 | +0.2500 |" in markdown
    assert "| popularity |" in markdown


def test_runs_that_disagree_on_a_shared_model_or_on_the_rows_are_refused():
    other_sft = report({"sft": [1] * 8, "wo_sam-seed0": [1] * 8}, {"sft": "SFT", "wo_sam-seed0": "w/o SAM"})
    with pytest.raises(ReportMergeError, match=r"b.json: sft ranks the target differently on 6 of 8 test rows"):
        merge_reports([("a.json", FIRST), ("b.json", other_sft)])
    other_rows = report({"sft": SFT}, {"sft": "SFT"}, rows=[f"u{i}:4" for i in range(8)])
    with pytest.raises(ReportMergeError, match="b.json: other test rows than a.json"):
        merge_reports([("a.json", FIRST), ("b.json", other_rows)])
    shorter = report({"sft": SFT[:6]}, {"sft": "SFT"}, rows=None)
    with pytest.raises(ReportMergeError, match="b.json: sft has 6 test rows, 8 in a.json"):
        merge_reports([("a.json", FIRST), ("b.json", shorter)])
    old = {k: v for k, v in FIRST.items() if k != "per_row_ranks"}
    with pytest.raises(ReportMergeError, match="old.json: has no per_row_ranks"):
        merge_reports([("old.json", old)])


def test_the_script_writes_a_report_compare_conditions_reads_and_never_overwrites(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("merge_reports", ROOT / "benchmarks" / "merge_reports.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(FIRST))
    b.write_text(json.dumps(SECOND))
    out = tmp_path / "out" / "merged"
    assert script.main([str(a), str(b), "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert any(d["model"] == "wo_sam" and d["reference"] == "dpo" for d in saved["paired_differences"])
    assert "w/o SAM (1 seed)" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        script.main([str(a), str(b), "--out", str(out)])
    assert f"{out}.json, {out}.md already exist; nothing is overwritten" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main([str(a), str(tmp_path / "none.json"), "--out", str(tmp_path / "x")])
    assert "none.json does not exist" in capsys.readouterr().err

    spec = importlib.util.spec_from_file_location("compare_conditions", ROOT / "benchmarks" / "compare_conditions.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    assert compare.main(["--condition", "hard", str(out.with_suffix(".json")), "--out", str(tmp_path / "c")]) == 0
    assert "w/o SAM (1 seed) [hard] | DPO (1 seed) | HR@1 | 8 | +0.2500" in (tmp_path / "c.md").read_text()
