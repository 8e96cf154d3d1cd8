"""The synthetic testbed script (benchmarks/testbed.py) on a micro configuration: structure only, no quality claims."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def testbed():
    spec = importlib.util.spec_from_file_location("testbed", ROOT / "benchmarks" / "testbed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["testbed"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


MICRO = dict(num_users=120, num_items=60, max_interactions=30, vocab_size=400, hidden_size=32, sft_steps=3,
             sft_batch_size=8, dpo_examples=16, dpo_steps=2, dpo_batch_size=4, eval_batch_size=8,
             bootstrap_resamples=200)


@pytest.fixture(scope="module")
def micro_run(testbed, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("testbed")
    cfg = testbed.TestbedConfig(**MICRO)
    out = tmp / "testbed.json"
    result = testbed.run_testbed(cfg, [0], out, tmp / "testbed.png", tmp / "work", command="test", progress=False,
                                 log=lambda *_: None)
    return testbed, cfg, out, tmp, result


def test_every_variant_is_evaluated_on_the_same_rows(micro_run):
    testbed, cfg, out, tmp, result = micro_run
    saved = json.loads(out.read_text())
    assert saved["config"] == cfg.key() and [r["seed"] for r in saved["seeds"]] == [0]
    assert (tmp / "testbed.png").is_file()
    record = saved["seeds"][0]
    models = {"sft", *(f"{v}-{r}" for v in testbed.VARIANTS for r in testbed.REJECTED)}
    for set_name in testbed.TEST_SETS:
        evaluated = record["eval"][set_name]
        assert models | {"random", "popularity", "markov", "item_knn"} <= set(evaluated)
        lengths = {len(evaluated[m]["ranks"]) for m in evaluated if m != "random"}
        assert lengths == {record["data"]["test_rows"]}
        for m in models:
            assert set(evaluated[m]["metrics"]) >= {"hr@1", "ndcg@10"}
    for name in models - {"sft"}:
        assert record["dpo"][name]["steps"] == cfg.dpo_steps
        # the trained weights are what is scored (a deep copy of a TRL-patched model would score the SFT weights)
        scores = json.loads((tmp / "work" / "seed-0" / "eval" / "test" / f"{name}.json").read_text())
        sft_scores = json.loads((tmp / "work" / "seed-0" / "eval" / "test" / "sft.json").read_text())
        assert not np.allclose(scores["per_row"]["ranking"]["scores"], sft_scores["per_row"]["ranking"]["scores"])
    assert record["dpo"]["dpo-random"]["use_hardness"] is False and record["dpo"]["hano-hard"]["noise"] is True
    # the same users in both test sets, the hard set's negatives at least as similar to the target as the uniform ones
    similarity = {kind: record["hardness"][kind]["true_similarity"]["mean"] for kind in ("hard", "random")}
    assert similarity["hard"] > similarity["random"]


def test_paired_differences_per_seed_and_pooled(micro_run):
    testbed, cfg, out, tmp, result = micro_run
    record = result["seeds"][0]
    for set_name in testbed.TEST_SETS:
        evaluated = record["eval"][set_name]
        comparisons = [name for name, model, ref in testbed.COMPARISONS if model in evaluated and ref in evaluated]
        optional = [name for name, model, ref in testbed.COMPARISONS
                    if any(part.startswith(testbed.OPTIONAL_VARIANTS) for part in (model, ref))]
        assert len(optional) == 3 * len(testbed.REJECTED)  # w/o SAM vs DPO and vs HaNoRec, the reseeded control
        assert len(comparisons) == len(testbed.COMPARISONS) - len(optional)  # all but the optional variants
        for name in comparisons:
            for metric in testbed.METRICS:
                entry = record["paired"][set_name][name][metric]
                assert set(entry) == {"difference", "low", "high", "p_not_better"}
                assert entry["low"] <= entry["difference"] <= entry["high"]
                pooled = result["pooled"][set_name]["differences"][name][metric]
                assert pooled["rows"] == record["data"]["test_rows"]
                assert np.isclose(pooled["per_seed"][0], entry["difference"])
    table = testbed.markdown_tables(result)
    assert "hano-random vs dpo-random" in table and "test_hard" in table


def test_resume_skips_finished_seeds(micro_run):
    testbed, cfg, out, tmp, result = micro_run
    again = testbed.run_testbed(cfg, [0], out, None, tmp / "work", progress=False, log=lambda *_: None)
    assert [r["seed"] for r in again["seeds"]] == [0]
    assert again["seeds"][0]["wall_seconds"] == result["seeds"][0]["wall_seconds"]


def test_hard_examples_pick_the_most_similar_unwatched_items(testbed, tmp_path):
    from hanorec_trl.data import ProtocolConfig, build_split, load_movielens_1m, write_synthetic_movielens

    cfg = testbed.TestbedConfig(**MICRO)
    syn = testbed.synthetic_config(cfg, 3)
    write_synthetic_movielens(tmp_path / "data", syn)
    data = load_movielens_1m(tmp_path / "data", images=False)
    truth = testbed.GroundTruth(data, syn)
    split = build_split(data, ProtocolConfig(seed=3))
    hard = testbed.hard_examples(split.test, data, truth, 3, "t")
    for ex, h in zip(split.test, hard):
        assert h.target == ex.target and h.candidates[h.target_index] == h.target and len(h.candidates) == 10
        negatives = [c for c in h.candidates if c != h.target]
        assert not set(negatives) & data.interacted(ex.user)
        sim = truth.similarity_to(h.target)
        allowed = np.asarray([truth.rows[i] not in {truth.rows[j] for j in data.interacted(ex.user)}
                              for i in truth.item_ids])
        best_left = np.sort(sim[allowed])[::-1]
        chosen = np.sort(truth.similarity(h.target, negatives))[::-1]
        assert np.allclose(chosen, best_left[: len(chosen)])


def test_wo_sam_reads_the_pairwise_lambda_and_the_sft_term_enters_the_loss(micro_run):
    """--variants ... wo_sam trains on the pairwise lambda; --dpo_sft_weight adds TRL's SFT loss to every variant."""
    testbed, _, _, tmp, result = micro_run
    cfg = testbed.TestbedConfig(**{**MICRO, "variants": ("dpo", "wo_sam"), "rejected": ("random",),
                                   "dpo_sft_weight": 1.0})
    assert cfg.key()["dpo_sft_weight"] == 1.0 and "dpo_sft_weight" not in testbed.TestbedConfig(**MICRO).key()
    record = testbed.run_seed(0, cfg, tmp / "work-sam", progress=False, log=lambda *_: None)
    wo_sam = record["dpo"]["wo_sam-random"]
    assert wo_sam["hardness_mode"] == "pairwise" and wo_sam["use_hardness"]
    # the pairwise lambda is another column than the Top-K one the plain run trained HaNoRec on
    plain = json.loads((tmp / "testbed.json").read_text())["seeds"][0]["dpo"]["dpo-random"]
    assert plain["train_loss"] < 0.9 < record["dpo"]["dpo-random"]["train_loss"]  # + the chosen title's NLL
    assert "wo_sam-random vs dpo-random" in record["paired"]["test"]


def test_jobs_run_seeds_in_parallel_processes_with_the_same_results(testbed, tmp_path, monkeypatch):
    """--jobs 2: two seeds at once in spawned workers; each seed's record equals the one run in this process."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the workers import the script as module "testbed"
    cfg = testbed.TestbedConfig(**{**MICRO, "variants": ("dpo",), "rejected": ("random",)})
    out = tmp_path / "testbed.json"
    result = testbed.run_testbed(cfg, [1, 2], out, None, tmp_path / "work", progress=False, log=lambda *_: None,
                                 jobs=2, threads=1)
    saved = json.loads(out.read_text())
    assert [r["seed"] for r in saved["seeds"]] == [1, 2] and saved["pooled"]["seeds"] == [1, 2]
    import torch

    torch.set_num_threads(1)  # as in the workers
    torch.manual_seed(2)
    here = testbed.run_seed(2, cfg, tmp_path / "work-here", progress=False, log=lambda *_: None)
    parallel = result["seeds"][1]
    for name in ("sft", "dpo-random"):
        assert parallel["eval"]["test"][name]["ranks"] == here["eval"]["test"][name]["ranks"]
