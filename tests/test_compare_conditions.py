"""benchmarks/compare_conditions.py: the paired differences of several runs side by side, from their reports."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("compare_conditions", ROOT / "benchmarks" / "compare_conditions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(tmp_path, name, hano_minus_dpo, seeds=(0, 1)):
    """A report of a run with DPO and HaNoRec under ``seeds`` (as write_report lays it out)."""
    models = {"sft": {"label": "SFT"}}
    for variant, label in (("dpo", "DPO"), ("hano", "HaNoRec")):
        for seed in seeds:
            models[f"{variant}-seed{seed}"] = {"label": f"{label} (seed {seed})"}
    differences = [
        {"model": "hano", "reference": "dpo", "metric": "hr@1", "rows": 30, "difference": hano_minus_dpo,
         "low": hano_minus_dpo - 0.1, "high": hano_minus_dpo + 0.1, "p_not_better": 0.4,
         "per_seed": {str(seed): hano_minus_dpo + 0.02 * i - 0.01 for i, seed in enumerate(seeds)}},
        {"model": "hano", "reference": "sft", "metric": "hr@1", "rows": 30, "difference": 0.5, "low": 0.4,
         "high": 0.6, "p_not_better": 0.0},
    ]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"models": models, "paired_differences": differences}))
    return path


def test_conditions_are_tabulated_and_plotted_against_the_reference(script, tmp_path, capsys):
    first, second = report(tmp_path, "tau1", 0.02), report(tmp_path, "tau01", -0.03)
    out = tmp_path / "out" / "conditions"
    assert script.main(["--condition", "tau 1", str(first), "--condition", "tau 0.1", str(second),
                        "--out", str(out)]) == 0
    table = out.with_suffix(".md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| HaNoRec")]
    assert len(rows) == 2  # only the differences against DPO, one per condition
    assert "HaNoRec (mean of 2 seeds) [tau 1] | DPO (mean of 2 seeds) | HR@1 | 30 | +0.0200" in rows[0]
    assert "[tau 0.1]" in rows[1] and "-0.0300" in rows[1] and "-0.040 (seed 0) / -0.020 (seed 1)" in rows[1]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [d["condition"] for d in saved["differences"]] == ["tau 1", "tau 0.1"]
    assert out.with_suffix(".png").stat().st_size > 0
    # against SFT instead (another --out: the first outputs are never overwritten)
    against_sft = tmp_path / "out" / "against_sft"
    assert script.main(["--condition", "tau 1", str(first), "--reference", "sft", "--out", str(against_sft)]) == 0
    assert "| SFT | HR@1 | 30 | +0.5000" in against_sft.with_suffix(".md").read_text()


def test_a_missing_or_foreign_report_is_named(script, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        script.main(["--condition", "tau 1", str(tmp_path / "none.json"), "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "none.json does not exist" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit):
        script.main(["--condition", "tau 1", str(tmp_path / "other.json"), "--out", str(tmp_path / "x")])
    assert "other.json is not evaluation results (no 'models')" in capsys.readouterr().err  # scripts/report.py
    first = report(tmp_path, "tau1", 0.02)
    with pytest.raises(SystemExit):
        script.main(["--condition", "tau 1", str(first), "--reference", "wo_all", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "has no paired differences against 'wo_all'" in err and "no run has paired differences" in err


def test_each_condition_keeps_the_label_of_its_own_reference(script, tmp_path):
    """A run with three DPO seeds beside a run with one: each row names the reference of its own run."""
    three, one = report(tmp_path, "tau1", 0.01, seeds=(0, 1, 2)), report(tmp_path, "hard", 0.02, seeds=(0,))
    out = tmp_path / "conditions"
    assert script.main(["--condition", "random", str(three), "--condition", "hard", str(one), "--out", str(out)]) == 0
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| HaNoRec")]
    assert "[random] | DPO (mean of 3 seeds) |" in rows[0] and "[hard] | DPO (1 seed) |" in rows[1]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [d["reference_model"] for d in saved["differences"]] == ["dpo", "dpo"]
