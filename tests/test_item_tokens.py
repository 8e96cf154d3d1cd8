"""Collaborative item tokens, both variants, through everything a user runs: install, TRL's SFTTrainer (with
LLaRA's curriculum), TRL's DPOTrainer and HaNoDPOTrainer (exact parity with HaNo off, fast path too), scoring
(one-token log-probs, the whole catalogue), generation, and save/load with the adapter."""

from __future__ import annotations

import json
import math
import shutil
import types

import numpy as np
import pytest
import torch
from item_token_utils import VARIANT_NAMES, lora, make_variant, peft_model, small_world, tiny_model_with_items
from safetensors.torch import load_file, save_file
from trainer_utils import COMMON, first_batch
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer
from hanorec_trl.data import build_dpo_dataset, build_ranking_eval_dataset, build_sft_dataset
from hanorec_trl.data.prompts import item_templates
from hanorec_trl.evaluation import RecEvalConfig, evaluate_recommender
from hanorec_trl.evaluation.generation import generate_answers, generation_ranks
from hanorec_trl.evaluation.scoring import score_candidates, score_first_tokens
from hanorec_trl.item_tokens import (
    ItemTokenCurriculum,
    catalogue_log_probs,
    find_item_tokens,
    load_item_token_model,
    soft_item_embedding,
)
from hanorec_trl.testing import tiny_qwen2_5_vl, tiny_vl_processor

TOKEN_ANSWERS = item_templates("both", answer="token")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("items") / "data")


def _sft_rows(world, n=16, templates=TOKEN_ANSWERS):
    data, split, _, vocab = world
    return build_sft_dataset(split.train[:n], data, with_images=False, item_tokens=vocab, templates=templates)


def _eval_rows(world, n=4, templates=TOKEN_ANSWERS, with_images=False):
    data, split, _, vocab = world
    return build_ranking_eval_dataset(split.test[:n], data, with_images=with_images, item_tokens=vocab,
                                      templates=templates, permutations=1)


def _sft(model, tokenizer, items, rows, out, steps=4, callbacks=None, lr=2e-2):
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", learning_rate=lr, logging_steps=1, disable_tqdm=True,
                     seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                         peft_config=lora(model, items), callbacks=callbacks)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """``trained(name)``: ``(trainer, tokenizer, items, scores before SFT, saved folder)`` of one SFT run per variant
    (4 steps on token answers, trained once per module and saved with ``items.save``). Tests that change a model
    reload it from the folder (:func:`_reloaded`): a deep copy would keep calling the original, since TRL's fused LM
    head patches ``forward`` on the instance."""
    runs = {}

    def get(name):
        if name not in runs:
            data, _, cf, vocab = world
            model, tokenizer, items = tiny_model_with_items(name, data, cf, vocab)
            before = _first_token_scores(model, tokenizer, _eval_rows(world))
            folder = tmp_path_factory.mktemp(name)
            trainer = _sft(model, tokenizer, items, _sft_rows(world, n=32), folder / "run", steps=4, lr=5e-2)
            trainer.save_model(str(folder / "saved"))
            items.save(folder / "saved")
            runs[name] = (trainer, tokenizer, items, before, folder / "saved")
        return runs[name]

    return get


def _reloaded(folder):
    """``(PeftModel, tokenizer, items)`` loaded from a saved adapter onto a fresh tiny model."""
    from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model, items = load_item_token_model(tiny_qwen2(tokenizer), tokenizer, folder)
    return model, tokenizer, items


def _first_token_scores(model, tokenizer, rows):
    return np.stack(score_first_tokens(model, tokenizer, rows["prompt"], rows["candidates"], progress=False))


def _variant_parameters(model) -> dict[str, torch.Tensor]:
    """What the variant trains: the projector's (soft) or the item rows' (trainable) parameters."""
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if p.requires_grad and "lora_" not in n}


