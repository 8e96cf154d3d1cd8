"""Fast path (prompt-once packing, vision feature cache, cached reference): exact w.r.t. TRL's standard path."""

import contextlib
from types import SimpleNamespace

import pytest
import torch
from conftest import preference_dataset, preference_rows, solid_image
from datasets import Dataset
from trainer_utils import first_batch, lora_grads, make_trainer, model_inputs, rows_of, standard_batch, trainer_batch

from hanorec_trl.fast.forward import (
    cached_image_features,
    frozen_vision_without_graph,
    parameters_sharded,
    pixel_key,
    trl_layout_inputs,
)
from hanorec_trl.fast.vision_cache import VisionFeatureCache, image_key, module_fingerprint
from hanorec_trl.testing import tiny_qwen2, tiny_qwen2_5_vl


def shared_prompt_rows(with_images, n_prompts=2, n_rejected=3):
    """Ranking rows with several rejected completions per prompt (one row per pair), as the data layer builds them."""
    base = preference_rows(n=n_prompts, with_images=with_images, lambdas=[1.0] * n_prompts)
    others = preference_rows(n=n_rejected, with_images=with_images, seed=5)
    rows = []
    for p, row in enumerate(base):
        for k in range(n_rejected):
            rows.append(dict(row, rejected=others[k]["chosen"], hano_lambda=0.5 + 0.25 * k + p))
    return rows


def _loss_grads(trainer, rows):
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer_batch(trainer, rows))
    loss.backward()
    return loss.detach(), lora_grads(trainer.model)


