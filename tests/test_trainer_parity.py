"""HaNo off == trl.DPOTrainer (loss, LoRA gradients, every logged metric); the adaptive path with beta' = beta0 too.

On TRL's own batches the comparison is exact (torch.equal, ==); only the packed (prompt-once) configurations, whose
reduction order differs, get tolerances.

These tests are the gate for any TRL upgrade: the trainer hands TRL per-sample betas through TRL's private
`_compute_loss`, so if TRL's internals move these comparisons fail.
"""

import pytest
import torch
from conftest import preference_dataset
from trainer_utils import GradRecorder, first_batch, lora_grads, losses, make_trainer

from hanorec_trl.testing import tiny_qwen2, tiny_qwen2_5_vl

STANDARD = dict(fast_prompt_once=False)  # TRL's own batches
ALL_OFF = dict(use_hardness=False, use_responsiveness=False, lora_noise_std=0.0)
# Adaptive path switched on, but lambda = 1 and eta = 1 (warm-up), so beta' = beta0 exactly.
ADAPTIVE_UNIT = dict(use_hardness=True, use_responsiveness=True, responsiveness_warmup=100, lora_noise_std=0.0)
CONFIGS = {
    "all_off": {**ALL_OFF, **STANDARD},  # pure TRL code path
    "adaptive_unit": {**ADAPTIVE_UNIT, **STANDARD},  # per-sample beta machinery on TRL's batches
    "fast_all_off": ALL_OFF,  # prompt-once packed batches + cached reference log-probs
    "fast_adaptive_unit": ADAPTIVE_UNIT,
}
EXACT = ("all_off", "adaptive_unit")  # TRL's batches, TRL's reduction order: equal bit for bit


def _setup(kind, tiny_tok, tiny_processor):
    if kind == "vlm":
        return (lambda: tiny_qwen2_5_vl(tiny_tok)), tiny_processor, True
    return (lambda: tiny_qwen2(tiny_tok)), tiny_tok, False


@pytest.mark.parametrize("kind", ["vlm", "text"])
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_loss_and_gradients_equal_trl(kind, config_name, tiny_tok, tiny_processor, tmp_path):
    hano_config = CONFIGS[config_name]
    build, processing, images = _setup(kind, tiny_tok, tiny_processor)
    ds = preference_dataset(n=4, with_images=images, lambdas=[1.0] * 4)
    results = []
    for hano in (False, True):
        trainer = make_trainer(build(), processing, ds, tmp_path / str(hano), hano=hano,
                               **(hano_config if hano else {}))
        batch = first_batch(trainer)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        results.append((loss.detach(), lora_grads(trainer.model), metrics))
    (loss_trl, grads_trl, m_trl), (loss_hano, grads_hano, m_hano) = results
    assert loss_trl.item() != pytest.approx(0.6931471, abs=1e-6), "policy == reference: the test would be vacuous"
    assert grads_trl.keys() == grads_hano.keys() and len(grads_trl) > 0
    # every metric TRL logs (entropy, logits/*, num_tokens, mean_token_accuracy, rewards/*, logps/*), plus ours
    assert {"entropy", "num_tokens", "logits/chosen", "mean_token_accuracy", "rewards/margins"} <= m_trl.keys()
    assert m_trl.keys() <= m_hano.keys() and all(k.startswith("hano/") for k in m_hano.keys() - m_trl.keys())
    if config_name in EXACT:
        # TRL's own batches: bit-identical to trl.DPOTrainer (a 1e-7 relative change of beta fails here)
        assert torch.equal(loss_hano, loss_trl), (loss_hano.item(), loss_trl.item())
        for name in grads_trl:
            assert torch.equal(grads_hano[name], grads_trl[name]), name
        assert {k: m_hano[k] for k in m_trl} == m_trl
    else:
        # packed batches: the reduction order changes (and the reference log-probs come from the packed forward):
        # fp32 rounding of ~1e-5 nats
        torch.testing.assert_close(loss_hano, loss_trl, rtol=0, atol=1e-6)
        for name in grads_trl:
            torch.testing.assert_close(grads_hano[name], grads_trl[name], rtol=1e-5, atol=1e-7, msg=name)
        assert m_hano["num_tokens"] == m_trl["num_tokens"]
        for key in m_trl:
            assert m_hano[key] == pytest.approx(m_trl[key], rel=1e-4, abs=1e-5), key
    if hano_config.get("use_hardness"):
        assert m_hano["hano/eta"] == 1.0 and m_hano["hano/beta_mean"] == pytest.approx(0.1)


TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}


def _logged(history):
    """The log history without wall-clock timings and without HaNo's own hano/* keys."""
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS and not k.startswith("hano/")} for h in history]


@pytest.mark.parametrize("kind", ["vlm", "text"])
@pytest.mark.parametrize("config_name", ["all_off", "adaptive_unit", "fast_adaptive_unit"])
def test_log_history_equals_trl_over_steps(kind, config_name, tiny_tok, tiny_processor, tmp_path):
    build, processing, images = _setup(kind, tiny_tok, tiny_processor)
    ds = preference_dataset(n=6, with_images=images, lambdas=[1.0] * 6)
    histories, grads = [], []
    for hano in (False, True):
        recorder = GradRecorder()
        trainer = make_trainer(build(), processing, ds, tmp_path / str(hano), hano=hano, callbacks=[recorder],
                               **(CONFIGS[config_name] if hano else {}))
        trainer.train()
        histories.append(trainer.state.log_history)
        grads.append(recorder.grads)
    assert len(losses(histories[0])) == 3 and len(grads[0]) == 3
    if config_name in EXACT:
        # three optimizer steps on TRL's batches: every logged value (loss, grad_norm, entropy, rewards/*, ...) and
        # every LoRA gradient bit for bit
        assert _logged(histories[1]) == _logged(histories[0])
        for step_trl, step_hano in zip(*grads, strict=True):
            assert step_trl.keys() == step_hano.keys()
            for name in step_trl:
                assert torch.equal(step_hano[name], step_trl[name]), name
        return
    assert losses(histories[1]) == pytest.approx(losses(histories[0]), rel=1e-5, abs=1e-6)
    for step_trl, step_hano in zip(*grads, strict=True):
        for name in step_trl:
            torch.testing.assert_close(step_hano[name], step_trl[name], rtol=1e-4, atol=1e-6)
