"""Issue 14 item 2: the hardness -> DPO hand-off as a dataset, and reference log-probs shared by the variants."""

import json
import shutil

import numpy as np
from datasets import load_from_disk

from hanorec_trl.pipeline import main
from hanorec_trl.trainer import HaNoDPOTrainer

FAST = [
    "--run.tokenizer", "tiny", "--data.synthetic_num_users", "40", "--data.synthetic_num_items", "60",
    "--protocol.max_train_sequences", "8", "--protocol.max_test_sequences", "4", "--sft.max_steps", "2",
    "--dpo.max_steps", "2", "--sft.save_steps", "1", "--dpo.save_steps", "1", "--evaluation.similarity_items", "0",
    "--dpo.responsiveness_warmup", "0", "--evaluation.score_permutations", "2", "--evaluation.baselines", "none",
    "--run.variants", "hano", "wo_nodo",
]


def _count_reference_passes(monkeypatch) -> list[int]:
    """Rows of each reference pass the trainers run (a dataset that carries the columns already is not one)."""
    passes: list[int] = []
    original = HaNoDPOTrainer._with_reference_logps

    def counting(self, dataset, name):
        if "ref_chosen_logps" not in dataset.column_names:
            passes.append(len(dataset))
        return original(self, dataset, name)

    monkeypatch.setattr(HaNoDPOTrainer, "_with_reference_logps", counting)
    return passes


def _first_loss(run_dir, variant):
    history = json.loads((run_dir / "dpo" / variant / "log_history.json").read_text())
    return next(h["loss"] for h in history if "loss" in h)


def test_pairs_saved_once_and_reference_logps_shared_by_the_next_variant(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    passes = _count_reference_passes(monkeypatch)
    assert main(FAST + ["--run.run_dir", str(run_dir)]) == 0
    # one pair set, saved by the hardness stage with a lambda column per mode; no lambdas.json re-attach
    pairs = load_from_disk(str(run_dir / "hardness" / "pairs"))
    assert {"hano_lambda_topk", "hano_lambda_pairwise", "prompt", "chosen", "rejected"} <= set(pairs.column_names)
    summaries = {v: json.loads((run_dir / "dpo" / v / "STAGE_DONE.json").read_text())["summary"]
                 for v in ("hano", "wo_nodo")}
    # the first variant computed the reference log-probs, the second one took them: one pass over the pairs
    assert passes == [len(pairs)]
    assert summaries["hano"]["reference_logps"] == "computed"
    assert summaries["wo_nodo"]["reference_logps"] == "shared"
    (shared,) = (run_dir / "dpo" / "reference").glob("*.npz")
    shared_values = {k: np.load(shared)[k] for k in ("ref_chosen_logps", "ref_rejected_logps")}
    shared_loss = _first_loss(run_dir, "wo_nodo")

    # the second variant again, computing its own reference log-probs: the same values, the same loss at step 1
    shutil.rmtree(run_dir / "dpo" / "wo_nodo")
    shutil.rmtree(run_dir / "dpo" / "reference")
    passes.clear()
    assert main(FAST + ["--run.run_dir", str(run_dir), "--run.resume"]) == 0
    assert passes == [len(pairs)]  # hano was finished (skipped); wo_nodo computed its own
    summary = json.loads((run_dir / "dpo" / "wo_nodo" / "STAGE_DONE.json").read_text())["summary"]
    assert summary["reference_logps"] == "computed"
    (own,) = (run_dir / "dpo" / "reference").glob("*.npz")
    assert own.name == shared.name
    for key, values in shared_values.items():
        np.testing.assert_array_equal(np.load(own)[key], values)
    assert _first_loss(run_dir, "wo_nodo") == shared_loss


def test_dpo_seeds_train_each_variant_per_seed_on_one_reference_pass_and_report_the_mean(tmp_path, monkeypatch):
    """--run.dpo_seeds: one training per seed (recorded, other noise draws), one reference pass shared by all of
    them, and the report pairs the per-row mean over the seeds with SFT."""
    run_dir = tmp_path / "run"
    passes = _count_reference_passes(monkeypatch)
    argv = FAST[: FAST.index("--run.variants")] + ["--run.variants", "hano", "--run.dpo_seeds", "3", "4",
                                                   "--protocol.max_dpo_pairs", "5"]
    assert main(argv + ["--run.run_dir", str(run_dir)]) == 0
    done = {s: json.loads((run_dir / "dpo" / f"hano-seed{s}" / "STAGE_DONE.json").read_text()) for s in (3, 4)}
    assert [done[s]["inputs"]["dpo_seed"] for s in (3, 4)] == [3, 4]
    assert done[3]["inputs"]["max_dpo_pairs"] == 5 and passes == [5]  # the reference pass covers the sample only
    assert len(load_from_disk(str(run_dir / "hardness" / "pairs"))) > 5
    assert [done[s]["summary"]["reference_logps"] for s in (3, 4)] == ["computed", "shared"]
    assert len(passes) == 1
    assert _first_loss(run_dir, "hano-seed3") != _first_loss(run_dir, "hano-seed4")  # other LoRA noise draws
    results = json.loads((run_dir / "report" / "results.json").read_text())
    assert list(results["models"])[-2:] == ["hano-seed3", "hano-seed4"]
    pooled = [d for d in results["paired_differences"] if d["model"] == "hano"]
    assert {d["reference"] for d in pooled} == {"sft"} and len(pooled) == 2
    assert not any(d["model"].startswith("hano-seed") for d in results["paired_differences"])
    assert "HaNoRec (mean of 2 seeds)" in (run_dir / "report" / "results.md").read_text()