# ------------------------------------------------------------------------------------------------------- install
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_install_adds_one_token_per_item_with_collaborative_rows(world, name):
    data, _, cf, vocab = world
    model, tokenizer, items = tiny_model_with_items(name, data, cf, vocab)
    ids = items.token_ids
    assert len(ids) == len(vocab) == data.num_items and len(set(ids)) == len(ids)
    assert all(tokenizer(vocab[i], add_special_tokens=False)["input_ids"] == [t] for i, t in zip(vocab, ids))
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # each item's input vector is its own: they differ between items and follow the CF geometry
    x = torch.tensor([ids])
    with torch.no_grad():
        rows = model.get_input_embeddings()(x)[0].float()
    assert torch.cdist(rows, rows).add(torch.eye(len(ids)) * 1e9).min() > 0
    seen = [k for k, i in enumerate(vocab.item_ids) if i in cf.rows]
    cf_gram = torch.from_numpy(cf.lookup([vocab.item_ids[k] for k in seen])[0]).double()
    cf_sim = torch.corrcoef(cf_gram)[np.triu_indices(len(seen), 1)]
    lm_sim = torch.corrcoef(rows[seen].double())[np.triu_indices(len(seen), 1)]
    assert torch.corrcoef(torch.stack([cf_sim, lm_sim]))[0, 1] > 0.3
    # the output rows of the item tokens are the same vectors (tied)
    with torch.no_grad():
        torch.testing.assert_close(model.get_output_embeddings().weight[ids], rows)
    with pytest.raises(ValueError, match="already has item tokens"):
        items.install(model, tokenizer)


# ---------------------------------------------------------------------------------------------------------- SFT
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_sft_trains_the_variant_and_lora(world, trained, name):
    trainer, tokenizer, items, before, _ = trained(name)
    rows = _eval_rows(world)
    trained = _variant_parameters(trainer.model)
    expected = "item_projector.modules_to_save" if name == "soft" else "trainable_tokens_delta"
    assert trained and all(expected in n for n in trained), sorted(trained)
    peft = trainer.model
    if name == "soft":
        projector = soft_item_embedding(peft).item_projector
        initial = dict(projector.original_module.named_parameters())
        changed = [n for n, p in projector.modules_to_save["default"].named_parameters()
                   if not torch.equal(p, initial[n])]
        assert changed == [n for n, _ in projector.modules_to_save["default"].named_parameters()]
    else:
        adapter = peft.get_input_embeddings().token_adapter
        assert not torch.equal(adapter.trainable_tokens_delta["default"], adapter.trainable_tokens_original["default"])
        # the head's item rows follow the trained input rows, with the adapter on and off
        for context in (torch.enable_grad, peft.disable_adapter):
            with context(), torch.no_grad():
                head, embed = peft.get_output_embeddings().weight, peft.get_input_embeddings().weight
                torch.testing.assert_close(head[items.token_ids], embed[items.token_ids], rtol=0, atol=0)
    after = _first_token_scores(trainer.model, tokenizer, rows)
    assert np.abs(after - before).max() > 1e-3
    # with the variant's parameters put back to their start, the trained model scores differently: they matter
    if name == "soft":
        with torch.no_grad():
            trained_state = {k: v.clone() for k, v in projector.modules_to_save["default"].state_dict().items()}
            projector.modules_to_save["default"].load_state_dict(projector.original_module.state_dict())
            reset = _first_token_scores(trainer.model, tokenizer, rows)
            projector.modules_to_save["default"].load_state_dict(trained_state)
    else:
        with torch.no_grad():
            delta = adapter.trainable_tokens_delta["default"]
            trained_rows = delta.clone()
            delta.copy_(adapter.trainable_tokens_original["default"])
            reset = _first_token_scores(trainer.model, tokenizer, rows)
            delta.copy_(trained_rows)
    assert np.abs(after - reset).max() > 1e-4


