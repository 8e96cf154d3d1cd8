"""Throughput of collaborative item tokens against title-only prompts, one run, one model (``docs/item_tokens.md``).

Configurations, each trained with TRL's ``SFTTrainer`` (LoRA r=8, alpha 32, dropout 0.05 on the language model's
attention and MLP projections, no gradient checkpointing, as the pipeline trains on CPU) on the same training
windows, and scored on the same test rows (10 candidates each):

* ``title only``: the next-item prompt naming items by title, title answers, scored by the answers' whole
  log-likelihood (prompt once, every candidate's tokens) -- the pipeline's setting today;
* ``soft tokens`` (LLaRA, :class:`~hanorec_trl.item_tokens.SoftItemTokens`) and ``trainable tokens``
  (:class:`~hanorec_trl.item_tokens.TrainableItemTokens`): the same prompt naming items by title and token
  (``"Title" <item_12>``), item-token answers, scored by the item token's log-prob (one prompt forward per row);
* ``soft tokens, token only``: the prompt names items by token alone (the shortest prompt).

Measures, per configuration, per wall second and per CPU second of this process (the second barely moves when other
processes load the machine): training rows/s (the median SFT step over ``--rounds`` runs, each after one warm-up
step), scoring rows/s (rows of 10 candidates) and, for item tokens, full-catalogue scoring rows/s (every item's
log-prob, :func:`~hanorec_trl.item_tokens.catalogue_log_probs`), medians of ``--score_repeats`` timings, and tokens
per training row. The runs and the timings are interleaved across configurations (see ``measure_all``), so a change
of the machine's load moves all of them alike. CF vectors: the SVD of the training interactions
(``cf_for_split``), fitted once.

    python benchmarks/bench_item_tokens.py --data_dir ../shared/data/ml-1m           # SmolLM2-135M-Instruct
    python benchmarks/bench_item_tokens.py --model tiny --rounds 1 --steps 2 --score_rows 4   # a tiny Qwen2

Writes ``benchmarks/results/item_tokens_throughput.json`` (``--output``) and prints a table for
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hanorec_trl.data import (  # noqa: E402
    PromptTemplates,
    ProtocolConfig,
    build_ranking_eval_dataset,
    build_sft_dataset,
    build_split,
    load_movielens_1m,
    write_synthetic_movielens,
)
from hanorec_trl.data.prompts import item_templates  # noqa: E402
from hanorec_trl.evaluation.scoring import score_candidates, score_first_tokens  # noqa: E402
from hanorec_trl.item_tokens import (  # noqa: E402
    ItemVocabulary,
    SoftItemTokens,
    TrainableItemTokens,
    catalogue_log_probs,
    cf_for_split,
)
from hanorec_trl.model_utils import language_model_lora_regex  # noqa: E402

NO_SYSTEM = PromptTemplates(system="")  # the pipeline's text-LLM setting (no default system prompt)
CONFIGS = {
    "title only": (None, NO_SYSTEM),
    "soft tokens": ("soft", item_templates("both", answer="token", base=NO_SYSTEM)),
    "trainable tokens": ("trainable", item_templates("both", answer="token", base=NO_SYSTEM)),
    "soft tokens, token only": ("soft", item_templates("token", answer="token", base=NO_SYSTEM)),
}


class StepClock(TrainerCallback):
    """Wall and CPU seconds of each optimizer step, batch loading included: the gaps between consecutive step ends.
    CPU seconds (this process, all its threads) barely move with other processes' load; wall seconds do."""

    def __init__(self):
        self.ends: list[tuple[float, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [(time.perf_counter(), time.process_time())]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append((time.perf_counter(), time.process_time()))

    def times(self, kind: int) -> list[float]:
        """Per-step seconds: ``kind`` 0 = wall, 1 = CPU."""
        return [b[kind] - a[kind] for a, b in zip(self.ends, self.ends[1:])]


def load_model(name: str):
    if name == "smollm2":
        from hanorec_trl.pretrained import smollm2_135m_instruct

        return smollm2_135m_instruct()
    from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return tiny_qwen2(tokenizer), tokenizer


def compact_head():
    """The pipeline's compact LM head on CPU when this checkout has it (recorded in the results)."""
    try:
        from hanorec_trl.fast.cpu_lm_head import compact_lm_head_on_cpu
    except ImportError:
        return contextlib.nullcontext(False)
    return compact_lm_head_on_cpu()


def seconds(call) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of ``call()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def train(variant: str | None, templates, world, args) -> dict:
    """One SFT run of a configuration: its step times, and the trained model with its scoring calls."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    data, split, cf, vocab = world
    model, tokenizer = load_model(args.model)
    started = time.perf_counter()
    items = None
    if variant == "soft":
        items = SoftItemTokens(vocab, cf)
    elif variant == "trainable":
        items = TrainableItemTokens(vocab, cf, titles=data.titles)
    if items is not None:
        items.install(model, tokenizer)
    install_seconds = time.perf_counter() - started
    item_tokens = vocab if items is not None else None
    examples = split.train[: args.batch_size * (args.steps + 1)]
    dataset = build_sft_dataset(examples, data, task="next_item", with_images=False, templates=templates,
                                item_tokens=item_tokens)
    tokens = [len(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                                return_dict=True)["input_ids"]) for row in dataset]
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=language_model_lora_regex(model))
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out, compact_head() as compact:
        sft_args = SFTConfig(output_dir=out, max_steps=args.steps + 1, per_device_train_batch_size=args.batch_size,
                             learning_rate=1e-4, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                             logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0,
                             gradient_checkpointing=False)
        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=items.lora_config(lora) if items is not None else lora, callbacks=[clock])
        trainer.train()
    rows = build_ranking_eval_dataset(split.test[: args.score_rows], data, with_images=False, templates=templates,
                                      item_tokens=item_tokens, prompt="next_item")
    model = trainer.model
    kw = dict(batch_size=args.score_batch_size, progress=False)
    if items is None:
        scorers = {"score": lambda r: score_candidates(model, tokenizer, r["prompt"], r["candidates"], **kw)}
    else:
        scorers = {"score": lambda r: score_first_tokens(model, tokenizer, r["prompt"], r["candidates"], **kw),
                   "catalogue": lambda r: catalogue_log_probs(model, tokenizer, r["prompt"], vocab, **kw)}
    return {"variant": variant, "prompt_item_line": templates.item_line, "answer": templates.answer,
            "install_seconds": install_seconds, "train_rows": len(dataset),
            "mean_tokens_per_row": statistics.mean(tokens),
            "step_times": clock.times(0)[1:], "step_cpu_times": clock.times(1)[1:],  # the first step warms up
            "compact_lm_head": bool(compact),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "rows": rows, "scorers": scorers}


def measure_all(world, args) -> dict:
    """Training: ``--rounds`` SFT runs per configuration, interleaved (round 1 of every configuration, then round
    2, ...); scoring: ``--score_repeats`` timings per configuration, interleaved, after one warm-up batch each. Rates
    are medians, so a change of the machine's load during the run moves every configuration alike."""
    runs: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for label, (variant, templates) in CONFIGS.items():
            run = train(variant, templates, world, args)
            before = runs.get(label, {})
            runs[label] = {**run, **{k: before.get(k, []) + run[k] for k in ("step_times", "step_cpu_times")}}
            print(f"round {round_ + 1} {label}: {statistics.median(run['step_times']):.2f} s/step", flush=True)
    for run in runs.values():
        for scorer in run["scorers"].values():
            scorer(run["rows"].select(range(min(args.score_batch_size, len(run["rows"])))))  # warm-up
        run["score_seconds"] = {name: [] for name in run["scorers"]}
    for _ in range(args.score_repeats):
        for label, run in runs.items():
            for name, scorer in run["scorers"].items():
                run["score_seconds"][name].append(seconds(lambda: scorer(run["rows"])))
    results = {}
    for label, run in runs.items():
        n = len(run["rows"])
        result = {k: v for k, v in run.items() if k not in ("rows", "scorers", "score_seconds")}
        timings = run["score_seconds"]
        for kind, suffix in ((0, "s"), (1, "cpu_s")):
            step = statistics.median(run["step_cpu_times" if kind else "step_times"])
            result[f"train_rows_per_{suffix}"] = args.batch_size / step
            for name, key in (("score", "score_rows_per_"), ("catalogue", "catalogue_rows_per_")):
                result[key + suffix] = (n / statistics.median(t[kind] for t in timings[name]) if name in timings
                                        else None)
        result.update(score_rows=n, score_seconds={k: [list(t) for t in v] for k, v in timings.items()})
        results[label] = result
        print(label, {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()
                      if not isinstance(v, (list, dict))}, flush=True)
    return results


def table_of(results: dict, suffix: str) -> str:
    """The markdown table of rates per wall second (``suffix="s"``) or per CPU second (``"cpu_s"``)."""
    base = results["title only"]
    lines = ["| configuration | tokens per row | train rows/s | x title | score rows/s (10 cand.) | x title | "
             "catalogue rows/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in results.items():
        train, score, catalogue = (r[f"{k}_per_{suffix}"] for k in ("train_rows", "score_rows", "catalogue_rows"))
        lines.append(f"| {label} | {r['mean_tokens_per_row']:.0f} | {train:.3f} | "
                     f"{train / base[f'train_rows_per_{suffix}']:.2f} | {score:.3f} | "
                     f"{score / base[f'score_rows_per_{suffix}']:.2f} | "
                     f"{f'{catalogue:.3f}' if catalogue else '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", help="a MovieLens-1M folder (default: a synthetic one, written to a temp dir)")
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--steps", type=int, default=3, help="timed SFT steps per run (after one warm-up step)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="SFT runs per configuration, interleaved")
    parser.add_argument("--score_rows", type=int, default=16, help="test rows scored per configuration")
    parser.add_argument("--score_repeats", type=int, default=3, help="scoring timings per configuration")
    parser.add_argument("--score_batch_size", type=int, default=4)
    parser.add_argument("--cf_dim", type=int, default=64)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "item_tokens_throughput.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.data_dir or write_synthetic_movielens(Path(scratch) / "data")
        data = load_movielens_1m(folder, images=False)
    split = build_split(data, ProtocolConfig(seed=0))
    cf_started = time.perf_counter()
    cf = cf_for_split(data, split, method="svd", dim=args.cf_dim)
    cf_seconds = time.perf_counter() - cf_started
    world = (data, split, cf, ItemVocabulary(data.item_ids))
    load_before = os.getloadavg()
    results = measure_all(world, args)
    tables = {suffix: table_of(results, suffix) for suffix in ("cpu_s", "s")}
    for suffix, table in tables.items():
        print(f"per {'CPU second' if suffix == 'cpu_s' else 'wall second'}:\n{table}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({
        "command": " ".join(sys.argv), "model": args.model, "data": data.name, "num_items": data.num_items,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "load_average_1_5_15min_at_start": load_before, "cf": cf.source, "cf_seconds": cf_seconds, "results": results,
        "table_per_cpu_second": tables["cpu_s"], "table_per_wall_second": tables["s"],
        "wall_seconds": time.perf_counter() - started,
        "load_average_1_5_15min_at_end": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
