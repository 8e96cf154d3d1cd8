"""Collaborative item tokens through the pipeline (issue 29): the data stage names items by token and writes the CF
vectors, the SFT stage installs a variant and bakes it into the merged model, the hardness stage can take lambda from
the CF space, DPO trains on token answers, and the evaluation scores one token per candidate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_utils import refused, run, write_recipe

TOKENS = {"data": {"images": False, "item_naming": "both", "answer_naming": "token", "sft_task": "next_item",
                   "dpo_task": "next_item", "cf_method": "svd", "cf_dim": 16},
          "sft": {"model_name_or_path": "tiny-qwen2"}}


def recipe_with(tmp_path, variant: str, **overrides):
    stages = {**TOKENS, "sft": {**TOKENS["sft"], "item_tokens": variant}, **overrides}
    return write_recipe(tmp_path / "recipe", stages)


def merged_and_saved_scores(root):
    """First-token scores of the evaluation rows by the merged SFT model, and by the base model with the saved item
    tokens and adapter installed (what the merge must preserve)."""
    from datasets import load_from_disk

    from hanorec_trl.evaluation.scoring import score_first_tokens
    from hanorec_trl.item_tokens import load_item_token_model
    from hanorec_trl.models import load_model, load_tokenizer
    from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer

    class Loading:
        dtype, attn_implementation = "float32", "sdpa"

    rows = load_from_disk(str(root / "data" / "eval_ranking"))
    merged_path = root / "sft" / "merged"
    merged, merged_tokenizer = load_model(merged_path, Loading()), load_tokenizer(merged_path)
    tokenizer = tiny_tokenizer()
    saved, _ = load_item_token_model(tiny_qwen2(tokenizer), tokenizer, root / "sft" / "adapter")
    scores = [score_first_tokens(model, tok, rows["prompt"], rows["candidates"], progress=False)
              for model, tok in ((merged, merged_tokenizer), (saved, tokenizer))]
    return [np.stack(s) for s in scores], merged_tokenizer


def test_trainable_item_tokens_train_sft_and_dpo_and_score_one_token_per_candidate(tmp_path):
    from hanorec_trl.scripts.data import load_prepared

    root = tmp_path / "run"
    recipe = recipe_with(tmp_path, "trainable", hardness={"hardness_k": 4, "hardness_space": "cf"})
    assert run("--recipe", recipe, "--run_dir", root) == 0
    prepared = load_prepared(root / "data")
    row = prepared.dataset("sft")[0]
    assert row["completion"][0]["content"].startswith("<item_")  # answers are item tokens
    (merged, saved), tokenizer = merged_and_saved_scores(root)
    vocab = tokenizer.get_vocab()
    assert all(f"<item_{i}>" in vocab for i in prepared.data.item_ids)
    np.testing.assert_allclose(merged, saved, atol=1e-5)  # the bake kept the trained item rows
    assert not np.allclose(merged, merged[:, :1])  # the candidates' scores differ
    for name in ("sft", "hano"):
        metrics = json.loads((root / f"eval-{name}" / "metrics" / f"{name}.json").read_text())
        assert metrics["config"]["candidate_score"] == "first_token"
        assert metrics["metrics"]["num_ranking_rows"] == len(prepared.test_examples) > 0
    # lambda from the CF space: the encoded item vectors are the data stage's CF vectors
    encoded = np.load(root / "hardness" / "item_embeddings.npz", allow_pickle=True)
    table, known = prepared.cf.lookup([str(i) for i in encoded["item_ids"]])
    warm = known & (np.linalg.norm(table, axis=1) > 0)
    text = encoded["text"][warm]
    cosine = (text * table[warm]).sum(1) / np.linalg.norm(text, axis=1) / np.linalg.norm(table[warm], axis=1)
    assert warm.sum() > 10 and np.allclose(cosine, 1.0, atol=1e-5)


def test_soft_item_tokens_merge_into_a_plain_model_that_scores_as_the_saved_adapter_and_trains_dpo(tmp_path):
    root = tmp_path / "run"
    recipe = recipe_with(tmp_path, "soft", hardness={"hardness_k": 4})
    assert run("--recipe", recipe, "--run_dir", root) == 0
    (merged, saved), _ = merged_and_saved_scores(root)
    np.testing.assert_allclose(merged, saved, atol=1e-5)
    assert not np.allclose(merged, merged[:, :1])
    sft, hano = (json.loads((root / f"eval-{name}" / "metrics" / f"{name}.json").read_text())
                 for name in ("sft", "hano"))
    assert hano["config"]["candidate_score"] == "first_token"
    scores = [np.asarray(m["per_row"]["ranking"]["scores"]) for m in (sft, hano)]
    assert scores[0].shape == scores[1].shape and not np.allclose(*scores)  # HaNo DPO on the baked tokens trained


@pytest.mark.parametrize("data, sft", [({"images": False}, {"model_name_or_path": "tiny-qwen2",
                                                            "item_tokens": "trainable"}),
                                       (TOKENS["data"], TOKENS["sft"])])
def test_item_tokens_and_data_named_by_token_need_each_other(tmp_path, capsys, data, sft):
    recipe = write_recipe(tmp_path / "recipe", {"data": data, "sft": sft, "dpo": None, "hardness": None})
    refused(capsys, run("--recipe", recipe, "--run_dir", tmp_path / "run"), "item_tokens")


@pytest.mark.parametrize("data, hardness, fragments", [
    ({**TOKENS["data"], "cf_method": None}, {}, ("cf_method",)),  # item tokens without CF vectors
    ({**TOKENS["data"], "cf_dim": 500}, {}, ("cf_dim 500", "items")),  # more dimensions than items
    ({"images": False}, {"hardness_space": "cf"}, ("no CF item vectors", "cf_method")),  # CF lambda without them
])
def test_missing_or_impossible_cf_vectors_are_refused_naming_the_field(tmp_path, capsys, data, hardness, fragments):
    sft = TOKENS["sft"] if "item_naming" in data else {"model_name_or_path": "tiny-qwen2"}
    sft = {**sft, "item_tokens": "trainable"} if "item_naming" in data else sft
    recipe = write_recipe(tmp_path / "recipe", {"data": data, "sft": sft, "hardness": {"hardness_k": 4, **hardness}})
    refused(capsys, run("--recipe", recipe, "--run_dir", tmp_path / "run"), *fragments)