def test_curriculum_ramps_from_text_only_to_hybrid(world, tmp_path):
    data, _, cf, vocab = world
    model, tokenizer, items = tiny_model_with_items("soft", data, cf, vocab)
    soft = soft_item_embedding(model)
    ids = torch.tensor([items.token_ids[:5]] * 64)
    soft.train()
    soft.hybrid_probability = 0.0  # text only: the shared placeholder row at every item token, no projector grad
    out = soft(ids)
    placeholder = soft.plain_layer.weight[items.token_ids[0]]
    assert torch.equal(out, placeholder.expand_as(out))
    out.sum().backward()
    assert all(p.grad is None for p in soft.item_projector.parameters())
    soft.hybrid_probability = 0.5
    torch.manual_seed(0)
    hybrid = ~(soft(ids) == placeholder).all(-1).all(-1)
    assert 16 < int(hybrid.sum()) < 48  # one draw per row
    soft.eval()  # evaluation always sees the CF vectors
    torch.testing.assert_close(soft(ids[:1])[0], soft.item_rows()[:5])
    seen = []
    callback = ItemTokenCurriculum()
    state = types.SimpleNamespace(max_steps=4, global_step=0)
    for step in range(4):
        state.global_step = step
        callback.on_step_begin(None, state, None, model=model)
        seen.append(soft.hybrid_probability)
    assert seen == [0.25, 0.5, 0.75, 1.0]  # LLaRA: step / max_steps, from the first step
    # through TRL's SFTTrainer: the callback runs, and training ends at probability 1
    _sft(model, tokenizer, items, _sft_rows(world, n=8), tmp_path, steps=2,
         callbacks=[ItemTokenCurriculum(ramp_steps=4)])
    assert soft.hybrid_probability == 1.0
    with pytest.raises(ValueError, match="no soft item tokens"):
        ItemTokenCurriculum().on_step_begin(None, state, None, model=torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------------------- DPO
def _dpo_trainer(model, tokenizer, items, dataset, out, hano: bool, peft_config=True, **config):
    config_class, trainer_class = (HaNoDPOConfig, HaNoDPOTrainer) if hano else (DPOConfig, DPOTrainer)
    args = config_class(output_dir=str(out), **{**COMMON, **config})
    return trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora(model, items) if peft_config else None)


def _loss_and_grads(trainer):
    batch = first_batch(trainer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
             if p.requires_grad and p.grad is not None}
    return loss.detach(), grads


HANO_OFF = dict(use_hardness=False, use_responsiveness=False, lora_noise_std=0.0)


