"""The experiment's pipeline settings end to end on a tiny text model: the next-item task, hard rejected items from the
SFT model's item embeddings, an empty system prompt, the learning curve with its baselines, and sliding windows."""

import json

import numpy as np
import pytest
from PIL import Image

from hanorec_trl.pipeline import main
from hanorec_trl.pipeline.arguments import PipelineConfigError
from hanorec_trl.pipeline.command_line import parse_args
from hanorec_trl.pipeline.rundir import MARKER

ARGS = [
    "--model", "tiny-qwen2", "--tokenizer", "tiny", "--synthetic_num_users", "40", "--synthetic_num_items", "60",
    "--max_train_sequences", "6", "--max_test_sequences", "3", "--sft_max_steps", "2", "--dpo_max_steps", "1",
    "--save_steps", "1", "--responsiveness_warmup", "0", "--method", "dpo",
    "--sft_task", "next_item+auc", "--dpo_task", "next_item", "--rejected", "hard", "--num_rejected", "2",
    "--system_prompt", "", "--curve_steps", "1", "--curve_examples", "3",
    "--sliding_windows", "--max_windows_per_user", "3", "--split_by", "user",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment") / "run"
    assert main(ARGS + ["--output_dir", str(root)]) == 0
    return root


def _json(path):
    return json.loads(path.read_text())


def test_next_item_evaluation_and_learning_curve(run_dir):
    results = _json(run_dir / "report" / "results.json")
    sft = results["models"]["sft"]
    # next-item prompt: one prompt per test example, no list, nothing to permute
    assert sft["num_prompt_rows"] == sft["num_ranking_rows"] == results["test_sequences"]
    # the empty system prompt reached every stage that builds prompts
    for stage in ("sft", "dpo/dpo", "eval/sft"):
        assert _json(run_dir / stage / MARKER)["inputs"]["system_prompt"] == "", stage
    curve = _json(run_dir / "sft" / "learning_curve.json")
    assert [p["step"] for p in curve["points"]] == [0, 1, 2]  # before SFT, every step, the end
    assert curve["examples"] == 3 and set(curve["baselines"]) == {"random", "popularity", "item_knn"}
    assert all(0.0 <= p["hr@1"] <= 1.0 for p in curve["points"])
    with Image.open(results["plots"]["learning_curve"]) as image:
        assert image.format == "PNG"


def test_hard_rejected_items_are_the_nearest_negatives(run_dir):
    saved = np.load(run_dir / "hardness" / "item_embeddings.npz")
    rows = {str(item): k for k, item in enumerate(saved["item_ids"].tolist())}
    from hanorec_trl.hardness import HardnessIndex

    index = HardnessIndex(saved["text"], saved["image"])
    from datasets import load_from_disk

    pairs = load_from_disk(str(run_dir / "hardness" / "pairs")).to_dict()
    split = [json.loads(line) for line in (run_dir / "data" / "split" / "train.jsonl").read_text().splitlines()]
    by_id = {ex["sequence_id"]: ex for ex in split}
    assert set(pairs["task"]) == {"next_item"} and len(pairs["sequence_id"]) == 2 * 6
    for k in range(0, len(pairs["sequence_id"]), 2):
        ex = by_id[pairs["sequence_id"][k]]
        negatives = [c for c in ex["candidates"] if c != ex["target"]]
        vectors = index.embeddings([rows[ex["target"]]] + [rows[n] for n in negatives])
        nearest = [negatives[j] for j in np.argsort(-(vectors[1:] @ vectors[0]), kind="stable")[:2]]
        assert pairs["rejected_item"][k : k + 2] == nearest


def test_sliding_windows_split_by_user(run_dir):
    split_dir = run_dir / "data" / "split"
    parts = {name: [json.loads(line) for line in (split_dir / f"{name}.jsonl").read_text().splitlines()]
             for name in ("train", "validation", "test")}
    users = {name: {ex["user"] for ex in examples} for name, examples in parts.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["validation"]
    per_user = {}
    for ex in parts["train"]:
        per_user[ex["user"]] = per_user.get(ex["user"], 0) + 1
    assert max(per_user.values()) == 3  # several windows per user, at most --max_windows_per_user


def test_argument_checks_of_the_new_options():
    with pytest.raises(PipelineConfigError, match="--protocol.sft_task"):
        parse_args(["--sft_task", "next"])
    with pytest.raises(PipelineConfigError, match="--protocol.max_windows_per_user needs --protocol.sliding_windows"):
        parse_args(["--max_windows_per_user", "2"])
    with pytest.raises(PipelineConfigError, match="--evaluation.score_permutations"):
        parse_args(["--score_permutations", "0"])
    with pytest.raises(PipelineConfigError, match="--evaluation.baselines none excludes"):
        parse_args(["--baselines", "none", "popularity"])
    assert parse_args(["--sft_task", "next_item+auc"]).evaluation_prompt() == "next_item"
    assert parse_args([]).evaluation_prompt() == "list"
    assert parse_args(["--baselines", "none"]).baseline_names() == []
