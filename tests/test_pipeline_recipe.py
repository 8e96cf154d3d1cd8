"""Issue 27: the one command per dataset (examples/train_movielens.py runs every stage of a recipe folder, in order)
and several DPO trainings from one SFT model (variants.yaml with DPO seeds), reported together."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pipeline_utils import REPO, finished_run, record, run, write_recipe

from hanorec_trl.pipeline.stage import PARTIAL


@pytest.mark.timeout(1800)
def test_the_default_one_command_run_reports_baselines_sft_and_hanorec_with_its_plots(tmp_path):
    """``python examples/train_movielens.py`` with no arguments but where to write: the embedded tiny recipe
    (synthetic data, a tiny Qwen2.5-VL with the real tokenizer) through every stage. Minutes on 2 CPU cores."""
    root = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "examples" / "train_movielens.py"), "--run_dir", str(root)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"run directory {root}" in done.stdout and "| HaNoRec |" in done.stdout  # the table is shown
    results = json.loads((root / "report" / "results.json").read_text())
    fitted = {f"baseline-{name}{matched}" for name in ("popularity", "markov", "item_knn", "sasrec")
              for matched in ("", "-matched")}  # fitted on all training data and on the LLM's windows only
    assert set(results["models"]) == fitted | {"baseline-random", "baseline-position", "sft", "hano"}
    markdown = (root / "report" / "results.md").read_text()
    for label in ("popularity", "item-kNN", "SASRec", "SFT", "HaNoRec"):
        assert any(line.startswith(f"| {label}") for line in markdown.splitlines()), label
    assert results["disclaimer"] and results["disclaimer"] in markdown  # synthetic data, random weights: said
    for plot in ("paired_differences", "training_dynamics", "title_image_similarity"):
        assert results["plots"][plot] == f"{plot}.png" and (root / "report" / f"{plot}.png").stat().st_size > 1000
        assert f"]({plot}.png)" in markdown
    assert any(d["model"] == "hano" and d["reference"] == "sft" for d in results["paired_differences"])
    assert not list(tmp_path.glob("runs")) and not list(root.glob("*" + PARTIAL))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return finished_run(tmp_path_factory)


def test_two_variants_under_two_dpo_seeds_share_one_hardness_stage_and_the_report_pools_the_seeds(base, tmp_path):
    recipe = write_recipe(tmp_path / "recipe", {"dpo": {"max_steps": 1}})
    (recipe / "variants.yaml").write_text(
        "hano:\n  label: HaNoRec\n"
        "wo_all:\n  label: w/o ALL (DPO)\n  use_hardness: false\n  use_responsiveness: false\n  lora_noise_std: 0.0\n"
        "seeds: [0, 1]\n")
    root = tmp_path / "run"
    assert run("--recipe", recipe, "--run_dir", root, "--reuse_from", base["run"]) == 0
    trainings = [f"{name}-seed{seed}" for name in ("hano", "wo_all") for seed in (0, 1)]
    assert sorted(p.name for p in root.glob("dpo-*")) == sorted(f"dpo-{t}" for t in trainings)
    assert sorted(p.name for p in root.glob("hardness*")) == ["hardness"]
    hardness = record(root / "hardness")
    assert hardness["reused_from"] == str((base["run"] / "hardness").resolve())  # the same SFT model and pairs
    assert hardness["summary"]["reference_logps"] is True  # computed once, in the hardness stage
    inputs = set()
    for training in trainings:
        dpo = record(root / f"dpo-{training}")
        assert dpo["summary"]["reference_logps"] == "shared", training
        inputs.add(json.dumps(dpo["inputs"], sort_keys=True))
        assert dpo["config"]["HaNoDPOConfig.seed"] == int(training[-1])
        assert dpo["config"]["HaNoDPOConfig.use_hardness"] is training.startswith("hano")
    assert len(inputs) == 1  # every training from the one SFT model and the one set of pairs
    results = json.loads((root / "report" / "results.json").read_text())
    assert set(results["models"]) == {"baseline-popularity", "sft", *trainings}
    pooled = [d for d in results["paired_differences"] if d["model"] == "hano" and d["reference"] == "wo_all"]
    assert pooled and all(sorted(d["per_seed"]) == ["0", "1"] for d in pooled)  # seed by seed against the same seed
    markdown = (root / "report" / "results.md").read_text()
    assert "| HaNoRec (mean of 2 seeds) | w/o ALL (DPO) (mean of 2 seeds) | HR@1 |" in markdown
