"""TRL's test_train_model_dtype step by step: which optimizer steps are non-finite, and what skipping them does.

The test (TRL's tests/test_dpo_trainer.py) trains the tiny Qwen2 stand-in in fp16 with lr 0.1 on the "zen" preference
data (17 rows, batch 8, 3 epochs = 9 steps; TRL's test conftest sets use_cpu=True, so bf16 autocast on a CPU). This
script prints, per optimizer step, the loss of the step, the gradient norm, whether the gradients are finite and how
many parameter tensors are non-finite after the step, for:

    --trainer trl             trl.DPOTrainer (what TRL does: applies every update)
    --trainer trl --skip      trl.DPOTrainer, dropping the gradients of a non-finite step (weights stay finite: does
                              the next batch recover?)
    --trainer hano [--fast]   HaNoDPOTrainer with HaNo off, on TRL's batches (--fast: the prompt-once path and the
                              reference cache on, as in the suite's mode b)

It needs the stand-ins of ../shared/tools/trl-dpo-suite (built by its run.sh) and the same environment:

    W=/tmp/trl-dpo-suite-work; cd $W && HF_HOME=$W/hf_home HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \\
      TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 PYTHONPATH=/work/main \\
      /work/main/.venv/bin/python /work/main/benchmarks/nonfinite_dtype_probe.py --trainer trl
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUITE = Path(__file__).resolve().parents[2] / "shared" / "tools" / "trl-dpo-suite" / "suite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", choices=["trl", "hano"], default="trl")
    parser.add_argument("--skip", action="store_true", help="trl: drop the gradients of a non-finite step")
    parser.add_argument("--fast", action="store_true", help="hano: keep the prompt-once fast path on")
    options = parser.parse_args()
    if os.environ.get("HF_HUB_OFFLINE") != "1" or "HF_HOME" not in os.environ:
        sys.exit("run in the trl-dpo-suite environment (see this file's docstring)")
    sys.path.insert(0, str(SUITE))
    import conftest  # noqa: F401  (the suite's offline load_dataset)
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if options.trainer == "hano":
        from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer

        @dataclass
        class Config(HaNoDPOConfig):
            use_hardness: bool = False
            use_responsiveness: bool = False
            lora_noise_std: float = 0.0
            fast_prompt_once: bool = options.fast
            fast_ref_cache: bool = options.fast

        config_class, trainer_class = Config, HaNoDPOTrainer
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    else:
        config_class, trainer_class = DPOConfig, DPOTrainer

    class Probe(TrainerCallback):
        def __init__(self):
            self.rows, self.grads_finite = [], True

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            # None: no gradients left (HaNoDPOTrainer dropped those of a non-finite step before this callback)
            self.grads_finite = all(bool(torch.isfinite(g).all()) for g in grads) if grads else None
            if options.skip and not self.grads_finite:
                for p in model.parameters():
                    p.grad = None

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            bad = sum(not bool(torch.isfinite(p).all()) for p in model.parameters())
            self.rows.append((state.global_step + 1, self.grads_finite, bad))

    class Raw(trainer_class):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            self.raw_losses[self.state.global_step + 1] = loss.item()
            return loss

    dataset = load_dataset("trl-internal-testing/zen", "standard_preference", split="train")
    with tempfile.TemporaryDirectory() as out:
        args = config_class(output_dir=out, model_init_kwargs={"dtype": torch.float16}, learning_rate=0.1,
                            report_to="none", use_cpu=True, disable_tqdm=True, logging_steps=1, save_strategy="no")
        probe = Probe()
        trainer = Raw(model="trl-internal-testing/tiny-Qwen2ForCausalLM-2.5", args=args, train_dataset=dataset,
                      callbacks=[probe])
        trainer.raw_losses = {}
        n_params = sum(1 for _ in trainer.model.parameters())
        try:
            trainer.train()
        finally:
            norms = {h["step"]: h.get("grad_norm") for h in trainer.state.log_history if "loss" in h}
            for step, finite, bad in probe.rows:
                print(f"step {step}: loss {trainer.raw_losses.get(step)} grad_norm {norms.get(step)} "
                      f"gradients finite {finite}, non-finite parameter tensors after the step {bad}/{n_params}")


if __name__ == "__main__":
    main()