@pytest.mark.parametrize("kind", ["vlm", "text"])
@pytest.mark.parametrize("checkpointing", [True, False], ids=["gc", "no_gc"])
def test_several_rejected_per_prompt_equal_standard(kind, checkpointing, tiny_tok, tiny_processor, tmp_path):
    vlm = kind == "vlm"
    build = (lambda: tiny_qwen2_5_vl(tiny_tok)) if vlm else (lambda: tiny_qwen2(tiny_tok))
    ds = Dataset.from_list(shared_prompt_rows(vlm))
    results = {}
    for fast in (True, False):
        trainer = make_trainer(build(), tiny_processor if vlm else tiny_tok, ds, tmp_path / str(fast),
                               fast_prompt_once=fast, gradient_checkpointing=checkpointing, use_responsiveness=False,
                               lora_noise_std=0.0, per_device_train_batch_size=6)
        rows = rows_of(trainer, 6)
        batch = trainer_batch(trainer, rows)
        if fast:
            # 6 rows share 2 prompts: the packed batch holds 2 sequences, each chosen scored once per prompt
            assert batch["input_ids"].shape[0] == 2
            assert "ref_chosen_logps" in batch  # computed once before training
        results[fast] = _loss_grads(trainer, rows)
    (loss_fast, grads_fast), (loss_std, grads_std) = results[True], results[False]
    torch.testing.assert_close(loss_fast, loss_std, rtol=1e-5, atol=1e-6)
    for name in grads_std:
        torch.testing.assert_close(grads_fast[name], grads_std[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["vlm", "text"])
def test_packed_completion_tokens_equal_trl_completion_mask(kind, tiny_tok, tiny_processor, tmp_path):
    """Per row, the packed batch gathers exactly the tokens that TRL's completion_mask marks: no token before the
    completion boundary (label -100 there: log-probs unchanged, but entropy and logits/* would change), none missing;
    its stand-in attention_mask counts the standard sequence's tokens (TRL's num_tokens)."""
    vlm = kind == "vlm"
    ds = Dataset.from_list(shared_prompt_rows(vlm))
    model = tiny_qwen2_5_vl(tiny_tok) if vlm else tiny_qwen2(tiny_tok)
    trainer = make_trainer(model, tiny_processor if vlm else tiny_tok, ds, tmp_path, use_responsiveness=False,
                           lora_noise_std=0.0, per_device_train_batch_size=6)
    rows = rows_of(trainer, 6)
    packed, standard = trainer_batch(trainer, rows), standard_batch(trainer, rows)
    assert packed["input_ids"].shape[0] == 2  # 6 rows, 2 prompts: really packed
    layout = trl_layout_inputs(packed)
    per_row = standard["completion_mask"].sum(1)
    assert per_row.min() > 0
    assert torch.equal(packed["gather_mask"].sum(1), per_row)
    assert torch.equal(layout["completion_mask"].sum(1), per_row)
    assert torch.equal(layout["attention_mask"].sum(1), standard["attention_mask"].sum(1))
    # the gathered positions score exactly the completion tokens: the labels one position later
    labels = packed["labels"][:, 1:].reshape(-1)
    keep = packed["gather_mask"]
    gathered = labels[packed["gather_index"]][keep]
    assert (gathered != -100).all()
    expected = standard["input_ids"][standard["completion_mask"].bool()]
    assert torch.equal(gathered, expected)


def test_same_prompt_text_different_images_are_not_merged(tiny_tok, tiny_processor, tmp_path):
    """Two rows with the same prompt text but other posters are two prompts: two packed sequences, every image kept,
    loss and gradients those of the standard path."""
    row = preference_rows(n=1, with_images=True, lambdas=[1.0])[0]
    other = dict(row, images=[solid_image(100 + i) for i in range(len(row["images"]))], hano_lambda=1.5)
    ds = Dataset.from_list([row, other])
    results = {}
    for fast in (True, False):
        trainer = make_trainer(tiny_qwen2_5_vl(tiny_tok), tiny_processor, ds, tmp_path / str(fast),
                               fast_prompt_once=fast, use_responsiveness=False, lora_noise_std=0.0)
        rows = rows_of(trainer, 2)
        assert rows[0]["prompt"] == rows[1]["prompt"]
        if fast:
            batch = trainer_batch(trainer, rows)
            keys = [image_key(im) for r in rows for im in r["images"]]
            assert len(set(keys)) == len(keys) == 2 * len(row["images"])
            assert batch["input_ids"].shape[0] == 2, "rows with the same text but other images were merged"
            assert batch["image_keys"] == keys
            assert batch["image_grid_thw"].shape[0] == len(keys)
        results[fast] = _loss_grads(trainer, rows)
    (loss_fast, grads_fast), (loss_std, grads_std) = results[True], results[False]
    torch.testing.assert_close(loss_fast, loss_std, rtol=1e-5, atol=1e-6)
    assert grads_fast.keys() == grads_std.keys() and grads_std
    for name in grads_std:
        torch.testing.assert_close(grads_fast[name], grads_std[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pixel_key_is_exact():
    """The pixel-keyed feature cache (evaluation, SFT) keys on every value, the dtype and the grid."""
    torch.manual_seed(0)
    pixels = torch.randn(16, 12)
    grid = [1, 4, 4]
    key = pixel_key(pixels, grid)
    assert pixel_key(pixels.clone(), list(grid)) == key
    changed = pixels.clone()
    changed[7, 5] = torch.nextafter(changed[7, 5], torch.tensor(float("inf")))  # one value, by one ulp
    assert changed.shape == pixels.shape and not torch.equal(changed, pixels)
    assert pixel_key(changed, grid) != key
    assert pixel_key(pixels, [1, 2, 8]) != key  # same patches, another grid
    assert pixel_key(pixels.double(), grid) != key
    assert pixel_key(pixels.t().contiguous().t(), grid) == key  # memory layout does not matter


def test_vision_tower_runs_once_per_image_and_never_backward(tiny_tok, tiny_processor, tmp_path):
    ds = preference_dataset(n=4, with_images=True, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2_5_vl(tiny_tok), tiny_processor, ds, tmp_path, gradient_checkpointing=True,
                           max_steps=4)
    visual = trainer.model.get_base_model().model.visual
    calls = {"forward_images": 0, "backward": 0}
    visual.register_forward_hook(lambda m, args, kwargs, out: calls.__setitem__(
        "forward_images", calls["forward_images"] + int((args[1] if len(args) > 1 else kwargs["grid_thw"]).shape[0])),
        with_kwargs=True)
    visual.patch_embed.register_full_backward_hook(lambda *a: calls.__setitem__("backward", calls["backward"] + 1))
    cache = trainer._vision_cache_for(trainer.model)
    distinct = len({image_key(im) for r in ds for im in r["images"]})
    assert len(cache) == distinct  # filled while caching the reference log-probs
    trainer._vision_caches.clear()  # a fresh cache: the first step's images go through the tower (the hook sees them)
    trainer.train()
    cache = trainer._vision_cache_for(trainer.model)
    assert calls["forward_images"] == len(cache) == distinct  # each distinct image through the tower exactly once
    assert calls["backward"] == 0
    assert cache.hits > 0


def _count_vision_backward(model):
    visual = model.get_base_model().model.visual
    calls = []
    visual.patch_embed.register_full_backward_hook(lambda *a: calls.append(1))
    return calls


def test_standard_path_never_backpropagates_through_frozen_vision(tiny_tok, tiny_processor, tmp_path):
    """TRL's own batches (fast path off), checkpointing on: same LoRA gradients as trl.DPOTrainer, no vision
    backward."""
    ds = preference_dataset(n=2, with_images=True, lambdas=[1.0] * 2)
    grads, backward_calls = {}, {}
    for hano in (True, False):
        torch.manual_seed(0)
        extra = dict(fast_prompt_once=False, use_hardness=False, use_responsiveness=False, lora_noise_std=0.0) if hano \
            else {}
        trainer = make_trainer(tiny_qwen2_5_vl(tiny_tok), tiny_processor, ds, tmp_path / str(hano), hano=hano,
                               gradient_checkpointing=True, **extra)
        trainer.current_gradient_accumulation_steps = 1
        calls = _count_vision_backward(trainer.model)
        trainer.model.zero_grad()
        trainer.training_step(trainer.model, first_batch(trainer))
        grads[hano], backward_calls[hano] = lora_grads(trainer.model), len(calls)
    assert backward_calls == {True: 0, False: 1}  # TRL back-propagates through the frozen tower; we do not
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-7, msg=name)


def _checkpointed_lora_vlm_and_batch(tiny_tok, tiny_processor, tmp_path):
    """A LoRA tiny Qwen2.5-VL in training mode with checkpointing's input hooks (as Trainer.train() sets them up: the
    vision tower's patch embedding is hooked too), and one batch of model inputs."""
    ds = preference_dataset(n=2, with_images=True, lambdas=[1.0] * 2)
    trainer = make_trainer(tiny_qwen2_5_vl(tiny_tok), tiny_processor, ds, tmp_path, fast_prompt_once=False,
                           gradient_checkpointing=True)
    model = trainer.model
    model.train()
    base = model.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    return model, model_inputs(first_batch(trainer))


def test_frozen_vision_without_graph_keeps_gradients(tiny_tok, tiny_processor, tmp_path):
    """The context used around SFT: with checkpointing's input hooks, gradients unchanged and no vision backward."""
    model, batch = _checkpointed_lora_vlm_and_batch(tiny_tok, tiny_processor, tmp_path)
    calls = _count_vision_backward(model)
    visual = model.get_base_model().model.visual
    results = []
    for wrap in (False, True):
        model.zero_grad()
        with frozen_vision_without_graph(model) if wrap else contextlib.nullcontext(False) as wrapped:
            model(**batch, use_cache=False).logits.float().pow(2).mean().backward()
        assert wrapped is wrap
        results.append((lora_grads(model), len(calls)))
        if not wrap:
            assert len(calls) == 1
    (plain, _), (cut, total_calls) = results
    assert total_calls == 1  # the wrapped pass added no vision backward
    assert "forward" not in visual.__dict__  # restored
    for name in plain:
        torch.testing.assert_close(cut[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    with frozen_vision_without_graph(tiny_qwen2(tiny_tok)) as wrapped:
        assert wrapped is False  # a text model has nothing to cut


def test_cached_image_features_same_outputs_and_gradients(tiny_tok, tiny_processor, tmp_path):
    """The cache used around SFT: same logits and LoRA gradients; a repeated batch never runs the tower again."""
    model, batch = _checkpointed_lora_vlm_and_batch(tiny_tok, tiny_processor, tmp_path)
    base = model.get_base_model()
    tower_calls = []
    base.model.visual.register_forward_hook(lambda *a: tower_calls.append(1))

    def logits_and_grads():
        model.zero_grad()
        logits = model(**batch, use_cache=False).logits.float()
        logits.pow(2).mean().backward()
        return logits.detach(), lora_grads(model)

    plain_logits, plain_grads = logits_and_grads()
    assert len(tower_calls) == 1
    cache = VisionFeatureCache(module_fingerprint(base.model.visual))
    with cached_image_features(model, cache) as wrapped:
        assert wrapped
        first = logits_and_grads()
        second = logits_and_grads()
    n_images = int(batch["image_grid_thw"].shape[0])
    assert len(tower_calls) == 2  # the first cached pass ran the tower once, on the distinct images; then none
    assert 0 < len(cache) <= n_images and cache.misses == cache.hits == len(cache)  # first pass misses, second hits
    assert "get_image_features" not in base.model.__dict__  # restored
    for logits, grads in (first, second):
        torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-6)
        for name in plain_grads:
            torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_parameters_sharded():
    def trainer(fsdp=False, deepspeed=False, stage=None):
        plugin = SimpleNamespace(zero_stage=stage) if stage is not None else None
        return SimpleNamespace(is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed,
                               accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)))

    assert not parameters_sharded(trainer())
    assert parameters_sharded(trainer(fsdp=True))
    assert parameters_sharded(trainer(deepspeed=True, stage=3))
    assert not parameters_sharded(trainer(deepspeed=True, stage=2))


class HookCounter:
    """Records the number of forward hooks on the input embeddings at the end of every step."""

    def __init__(self, module):
        self.module, self.counts = module, []

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, *args, **kwargs):
        self.counts.append(len(self.module._forward_hooks))


