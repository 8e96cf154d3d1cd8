"""SFT throughput on CPU, old vs new prompt settings in one run: the real SmolLM2-135M-Instruct with LoRA (r=8,
alpha 32, the language model's attention and MLP projections, as the pipeline trains it), TRL's ``SFTTrainer``, the
pipeline's compact LM head (only completion positions go through the vocabulary projection).

Configurations, each on the same real ML-1M training windows (users 1-2999, split seed 0):

* ``old``: the pipeline's earlier default for text LLMs: the Fig. 6b ranking prompt + the AUC prompt ('both'), with
  the chat template's default system prompt;
* ``ranking, no system prompt``: the ranking prompt only, with an empty system message;
* ``next item``: the history-only prompt (``task="next_item"``) with the template's default system prompt;
* ``next item, no system prompt`` (**new**): the experiment's setting.

Reports examples/s and tokens/s (median step time after one warm-up step) and the speed-up against ``old``::

    python benchmarks/bench_sft_throughput.py --data_dir ../shared/data/ml-1m --steps 6 --batch_size 8

Writes ``benchmarks/results/sft_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hanorec_trl.data import PromptTemplates, ProtocolConfig, build_sft_dataset, build_split, load_movielens_1m  # noqa
from hanorec_trl.pretrained import smollm2_135m_instruct  # noqa: E402
from hanorec_trl.model_utils import lora_config  # noqa: E402
from hanorec_trl.fast.cpu_lm_head import compact_lm_head_on_cpu  # noqa: E402

LORA = ModelConfig(use_peft=True, lora_r=8, lora_alpha=32, lora_dropout=0.05)  # the pipeline's recipes
CONFIGS = {
    "old: ranking + AUC, default system prompt": ("both", None),
    "ranking + AUC, no system prompt": ("both", ""),
    "next item, default system prompt": ("next_item", None),
    "new: next item, no system prompt": ("next_item", ""),
}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def measure(task: str, system: str | None, examples, data, steps: int, batch_size: int) -> dict:
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = smollm2_135m_instruct()
    dataset = build_sft_dataset(examples, data, task=task, with_images=False, templates=PromptTemplates(system=system))
    tokens = [len(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                                return_dict=True)["input_ids"]) for row in dataset]
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps + 1, per_device_train_batch_size=batch_size,
                         learning_rate=1e-4, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                         logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0,
                         gradient_checkpointing=False)  # as the pipeline trains on CPU (TRL's default is on)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora_config(model, LORA), callbacks=[timer])
        with compact_lm_head_on_cpu():
            trainer.train()
    step = statistics.median(timer.times[1:])  # the first step warms up
    mean_tokens = statistics.mean(tokens)
    return {"task": task, "system_prompt": system, "rows": len(dataset), "mean_tokens_per_row": mean_tokens,
            "step_seconds": step, "step_times": timer.times, "examples_per_s": batch_size / step,
            "tokens_per_s": batch_size * mean_tokens / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "sft_throughput.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_movielens_1m(args.data_dir, images=False)
    examples = build_split(data, ProtocolConfig(seed=0)).train[: args.batch_size * (args.steps + 1)]
    results = {}
    for label, (task, system) in CONFIGS.items():
        results[label] = measure(task, system, examples, data, args.steps, args.batch_size)
        print(label, {k: round(v, 3) for k, v in results[label].items() if isinstance(v, float)}, flush=True)
    old = results[next(iter(CONFIGS))]["examples_per_s"]
    lines = ["| configuration | tokens per row | s/step | examples/s | tokens/s | x old examples/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['mean_tokens_per_row']:.0f} | {r['step_seconds']:.2f} | "
                     f"{r['examples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['examples_per_s'] / old:.2f} |")
    table = "\n".join(lines)
    print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.processor() or
                                             platform.machine(), "threads": torch.get_num_threads(),
                                             "batch_size": args.batch_size, "results": results, "table": table},
                                            indent=1))


if __name__ == "__main__":
    main()
