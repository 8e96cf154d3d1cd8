"""The embedded default end to end (fast settings), resume, an interrupted DPO stage, and extending a run.

One run directory is shared by the tests of this module (they build on each other, in order): the first run takes
~40 s on 2 CPU cores with the tiny tokenizer; the others reuse its finished stages.
"""

import json
import math

import pytest
import torch
from PIL import Image

from hanorec_trl.pipeline import main
from hanorec_trl.pipeline.rundir import MARKER

FAST = [
    "--tokenizer", "tiny", "--synthetic_num_users", "40", "--synthetic_num_items", "60",
    "--max_train_sequences", "8", "--max_test_sequences", "4", "--sft_max_steps", "2", "--dpo_max_steps", "2",
    "--save_steps", "1", "--similarity_items", "12", "--responsiveness_warmup", "0", "--score_permutations", "3",
]
BASELINES = ["baseline-random", "baseline-position", "baseline-popularity", "baseline-markov", "baseline-item_knn"]
STAGES = ["data", "model", "sft", "hardness", "dpo/hano", "eval/sft", "eval/hano"] + [f"eval/{b}" for b in BASELINES]
METRICS = ["hr@1", "hr@3", "ndcg@3", "hr@5", "ndcg@5", "auc", "binary_auc"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(FAST + ["--output_dir", str(root)]) == 0
    return root


def _results(root):
    return json.loads((root / "report" / "results.json").read_text())


def _trained(results):
    return [name for name in results["models"] if not name.startswith("baseline-")]


def _marker_times(root):
    return {s: (root / s / MARKER).stat().st_mtime_ns for s in STAGES}


def test_default_run_produces_results_plots_and_markers(run_dir):
    results = _results(run_dir)
    assert list(results["models"]) == BASELINES + ["sft", "hano"]  # the baselines first, on the same test rows
    for name in ("sft", "hano"):
        metrics = results["models"][name]
        for key in METRICS:
            assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), (name, key)
            assert 0.0 <= metrics[key] <= 1.0
            if key != "binary_auc":  # a 95% interval around every other metric
                low, high = metrics["intervals"][key]
                assert low <= metrics[key] <= high, (name, key)
        # every test sequence is one ranking example (scored in 3 candidate orders) and one AUC row
        assert metrics["num_ranking_rows"] == metrics["num_auc_rows"] == results["test_sequences"] > 0
        assert metrics["num_prompt_rows"] == 3 * results["test_sequences"]
        assert 0.0 <= metrics["position_top_first"] <= 1.0
    for name in BASELINES:
        assert results["models"][name]["num_ranking_rows"] == results["test_sequences"]
    pairs = {(d["model"], d["reference"]) for d in results["paired_differences"]}
    assert pairs == {("sft", "baseline-popularity"), ("hano", "baseline-popularity"), ("hano", "sft")}
    assert "random weights" in results["disclaimer"] and "synthetic data" in results["disclaimer"]
    markdown = (run_dir / "report" / "results.md").read_text()
    assert results["disclaimer"] in markdown and "| HaNoRec |" in markdown and "| SFT |" in markdown
    assert "| popularity |" in markdown and "| item-kNN |" in markdown and "| random (expected) |" in markdown
    assert f"same {results['test_sequences']} test sequences" in markdown and "top = first listed" in markdown
    for name in ("training_dynamics", "title_image_similarity"):
        with Image.open(results["plots"][name]) as image:
            assert image.format == "PNG" and image.size[0] > 500
    for stage in STAGES:
        assert (run_dir / stage / MARKER).is_file(), stage

    # the DPO log history carries HaNoRec's metrics (the dynamics plot reads them)
    history = json.loads((run_dir / "dpo" / "hano" / "log_history.json").read_text())
    steps = [h for h in history if "hano/beta_mean" in h]
    assert len(steps) == 2 and all(h["hano/beta_min"] <= h["hano/beta_mean"] <= h["hano/beta_max"] for h in steps)
    assert all("hano/eta" in h and "hano/lambda_mean" in h for h in steps)
    # the DPO pairs, saved once by the hardness stage, with lambda of every row for both hardness modes, finite and
    # mean-normalised around 1 (Eq. 6); each variant reads its column through HaNoDPOConfig.hardness_column
    from datasets import load_from_disk

    pairs = load_from_disk(str(run_dir / "hardness" / "pairs"))
    assert len(pairs) == 16  # 8 sequences x (ranking + AUC)
    lambdas = {mode: pairs[f"hano_lambda_{mode}"] for mode in ("topk", "pairwise")}
    for mode in ("topk", "pairwise"):
        assert all(0.5 < x < 2.0 for x in lambdas[mode])
        assert len(set(lambdas[mode])) > 1  # per-row hardness, not a constant (0.5 < x < 2 always holds)
    assert lambdas["topk"] != lambdas["pairwise"]
    assert not (run_dir / "hardness" / "lambdas.json").exists()
    # title-image similarities before (SFT) and after (HaNoRec) DPO, on the same items
    before = json.loads((run_dir / "eval" / "sft" / "similarity.json").read_text())
    after = json.loads((run_dir / "eval" / "hano" / "similarity.json").read_text())
    assert before["item_ids"] == after["item_ids"] and len(before["cosine"]) == 12
    assert before["cosine"] != after["cosine"]  # the DPO adapter moved the representations
    # the SFT adapter was merged: the DPO reference (adapters disabled) is the SFT model
    assert (run_dir / "sft" / "merged" / "config.json").is_file()
    assert (run_dir / "sft" / "trainer" / "checkpoint-2").is_dir()
    # SFT computed each distinct poster's features once (docs/fast_path.md)
    cache = json.loads((run_dir / "sft" / MARKER).read_text())["summary"]["vision_cache"]
    assert cache["images"] == cache["misses"] > 0 and cache["hits"] > 0


