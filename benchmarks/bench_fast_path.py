"""The fast path, part by part, against plain TRL (issue "Fast path", and the GPU part of issue "Benchmarks" item 1).

Every variant trains a fresh, identical model (same seed) on the same paper-shaped rows (Fig. 6b ranking prompts:
5 history + 10 candidate posters, quoted-title answers), with the same settings (LoRA r=8, alpha=32, dropout 0.05 on
the language model only; per-device batch 4; lr 1e-4; beta 0.1), one variant after the other in ONE process; between
variants everything is freed and the CUDA peak counters are reset (peak = ``max_memory_allocated`` over
``train()``, weights included, as in ``../shared/tools/trl-vlm-baseline``). Variants (``--variants``, in order):

* ``trl_gc`` / ``trl_nogc``  -- plain ``trl.DPOTrainer``, gradient checkpointing on (TRL's default) / off;
* ``hano_nogc``              -- ``HaNoDPOTrainer`` with every HaNo part on (hardness column, responsiveness, NoDO
  absolute 0.01) and the fast paths OFF, checkpointing off: TRL's computation plus HaNo, the overhead of
  issue "Benchmarks" item 1 (compare with ``trl_nogc``);
* ``fast_prompt_once``       -- HaNo on + prompt once (each prompt packed once with its completions; the frozen vision
  tower runs under ``no_grad``, once per distinct image of the batch, and the reference forward does not toggle
  checkpointing: no backward through frozen modules, no hook leak);
* ``fast_vision_cache``      -- + the vision-feature cache (each distinct poster's features computed once);
* ``fast_ref_cache``         -- + the reference log-prob cache (one pass before training) = the library's defaults;
* ``fast_nogc``, ``fast_prompt_once_nogc``, ``fast_vision_cache_nogc`` -- the same with checkpointing off.

Reported per variant: the median step time (``on_step_begin`` -> ``on_step_end``, CUDA-synchronised), the median
period (``on_step_end`` -> next ``on_step_end``: step + collation + logging), pairs/s = batch / period, tokens/s (the
non-pad tokens of TRL's layout of the same batch / period, so every variant is credited with the same work), an MFU
estimate, the peak memory, the setup time (trainer construction, which includes the reference cache's pass), the
vision cache's hits and misses, and the forward hooks left on ``embed_tokens``/``patch_embed`` after training (TRL
adds one per step under checkpointing). MFU = F_step / period / peak, with F_step of TRL's layout (model FLOPs, no
recompute):

    F_fwd = 2 N_lm T + 2 V d C + 2 L d sum_s S_s^2 + 2 N_vis P;   F_bwd = 2 N_lm T + 2 V d C + 4 L d sum_s S_s^2
                                                                          + 4 N_lora T
    F_step = 2 F_fwd + F_bwd  (policy and reference forward, policy backward)

N_lm: language-model parameters without the embedding; V d: the LM head, applied at the C completion tokens only (TRL's
fused head on CUDA); L layers, d = heads x head_dim; S_s the non-pad length of each of the 2B sequences, T their sum;
P vision patches; N_vis the vision tower's parameters; N_lora the adapter's. Peak 989.4 TFLOP/s (H100/H200 SXM bf16
dense) unless ``--peak-tflops``.

GPU (Qwen2.5-VL-3B architecture, random weights, bf16, sdpa; ML-1M poster size 185x278 = 70 image tokens each)::

    python benchmarks/bench_fast_path.py --qwen-3b --out benchmarks/results/fast_path_qwen3b.json

CPU dry run of every code path (tiny Qwen2.5-VL)::

    python benchmarks/bench_fast_path.py --warmup 1 --steps 2
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_trainer_overhead import (  # noqa: E402  (shared model, data and FLOP helpers)
    ALL_OFF,
    ALL_ON,
    FAST_OFF,
    MIB,
    StepClock,
    batch_shapes,
    build_model,
    build_processor,
    common_settings,
    lora_config,
    make_dataset,
    model_flops_per_step,
    parameter_counts,
    peak_flops,
)

FAST = dict(fast_prompt_once=True, fast_vision_cache=True, fast_ref_cache=True)
PROMPT_ONCE = dict(fast_prompt_once=True, fast_vision_cache=False, fast_ref_cache=False)
VISION = dict(fast_prompt_once=True, fast_vision_cache=True, fast_ref_cache=False)
# name -> (HaNoDPOConfig fields, or None for trl.DPOTrainer; gradient checkpointing; description)
VARIANTS = {
    "trl_gc": (None, True, "trl.DPOTrainer, gradient checkpointing on (TRL's default)"),
    "trl_nogc": (None, False, "trl.DPOTrainer, gradient checkpointing off"),
    "hano_nogc": ({**ALL_ON, **FAST_OFF}, False, "HaNoDPOTrainer, HaNo on, fast paths off, checkpointing off"),
    "hano_nogc_no_noise": ({**ALL_ON, "lora_noise_std": 0.0, **FAST_OFF}, False,
                           "HaNoDPOTrainer, hardness + responsiveness, no NoDO, fast paths off, checkpointing off"),
    "hano_nogc_noise_only": ({**ALL_OFF, "lora_noise_std": 0.01, **FAST_OFF}, False,
                             "HaNoDPOTrainer, NoDO only, fast paths off, checkpointing off"),
    "hano_off_nogc": ({**ALL_OFF, **FAST_OFF}, False, "HaNoDPOTrainer, everything off (TRL's computation)"),
    "fast_prompt_once": ({**ALL_ON, **PROMPT_ONCE}, True, "HaNo on + prompt once, checkpointing on"),
    "fast_vision_cache": ({**ALL_ON, **VISION}, True, "+ vision-feature cache, checkpointing on"),
    "fast_ref_cache": ({**ALL_ON, **FAST}, True, "+ reference cache = library defaults, checkpointing on"),
    "fast_nogc": ({**ALL_ON, **FAST}, False, "library defaults, checkpointing off"),
    "fast_prompt_once_nogc": ({**ALL_ON, **PROMPT_ONCE}, False, "HaNo on + prompt once, checkpointing off"),
    "fast_vision_cache_nogc": ({**ALL_ON, **VISION}, False, "+ vision-feature cache, checkpointing off"),
}
DEFAULT_ORDER = ["trl_gc", "fast_ref_cache", "trl_nogc", "fast_nogc", "fast_prompt_once", "fast_vision_cache",
                 "hano_nogc", "fast_prompt_once_nogc", "fast_vision_cache_nogc"]


def build_trainer(name: str, processor, dataset, args, output_dir: Path):
    from trl import DPOConfig, DPOTrainer

    from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer

    fields, checkpointing, _ = VARIANTS[name]
    common = {**common_settings(name, args, output_dir, checkpointing), "logging_steps": 1}
    model = build_model(processor, args)
    if fields is None:
        return DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=dataset, processing_class=processor,
                          peft_config=lora_config(model))
    return HaNoDPOTrainer(model=model, args=HaNoDPOConfig(**common, **fields), train_dataset=dataset,
                          processing_class=processor, peft_config=lora_config(model))


def hook_counts(trainer) -> dict[str, int]:
    """Forward hooks on the input embeddings of the language model and the vision tower after training."""
    base = trainer.model.get_base_model()
    counts = {"embed_tokens": len(base.get_input_embeddings()._forward_hooks)}
    visual = getattr(getattr(base, "model", None), "visual", None)
    if visual is not None:
        counts["patch_embed"] = len(visual.patch_embed._forward_hooks)
    return counts


def free_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_variant(name: str, processor, dataset, args, cuda: bool, workdir: Path) -> dict:
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    free_memory(cuda)
    out: dict = {"description": VARIANTS[name][2], "gradient_checkpointing": VARIANTS[name][1]}
    if cuda:
        out["allocated_before_build_mib"] = torch.cuda.memory_allocated() / MIB
    start = time.perf_counter()
    trainer = build_trainer(name, processor, dataset, args, workdir)
    sync()
    out["setup_s"] = time.perf_counter() - start
    out["fast_path_off_reason"] = getattr(trainer, "fast_path_off_reason", "n/a (trl)")
    clock = StepClock(name, None, sync)
    trainer.add_callback(clock)
    if cuda:
        out["allocated_before_train_mib"] = torch.cuda.memory_allocated() / MIB
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    sync()
    out["train_s"] = time.perf_counter() - start
    if cuda:
        out["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
    steps, periods = clock.steps[args.warmup:], clock.periods[args.warmup:]
    out.update(steps_s=clock.steps, periods_s=clock.periods, measured_steps=len(steps),
               median_step_s=statistics.median(steps), median_period_s=statistics.median(periods))
    out["hooks_after_train"] = hook_counts(trainer)
    caches = [c for c in getattr(trainer, "_vision_caches", {}).values() if c is not None]
    if caches:
        out["vision_cache"] = {"entries": sum(len(c) for c in caches), "hits": sum(c.hits for c in caches),
                               "misses": sum(c.misses for c in caches)}
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    out["first_losses"] = losses[:3]
    del trainer, clock
    return out


def markdown_table(result: dict) -> str:
    variants = result["variants"]
    base = variants.get("trl_gc", {}).get("pairs_per_s")
    base_nogc = variants.get("trl_nogc", {}).get("pairs_per_s")
    rows = ["| variant | GC | median step s | median period s | pairs/s | x TRL default | x TRL no-GC | tokens/s | MFU "
            "| peak alloc GiB | setup s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        if "error" in v:
            rows.append(f"| {name} | {'on' if v['gradient_checkpointing'] else 'off'} | failed: {v['error'][:80]} "
                        "| | | | | | | | |")
            continue
        peak = f"{v['peak_allocated_mib'] / 1024:.1f}" if "peak_allocated_mib" in v else "n/a"
        ratio = f"{v['pairs_per_s'] / base:.2f}" if base else "n/a"
        ratio_nogc = f"{v['pairs_per_s'] / base_nogc:.2f}" if base_nogc else "n/a"
        mfu = f"{v['mfu']:.1%}" if "mfu" in v else "n/a"
        rows.append(f"| {name} | {'on' if v['gradient_checkpointing'] else 'off'} | {v['median_step_s']:.3f} "
                    f"| {v['median_period_s']:.3f} | {v['pairs_per_s']:.3f} | {ratio} | {ratio_nogc} "
                    f"| {v['tokens_per_s']:.0f} | {mfu} | {peak} | {v['setup_s']:.1f} |")
    return "\n".join(rows)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_ORDER, choices=list(VARIANTS),
                        help="in order; a name given twice is measured twice (the second as name#2)")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="steps discarded at the start of each variant")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (per device)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None,
                        help="poster width height (default 185 278 with --qwen-3b: 70 image tokens; else 56 84)")
    parser.add_argument("--items", type=int, default=100, help="distinct items (posters) the rows draw from")
    parser.add_argument("--tiny-hidden", type=int, default=64, help="hidden size of the tiny CPU model")
    parser.add_argument("--tiny-layers", type=int, default=2, help="language-model layers of the tiny CPU model")
    parser.add_argument("--qwen-3b", action="store_true", help="Qwen2.5-VL-3B architecture, bf16, on a CUDA GPU")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds: start no further variant after this much time (the rest are listed as skipped)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    parser.add_argument("--out", type=str, default=None, help="JSON file (written after every variant)")
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = [185, 278] if args.qwen_3b else [56, 84]
    if args.qwen_3b and not torch.cuda.is_available():
        parser.error("--qwen-3b needs a CUDA GPU")

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    begin = time.perf_counter()
    cuda = args.qwen_3b
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    processor = build_processor(args.qwen_3b)
    dataset = make_dataset(args)
    out_path = Path(args.out) if args.out else HERE / "results" / (
        "fast_path_qwen3b.json" if cuda else "fast_path_cpu.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python benchmarks/bench_fast_path.py " + " ".join(argv),
        "device": device,
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "peft")},
        "python": platform.python_version(),
        "settings": vars(args),
        "variants": {},
    }
    print(f"device: {device}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        shapes = params = None
        for position, name in enumerate(args.variants):
            key = name if name not in args.variants[:position] else f"{name}#{args.variants[:position].count(name) + 1}"
            elapsed = time.perf_counter() - begin
            if args.deadline is not None and elapsed > args.deadline:
                result["variants"][key] = {"description": VARIANTS[name][2], "gradient_checkpointing":
                                            VARIANTS[name][1], "error": f"skipped: deadline ({elapsed:.0f} s)"}
                print(f"{name}: skipped (deadline)", flush=True)
                continue
            print(f"{name}: {VARIANTS[name][2]} ...", flush=True)
            try:
                if shapes is None:  # TRL's layout of the measured batches: the work every variant is credited with
                    probe = build_trainer("trl_nogc", processor, dataset, args, Path(tmp))
                    shapes = batch_shapes(probe, args.warmup + args.steps)[args.warmup:]
                    params = parameter_counts(probe.model)
                    del probe
                v = run_variant(name, processor, dataset, args, cuda, Path(tmp))
                period = v["median_period_s"]
                flops = statistics.mean(model_flops_per_step(s, params) for s in shapes)
                peak = peak_flops(device, args.peak_tflops)
                v["pairs_per_s"] = args.batch_size / period
                v["tokens_per_s"] = statistics.mean(s["tokens"] for s in shapes) / period
                v["model_tflops_per_step"] = flops / 1e12
                if peak:
                    v["mfu"] = flops / period / peak
                print(f"  step {v['median_step_s']:.3f} s, period {period:.3f} s, {v['pairs_per_s']:.3f} pairs/s, "
                      f"peak {v.get('peak_allocated_mib', float('nan')) / 1024:.1f} GiB, setup {v['setup_s']:.1f} s, "
                      f"hooks {v['hooks_after_train']}, cache {v.get('vision_cache')}", flush=True)
            except Exception as e:  # noqa: BLE001 - one failed variant (e.g. out of memory) must not stop the others
                v = {"description": VARIANTS[name][2], "gradient_checkpointing": VARIANTS[name][1],
                     "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]}
                print(f"  FAILED: {v['error'][:500]}", flush=True)
            result["variants"][key] = v
            free_memory(cuda)
            if shapes is not None:
                result["batch_shapes_trl_layout"] = shapes
                result["parameters"] = params
            result["table"] = markdown_table(result)
            out_path.write_text(json.dumps(result, indent=1))
    result["total_s"] = time.perf_counter() - begin
    out_path.write_text(json.dumps(result, indent=1))
    print(result["table"])
    print(f"wrote {out_path} ({result['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