@pytest.mark.parametrize("fast", [False, True], ids=["trl_batches", "fast_path"])
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_hano_off_equals_trl_dpo_with_item_tokens(world, name, fast, tmp_path):
    data, split, cf, vocab = world
    ds = build_dpo_dataset(split.train[:4], data, with_images=False, item_tokens=vocab, templates=TOKEN_ANSWERS)
    results = []
    for hano in (False, True):
        model, tokenizer, items = tiny_model_with_items(name, data, cf, vocab)
        config = {**HANO_OFF, "fast_prompt_once": fast} if hano else {}
        trainer = _dpo_trainer(model, tokenizer, items, ds, tmp_path / str(hano), hano, **config)
        if hano:
            assert (trainer.fast_path_off_reason is None) == fast
        results.append(_loss_and_grads(trainer))
    (loss_trl, grads_trl), (loss_hano, grads_hano) = results
    assert loss_trl.item() != pytest.approx(0.6931471, abs=1e-6), "policy == reference: the test would be vacuous"
    variant_grads = [n for n in grads_trl if "lora_" not in n]
    assert variant_grads and all(grads_trl[n].abs().sum() > 0 for n in variant_grads)
    assert grads_trl.keys() == grads_hano.keys()
    if not fast:
        assert torch.equal(loss_hano, loss_trl)
        assert all(torch.equal(grads_hano[n], grads_trl[n]) for n in grads_trl)
    else:
        torch.testing.assert_close(loss_hano, loss_trl, rtol=0, atol=1e-6)
        for n in grads_trl:
            torch.testing.assert_close(grads_hano[n], grads_trl[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_dpo_after_sft_has_the_sft_model_as_reference(world, trained, name, tmp_path):
    """DPO after SFT, the pipeline's way: merge the SFT adapter, train a new one (item rows / projector included);
    after DPO steps the policy has moved and the reference (adapter off) still scores as the SFT model did."""
    data, split, cf, vocab = world
    ds = build_dpo_dataset(split.train[:4], data, with_images=False, item_tokens=vocab, templates=TOKEN_ANSWERS)
    sft, _, _, _, saved = trained(name)
    rows = _eval_rows(world)
    sft_scores = _first_token_scores(sft.model, sft.processing_class, rows)
    model, tokenizer, items = _reloaded(saved)
    merged = model.merge_and_unload()
    np.testing.assert_allclose(_first_token_scores(merged, tokenizer, rows), sft_scores, rtol=0, atol=1e-5)
    trainer = _dpo_trainer(merged, tokenizer, items, ds, tmp_path / "dpo", True, **HANO_OFF, max_steps=2,
                           learning_rate=5e-2)
    trainer.train()
    assert np.abs(_first_token_scores(trainer.model, tokenizer, rows) - sft_scores).max() > 1e-3
    with trainer.model.disable_adapter():
        np.testing.assert_allclose(_first_token_scores(trainer.model, tokenizer, rows), sft_scores, rtol=0,
                                   atol=1e-5)


def test_trl_reference_copy_of_an_adapter_misses_trainable_token_rows(world, tmp_path):
    """Known TRL 1.16 limitation (docs/item_tokens.md): DPOTrainer given a PEFT model copies the adapter to a "ref"
    adapter by the parameter names containing ".default."; PEFT names the trainable rows
    "...trainable_tokens_delta.default", so the reference keeps the base rows. The soft variant's projector is
    copied. When this test fails, TRL copies them: the merge-first advice in the docs can go."""
    data, split, cf, vocab = world
    ds = build_dpo_dataset(split.train[:4], data, with_images=False, item_tokens=vocab, templates=TOKEN_ANSWERS)
    copied = {}
    for name in VARIANT_NAMES:
        model, tokenizer, items = tiny_model_with_items(name, data, cf, vocab)
        peft = peft_model(model, items)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if p.requires_grad and "lora_" not in n:
                    p.add_(0.5)  # the adapter's variant part differs from the base
        _dpo_trainer(peft, tokenizer, items, ds, tmp_path / name, False, peft_config=False)
        params = dict(peft.named_parameters())
        pairs = [(n, n.replace(".default", ".ref")) for n in params if "lora_" not in n and ".default" in n]
        copied[name] = all(torch.equal(params[a], params[b]) for a, b in pairs if b in params)
        assert pairs
    assert copied == {"soft": True, "trainable": False}


def test_dpo_reference_is_the_variant_before_training(world, tmp_path):
    """With the adapter disabled (DPO's reference) the projector is the one PEFT started from."""
    data, split, cf, vocab = world
    model, tokenizer, items = tiny_model_with_items("soft", data, cf, vocab)
    peft = peft_model(model, items)
    rows = _eval_rows(world)
    with peft.disable_adapter():
        start = _first_token_scores(peft, tokenizer, rows)
    projector = soft_item_embedding(peft).item_projector.modules_to_save["default"]
    with torch.no_grad():
        for p in projector.parameters():
            p.add_(0.1)
    with peft.disable_adapter():
        np.testing.assert_array_equal(_first_token_scores(peft, tokenizer, rows), start)
    assert np.abs(_first_token_scores(peft, tokenizer, rows) - start).max() > 1e-3


# ------------------------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_item_token_score_is_one_token_and_ranks_the_catalogue(world, name, tmp_path):
    data, _, cf, vocab = world
    model, tokenizer, _ = tiny_model_with_items(name, data, cf, vocab)
    rows = _eval_rows(world)
    sequences = score_candidates(model, tokenizer, rows["prompt"], rows["candidates"], progress=False)
    assert all(len(c) == 3 for r in sequences for c in r)  # <item>, <|im_end|>, "\n"
    first = _first_token_scores(model, tokenizer, rows)
    np.testing.assert_allclose(first, [[c[0] for c in r] for r in sequences], rtol=0, atol=1e-5)
    catalogue = catalogue_log_probs(model, tokenizer, rows["prompt"], vocab, progress=False)
    assert catalogue.shape == (len(rows), len(vocab))
    picked = [[catalogue[r, vocab.row[i]] for i in row["candidate_items"]] for r, row in enumerate(rows)]
    np.testing.assert_allclose(picked, first, rtol=0, atol=1e-6)
    assert np.all(np.exp(catalogue).sum(1) < 1.0)
    # the evaluation's first-token ranking reads the same numbers
    metrics = evaluate_recommender(model, tokenizer, rows, None, output_path=tmp_path / "metrics.json",
                                   config=RecEvalConfig(candidate_score="first_token", progress=False))
    written = json.loads((tmp_path / "metrics.json").read_text())
    np.testing.assert_allclose(written["per_row"]["ranking"]["scores"], first, rtol=0, atol=1e-6)
    assert metrics["num_ranking_rows"] == len(rows)
    # titles as answers share their first token ('"'): first-token scoring refuses them
    titled = _eval_rows(world, templates=item_templates("both", answer="title"))
    with pytest.raises(ValueError, match="start with the same token"):
        score_first_tokens(model, tokenizer, titled["prompt"], titled["candidates"], progress=False)


def test_title_and_token_prompts_score_differently(world):
    data, _, cf, vocab = world
    model, tokenizer, _ = tiny_model_with_items("soft", data, cf, vocab)
    scores = {}
    for naming in ("title", "token", "both"):
        rows = _eval_rows(world, templates=item_templates(naming, answer="token"))
        scores[naming] = _first_token_scores(model, tokenizer, rows)
    assert np.abs(scores["title"] - scores["token"]).max() > 1e-3
    assert np.abs(scores["token"] - scores["both"]).max() > 1e-3


def test_vision_language_model_with_item_tokens(world):
    data, _, cf, vocab = world
    from hanorec_trl.item_tokens import SoftItemTokens
    from hanorec_trl.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    processor = tiny_vl_processor(tokenizer)
    model = tiny_qwen2_5_vl(tokenizer)
    items = SoftItemTokens(vocab, cf)
    items.install(model, processor)
    rows = _eval_rows(world, n=2, with_images=True)
    images = [r["images"] for r in rows]
    sequences = score_candidates(model, processor, rows["prompt"], rows["candidates"], images, progress=False)
    first = score_first_tokens(model, processor, rows["prompt"], rows["candidates"], images, progress=False)
    np.testing.assert_allclose(first, [[c[0] for c in r] for r in sequences], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_generated_item_tokens_are_parsed_to_candidates(world, trained, name):
    trainer, tokenizer, _, _, _ = trained(name)
    rows = _eval_rows(world)
    answers = generate_answers(trainer.model, tokenizer, rows["prompt"], progress=False)
    ranks, failed = generation_ranks(answers, rows["candidates"], rows["target_index"])
    assert all(find_item_tokens(a) for a in answers), answers  # the trained model answers in item tokens
    for answer, row, rank, fail in zip(answers, rows, ranks, failed):
        listed = [t for t in dict.fromkeys(find_item_tokens(answer)) if t in row["candidates"]]
        target = row["candidates"][row["target_index"]]
        assert fail == (not listed)
        assert rank == (listed.index(target) + 1 if target in listed else math.inf)
    assert not all(failed)


# ---------------------------------------------------------------------------------------------------- save/load
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_adapter_round_trip_scores_identically(world, trained, name, tmp_path):
    trainer, tokenizer, _, _, saved = trained(name)
    rows = _eval_rows(world)
    expected = _first_token_scores(trainer.model, tokenizer, rows)
    reloaded, fresh_tok, _ = _reloaded(saved)
    np.testing.assert_array_equal(_first_token_scores(reloaded, fresh_tok, rows), expected)

    # the variant's trained part lives in the adapter file: it is what the reload reads
    out = tmp_path / "altered"
    shutil.copytree(saved, out)
    weights = load_file(out / "adapter_model.safetensors")
    key = "item_projector" if name == "soft" else "trainable_tokens_delta"
    variant_keys = [k for k in weights if key in k]
    assert variant_keys, sorted(weights)
    save_file({k: v + 0.05 if k in variant_keys and v.is_floating_point() else v for k, v in weights.items()},
              out / "adapter_model.safetensors")
    altered, fresh_tok, _ = _reloaded(out)
    assert np.abs(_first_token_scores(altered, fresh_tok, rows) - expected).max() > 1e-4


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_baked_model_is_a_plain_transformers_model(world, trained, name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, _, _, _, saved = trained(name)
    rows = _eval_rows(world)
    expected = _first_token_scores(trainer.model, trainer.processing_class, rows)
    model, tokenizer, items = _reloaded(saved)
    plain = items.bake(model.merge_and_unload())
    assert not any(getattr(m, "is_item_token_module", False) for m in plain.modules())
    assert plain.config.tie_word_embeddings
    assert plain.get_output_embeddings().weight is plain.get_input_embeddings().weight
    plain.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "plain")
    np.testing.assert_allclose(_first_token_scores(loaded, loaded_tok, rows), expected, rtol=0, atol=1e-5)
    # training goes on from the baked rows as trainable vocabulary tokens (e.g. DPO after soft-token SFT)
    data, _, cf, vocab = world
    more = make_variant("trainable", data, cf, vocab)
    more.install(loaded, loaded_tok, keep_rows=True)
    np.testing.assert_allclose(_first_token_scores(loaded, loaded_tok, rows), expected, rtol=0, atol=1e-5)
    wrapped = peft_model(loaded, more)
    assert any("trainable_tokens_delta" in n for n, p in wrapped.named_parameters() if p.requires_grad)
    with wrapped.disable_adapter():
        np.testing.assert_allclose(_first_token_scores(wrapped, loaded_tok, rows), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="keep_rows applies to TrainableItemTokens"):
        make_variant("soft", data, cf, vocab).install(AutoModelForCausalLM.from_pretrained(tmp_path / "plain"),
                                                      loaded_tok, keep_rows=True)


def test_load_refuses_shifted_token_ids(world, tmp_path):
    data, _, cf, vocab = world
    model, tokenizer, items = tiny_model_with_items("soft", data, cf, vocab)
    peft = peft_model(model, items)
    peft.save_pretrained(tmp_path)
    items.save(tmp_path)
    from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer

    other = tiny_tokenizer()
    other.add_tokens(["<unrelated>"])
    with pytest.raises(ValueError, match="got id .* but had"):
        load_item_token_model(tiny_qwen2(other), other, tmp_path)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_reload_onto_a_base_model_from_a_folder(world, name, tmp_path):
    """A base loaded from a folder (as the pipeline loads models): PEFT then also saves the grown embedding layers
    (save_embedding_layers='auto'); both that adapter and one saved without them reload to the same scores."""
    from transformers import AutoModelForCausalLM

    from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer

    data, _, cf, vocab = world
    tiny_qwen2(tiny_tokenizer()).save_pretrained(tmp_path / "base")
    tokenizer = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    items = make_variant(name, data, cf, vocab)
    items.install(model, tokenizer)
    peft = peft_model(model, items)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if p.requires_grad and "lora_" not in n:
                p.add_(0.1)  # a trained-looking variant part
    rows = _eval_rows(world, n=2)
    expected = _first_token_scores(peft, tokenizer, rows)
    for folder, kwargs in (("auto", {}), ("lean", {"save_embedding_layers": False})):
        peft.save_pretrained(tmp_path / folder, **kwargs)
        items.save(tmp_path / folder)
        saved = load_file(tmp_path / folder / "adapter_model.safetensors")
        assert any("plain_layer.weight" in k or "base_layer.weight" in k for k in saved) == (folder == "auto")
        fresh_tok = tiny_tokenizer()
        reloaded, _ = load_item_token_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), fresh_tok,
                                            tmp_path / folder)
        np.testing.assert_array_equal(_first_token_scores(reloaded, fresh_tok, rows), expected)