def test_resume_skips_finished_stages(run_dir, capsys):
    before, times = _results(run_dir), _marker_times(run_dir)
    capsys.readouterr()
    assert main(FAST + ["--output_dir", str(run_dir), "--resume"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"[{stage}] finished earlier: skipped" in out
    assert _marker_times(run_dir) == times
    after = _results(run_dir)
    assert after["models"] == before["models"] and sorted(after["skipped_stages"]) == sorted(STAGES)


def _interrupt_dpo(run_dir):
    """An interruption of the DPO stage: no marker (its unfinished folder is cleared on resume, except the trainer's
    checkpoints), and its evaluation never ran."""
    for path in (run_dir / "dpo" / "hano" / MARKER, run_dir / "eval" / "hano" / MARKER):
        path.unlink()


def _assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_interrupted_dpo_resumes_from_its_last_checkpoint(run_dir, capsys):
    import shutil

    from safetensors.torch import load_file

    before = _results(run_dir)["models"]["hano"]
    adapter_file = run_dir / "dpo" / "hano" / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(adapter_file))
    trainer = run_dir / "dpo" / "hano" / "trainer"
    # interrupted after step 1: training continues from checkpoint-1 and reaches the same weights
    _interrupt_dpo(run_dir)
    shutil.rmtree(trainer / "checkpoint-2")
    capsys.readouterr()
    assert main(FAST + ["--output_dir", str(run_dir), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "[sft] finished earlier: skipped" in out and "[dpo/hano] running" in out
    marker = json.loads((run_dir / "dpo" / "hano" / MARKER).read_text())
    assert marker["summary"]["resumed_from"].endswith("checkpoint-1") and marker["summary"]["steps"] == 2
    resumed = _results(run_dir)["models"]["hano"]
    for key in METRICS:
        assert resumed[key] == pytest.approx(before[key], abs=1e-6), key
    _assert_same_tensors(load_file(str(adapter_file)), weights)  # the metrics alone are too coarse to tell
    # interrupted after the final checkpoint, before the adapter was saved: restored, not trained a step further
    _interrupt_dpo(run_dir)
    assert main(FAST + ["--output_dir", str(run_dir), "--resume"]) == 0
    marker = json.loads((run_dir / "dpo" / "hano" / MARKER).read_text())
    assert marker["summary"]["resumed_from"].endswith("checkpoint-2") and marker["summary"]["steps"] == 2
    assert not (trainer / "checkpoint-3").exists()
    restored = _results(run_dir)["models"]["hano"]
    for key in METRICS:
        assert restored[key] == pytest.approx(before[key], abs=1e-6), key
    _assert_same_tensors(load_file(str(adapter_file)), weights)


def test_resumed_run_refuses_changed_arguments_and_extends_with_plain_dpo(run_dir, capsys):
    # a finished stage's arguments may not change ...
    assert main(FAST + ["--output_dir", str(run_dir), "--resume", "--sft_learning_rate", "0.5"]) == 2
    assert "stage 'sft'" in capsys.readouterr().err
    # ... but a new variant trains from the same SFT model (no hardness needed for plain DPO)
    assert main(FAST + ["--output_dir", str(run_dir), "--resume", "--method", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "[sft] finished earlier: skipped" in out and "[dpo/dpo] running" in out and "[hardness]" not in out
    results = _results(run_dir)
    assert _trained(results) == ["sft", "dpo"]
    history = json.loads((run_dir / "dpo" / "dpo" / "log_history.json").read_text())
    assert not any("hano/beta_mean" in h for h in history)  # plain TRL DPO: HaNoRec's adaptive beta is off
    assert any("loss" in h for h in history)


def test_variants_compare_sft_dpo_and_hano_in_one_table(run_dir, capsys):
    # both variants were trained earlier in this run directory: --variants trains nothing new, it tabulates them
    assert main(FAST + ["--output_dir", str(run_dir), "--resume", "--variants", "dpo", "hano"]) == 0
    out = capsys.readouterr().out
    assert "[dpo/dpo] finished earlier: skipped" in out and "[dpo/hano] finished earlier: skipped" in out
    results = _results(run_dir)
    assert _trained(results) == ["sft", "dpo", "hano"]
    table = (run_dir / "report" / "results.md").read_text().split("\n\nPosition diagnostic")[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["random (expected)", "list position", "popularity", "Markov (last item)", "item-kNN", "SFT",
                        "DPO", "HaNoRec"], table
    # ... with HaNoRec paired against both SFT and plain DPO on the same test rows
    pairs = {(d["model"], d["reference"]) for d in results["paired_differences"]}
    assert pairs == {("dpo", "sft"), ("hano", "sft"), ("hano", "dpo")} | {
        (name, "baseline-popularity") for name in ("sft", "dpo", "hano")}
    assert all(d["rows"] == results["test_sequences"] for d in results["paired_differences"])