def test_no_hook_leak_under_checkpointing(tiny_tok, tiny_processor, tmp_path):
    ds = preference_dataset(n=8, with_images=True, lambdas=[1.0] * 8)
    setups = {
        "fast": {},
        "standard_adaptive": dict(fast_prompt_once=False),
        "pure_trl": dict(fast_prompt_once=False, use_hardness=False, use_responsiveness=False, lora_noise_std=0.0),
    }
    counts = {}
    for name, config in setups.items():
        model = tiny_qwen2_5_vl(tiny_tok)
        counter = HookCounter(model.get_input_embeddings())
        trainer = make_trainer(model, tiny_processor, ds, tmp_path / name, gradient_checkpointing=True, max_steps=4,
                               callbacks=[counter], **config)
        trainer.train()
        counts[name] = counter.counts
    # our reference forwards register nothing per step ...
    assert len(set(counts["fast"])) == 1 and len(set(counts["standard_adaptive"])) == 1, counts
    # ... while TRL 1.16's own reference forward re-enables checkpointing and adds its hooks again every step
    assert counts["pure_trl"][-1] > counts["pure_trl"][0], counts


def test_vision_cache_invalidates_on_model_or_image_change(tiny_tok):
    model = tiny_qwen2_5_vl(tiny_tok)
    visual = model.model.visual
    before = module_fingerprint(visual)
    assert module_fingerprint(visual) == before
    with torch.no_grad():
        next(visual.parameters()).view(-1)[0] += 1e-3
    assert module_fingerprint(visual) != before
    assert module_fingerprint(tiny_qwen2_5_vl(tiny_tok).model.visual, extra="max_pixels=1") != module_fingerprint(
        tiny_qwen2_5_vl(tiny_tok).model.visual
    )
    image = solid_image(1)
    changed = image.copy()
    changed.putpixel((0, 0), (1, 2, 3))
    assert image_key(image) == image_key(solid_image(1)) and image_key(changed) != image_key(image)


def test_fast_path_falls_back_with_reason(tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, padding_free=False, max_length=64,
                           truncation_mode="keep_end")
    assert trainer.fast_path_off_reason == "truncation_mode='keep_end'"
    trainer.train()  # the standard path still trains
