"""NoDO (Eq. 10): exact perturbation, checkpointing-safe gradients, untouched parameters, scope, determinism."""

from unittest import mock

import pytest
import torch
from conftest import preference_dataset
from peft import LoraConfig, get_peft_model
from torch import nn
from trainer_utils import GradRecorder, first_batch, losses, make_trainer
from trl import DPOTrainer

from hanorec_trl import lora_noise
from hanorec_trl.testing import tiny_qwen2


def small_peft_model():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5))
    return get_peft_model(base, LoraConfig(r=3, lora_alpha=6, target_modules=["0", "2"], init_lora_weights=False))


@pytest.fixture(params=["in_place", "hooks"])
def noise_impl(request, monkeypatch):
    """Both implementations: weights perturbed in place (plain tensors) and forward hooks (ZeRO-3, DTensor)."""
    if request.param == "hooks":
        monkeypatch.setattr("hanorec_trl.noise._can_perturb_in_place", lambda weight: False)
    return request.param


def test_perturbation_is_exactly_B_prime_A_prime_x(noise_impl):
    model = small_peft_model()
    x = torch.randn(4, 8)
    std = 0.3
    with lora_noise(model, std=std, generator=torch.Generator().manual_seed(123)):
        noisy = model(x)
    # Redraw the same noise in the documented order (model order; A then B of each layer) and apply it by hand.
    g = torch.Generator().manual_seed(123)
    layers = [model.base_model.model[0], model.base_model.model[2]]
    h = x
    for i, layer in enumerate(layers):
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        eps_A = torch.randn(A.shape, generator=g)
        eps_B = torch.randn(B.shape, generator=g)
        h = layer.base_layer(h) + layer.scaling["default"] * h @ (A + std * eps_A).T @ (B + std * eps_B).T
        if i == 0:
            h = torch.relu(h)
    torch.testing.assert_close(noisy, h, rtol=1e-5, atol=1e-6)
    clean = model(x)
    assert (clean - noisy).abs().max() > 1e-3
    with lora_noise(model, std=0.0):
        torch.testing.assert_close(model(x), clean)


def test_noise_is_fixed_within_the_context_and_parameters_untouched(noise_impl):
    model = small_peft_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 8)
    with lora_noise(model, std=0.5, generator=torch.Generator().manual_seed(1)):
        first, second = model(x), model(x)
        first.sum().backward()
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # same noise on a recompute
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.base_model.model[0]._forward_hooks  # hooks removed on exit


def test_both_implementations_give_the_same_gradients(monkeypatch):
    x = torch.randn(4, 8)
    grads = {}
    for impl in ("in_place", "hooks"):
        if impl == "hooks":
            monkeypatch.setattr("hanorec_trl.noise._can_perturb_in_place", lambda weight: False)
        model = small_peft_model()
        with lora_noise(model, std=0.3, generator=torch.Generator().manual_seed(5)):
            model(x).pow(2).sum().backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads["in_place"].keys() == grads["hooks"].keys() and grads["in_place"]
    for name in grads["in_place"]:
        torch.testing.assert_close(grads["in_place"][name], grads["hooks"][name], rtol=1e-4, atol=1e-5)


def test_relative_mode_scales_with_rms():
    model = small_peft_model()
    weights = [m.weight for n, m in model.named_modules() if n.endswith((".lora_A.default", ".lora_B.default"))]
    expected = sum(0.5 * w.detach().pow(2).mean().sqrt().item() for w in weights) / len(weights)
    with lora_noise(model, std=0.5, mode="relative", generator=torch.Generator().manual_seed(0)) as info:
        pass
    assert info["matrices"] == 4 and info["scale_mean"] == pytest.approx(expected, rel=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="needs a PEFT LoRA model"):
        with lora_noise(nn.Linear(3, 3), std=0.1):
            pass
    with pytest.raises(ValueError, match="mode"):
        with lora_noise(small_peft_model(), std=0.1, mode="multiplicative"):
            pass
    with pytest.raises(ValueError, match="std"):
        with lora_noise(small_peft_model(), std=-1.0):
            pass


def _train_grads(tiny_tok, tmp_path, **config):
    recorder = GradRecorder()
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path, callbacks=[recorder], max_steps=1,
                           use_hardness=False, use_responsiveness=False, **config)
    trainer.train()
    return recorder.grads[0], trainer


def test_gradients_identical_with_and_without_checkpointing(tiny_tok, tmp_path):
    with_gc, _ = _train_grads(tiny_tok, tmp_path / "gc", lora_noise_std=0.2, gradient_checkpointing=True)
    without_gc, _ = _train_grads(tiny_tok, tmp_path / "nogc", lora_noise_std=0.2, gradient_checkpointing=False)
    clean, _ = _train_grads(tiny_tok, tmp_path / "clean", lora_noise_std=0.0, gradient_checkpointing=True)
    differs = False
    for name in with_gc:
        torch.testing.assert_close(with_gc[name], without_gc[name], rtol=1e-5, atol=1e-7, msg=name)
        differs |= not torch.allclose(with_gc[name], clean[name], rtol=1e-4, atol=1e-6)
    assert differs, "noise did not change the gradients: the comparison would be vacuous"


@pytest.mark.parametrize("fast", [True, False], ids=["packed", "standard"])
def test_no_noise_in_evaluate_or_reference(fast, tiny_tok, tmp_path):
    ds = preference_dataset(n=4, with_images=False, lambdas=[1.0] * 4)
    common = dict(eval_dataset=ds, use_hardness=False, use_responsiveness=True, fast_prompt_once=fast)
    noisy = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "a", lora_noise_std=0.5, **common)
    clean = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / "b", lora_noise_std=0.0, **common)
    assert noisy.evaluate()["eval_loss"] == clean.evaluate()["eval_loss"]

    # During a noised training step, TRL's loss receives the clean reference log-probs.
    batch = first_batch(noisy)
    with torch.no_grad():
        plain = {k: v for k, v in batch.items() if not k.startswith("ref_")}
        expected_ref = noisy._reference_logps(noisy.model, plain)
    seen = []
    original = DPOTrainer._compute_loss

    def spy(self, model, inputs, return_outputs):
        seen.append((inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]))
        return original(self, model, inputs, return_outputs)

    noisy.current_gradient_accumulation_steps = 1
    with mock.patch.object(DPOTrainer, "_compute_loss", spy):
        noisy.training_step(noisy.model, batch)
    assert len(seen) == 1
    for got, want in zip(seen[0], expected_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert noisy._metrics["train"]["hano/noise_scale"][-1] == 0.5


def test_same_seed_same_run(tiny_tok, tmp_path):
    ds = preference_dataset(n=6, with_images=False, lambdas=[1.0] * 6)
    runs = []
    for i, seed in enumerate((7, 7, 8)):
        trainer = make_trainer(tiny_qwen2(tiny_tok), tiny_tok, ds, tmp_path / str(i), lora_noise_std=0.2,
                               lora_noise_seed=seed, use_hardness=False, responsiveness_warmup=0)
        trainer.train()
        runs.append(losses(trainer.state.log_history))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
