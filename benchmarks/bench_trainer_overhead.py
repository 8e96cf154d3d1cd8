"""Step-time and memory overhead of ``HaNoDPOTrainer`` over ``trl.DPOTrainer`` (issue 5, item 1).

Every variant trains the same model (an identical copy, same seed), on the same rows in the same order
(``train_sampling_strategy="sequential"``), with the same settings (LoRA r=8, alpha=32, dropout 0.05 on the language
model only; batch 4; gradient checkpointing as TRL's default). Variants (``--variants``):

* ``trl``             -- ``trl.DPOTrainer``; ``trl_b`` -- a second, identical one (the measurement's noise floor);
* ``hano``            -- ``HaNoDPOTrainer`` with every HaNo part on (hardness column, responsiveness, NoDO absolute
  ``lora_noise_std=0.01``) on TRL's own computation (fast paths off): the overhead the issue's targets are about;
* ``hano_fast``       -- the same with the library's defaults (prompt-once packing, vision-feature cache, cached
  reference log-probs): what a user gets, which does less work than TRL for the same batch;
* ``hano_off``        -- ``HaNoDPOTrainer`` with everything off (== TRL's computation);
* ``hano_no_noise`` / ``hano_noise_only`` -- hardness + responsiveness without NoDO, and NoDO alone: where ``hano``'s
  overhead goes.

Step time: all variants run in ONE process, interleaved step by step. Each trainer runs its own ``train()`` in a
thread, and a baton (held from one ``on_step_end`` to the next) lets exactly one of them run at a time, in a fresh
random order every round. Reported per variant: the median ``step`` (``on_step_begin`` -> ``on_step_end``: forward,
backward, clipping, optimizer) and the median ``period`` (``on_step_end`` -> next ``on_step_end`` while holding the
baton: the step plus collating the next batch and logging), over the steps after ``--warmup``. Round k holds step k
of every variant, on the same batch k, back to back; the overhead is the median over rounds of the per-round ratio
(``paired_step_ratio``, with a 95% bootstrap interval), which cancels the batch-to-batch variation and the slow drift
of a shared machine's load. ``trl_b`` vs ``trl`` shows how far two identical trainers differ on the machine at hand.

Peak memory: each variant in its OWN subprocess (a process's high-water mark would otherwise cover all of them), run
before the interleaved timing, while the parent holds no model (on a GPU, the children need that memory).

* CPU: the resident set's high-water mark (``VmHWM`` of ``/proc/self/status``), reset through
  ``/proc/self/clear_refs`` right before ``train()``, so it covers training only (setup, e.g. the cached reference
  log-probs of ``hano_fast``, is excluded; ``process_peak_rss_mib`` from ``getrusage`` includes it). The children
  run with ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`` so that glibc hands large blocks back to the OS
  when torch frees them: the high-water mark then follows the live tensors (plus the interpreter and libraries,
  ~0.5 GiB) instead of malloc's cached free memory. ``train_increment_mib`` = peak - RSS just before ``train()``.
* GPU: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` after ``reset_peak_memory_stats()`` before
  ``train()``.

Throughput (per variant, from the median ``period``): pairs/s = batch / period; tokens/s = the non-pad tokens of TRL's
layout of the batch (prompt + completion, chosen and rejected rows, image tokens included) / period. MFU (GPU; or
with ``--peak-tflops``) = model FLOPs per step / period / peak FLOP/s, with the model FLOPs of TRL's layout of the
batch (so the variants are compared on the same work; ``hano_fast`` skips part of it, so its figure is
"TRL-equivalent"):

    F_fwd  = 2 N_lm T + 2 V d C  +  2 L d sum_s S_s^2  +  2 N_vis P        (one forward: LM, LM head at the C
                                                                            completion tokens, causal attention,
                                                                            vision tower)
    F_bwd  = 2 N_lm T + 2 V d C  +  4 L d sum_s S_s^2  +  4 N_lora T       (activation gradients through the frozen
                                                                            LM, LoRA weight gradients; no vision
                                                                            backward: frozen and below every adapter)
    F_step = F_fwd (policy) + F_fwd (reference) + F_bwd (policy)

with N_lm the language model's parameters without the embedding table, V d the (tied) LM head, L layers, d the
attention width (heads x head_dim), S_s each sequence's non-pad length, T = sum_s S_s, P the vision patches before
merging, N_vis the vision tower's parameters, N_lora the adapter's. The LM head is counted at the completion tokens
only (TRL's fused head on CUDA projects only those), gradient-checkpointing recompute is not counted (model FLOPs,
not hardware FLOPs), nor are the vision tower's windowed attention, norms and activations. Peak: bf16 dense,
989.4 TFLOP/s for H100/H200
SXM, 312 for A100; other devices need ``--peak-tflops``.

CPU (tiny random Qwen2.5-VL, the real architecture; 5 history + 10 candidate images of 56x84 px per prompt, 6 image
tokens each; ``--image-size 185 278`` gives ML-1M's 70 tokens per poster, at ~20 s per step on 2 cores)::

    python benchmarks/bench_trainer_overhead.py

Component timing (on by default, ``--components N`` rounds): ONE ``HaNoDPOTrainer`` (the ``hano`` variant) runs
``training_step`` on the same batches with its parts switched off / hardness + responsiveness / NoDO / all on, in a
random order every round, plus ``trl``'s ``training_step``; the paired ratio to "off" (which is TRL's own
``_compute_loss``) isolates each part's cost from instance and thread effects.

Where the overhead goes (interleaved ablations, and the time inside the HaNo-specific functions)::

    python benchmarks/bench_trainer_overhead.py --variants trl trl_b hano hano_fast hano_off hano_no_noise \\
        hano_noise_only --breakdown

GPU (Qwen2.5-VL-3B architecture, random weights, bf16, the real Qwen2.5 tokenizer)::

    python benchmarks/bench_trainer_overhead.py --qwen-3b --no-gradient-checkpointing --variants trl trl_b hano \
        --steps 10 --warmup 2 --components 0 --memory-variants trl hano --memory-repeats 1

Its one GPU run (H200) finished the interleaved timing and then failed in the memory stage, which then ran after
the timing, beside the parent's three models (out of memory); the memory stage now runs first. The GPU numbers in
``benchmarks/README.md`` come from ``bench_fast_path.py`` (same model, data and settings, variants in sequence).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_scoring import poster  # noqa: E402  (the same random posters)

from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer  # noqa: E402
from hanorec_trl.data.prompts import DEFAULT_TEMPLATES, assistant_message, ranking_prompt  # noqa: E402
from hanorec_trl.model_utils import language_model_lora_regex  # noqa: E402
from hanorec_trl.processing import qwen2_5_tokenizer, qwen2_5_vl_processor  # noqa: E402
from hanorec_trl.testing import qwen2_5_vl_3b, tiny_qwen2_5_vl, tiny_tokenizer  # noqa: E402

RESULTS = HERE / "results"
ALL_ON = dict(use_hardness=True, use_responsiveness=True, lora_noise_std=0.01, lora_noise_mode="absolute")
FAST_OFF = dict(fast_prompt_once=False, fast_vision_cache=False, fast_ref_cache=False)
ALL_OFF = dict(use_hardness=False, use_responsiveness=False, lora_noise_std=0.0)
# name -> (HaNo config fields or None for trl.DPOTrainer, description)
VARIANTS = {
    "trl": (None, "trl.DPOTrainer"),
    "trl_b": (None, "a second trl.DPOTrainer (identical to trl): the measurement's noise floor"),
    "hano": ({**ALL_ON, **FAST_OFF}, "HaNoDPOTrainer, hardness + responsiveness + NoDO 0.01, fast paths off"),
    "hano_fast": (dict(ALL_ON), "HaNoDPOTrainer, hardness + responsiveness + NoDO 0.01, library defaults (fast paths)"),
    "hano_off": ({**ALL_OFF, **FAST_OFF}, "HaNoDPOTrainer, everything off (== TRL's computation)"),
    "hano_no_noise": ({**ALL_ON, "lora_noise_std": 0.0, **FAST_OFF}, "HaNoDPOTrainer, hardness + responsiveness"),
    "hano_noise_only": ({**ALL_OFF, "lora_noise_std": 0.01, **FAST_OFF}, "HaNoDPOTrainer, NoDO 0.01 only"),
}
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # bf16 dense, SXM
MIB = 2**20


# ------------------------------------------------------------------------------------------------------ model + data
def build_processor(qwen_3b: bool):
    tokenizer = qwen2_5_tokenizer() if qwen_3b else tiny_tokenizer()
    # Qwen2.5-VL's released pixel bounds (the defaults): a 185x278 poster becomes 7x10 = 70 merged image tokens
    return qwen2_5_vl_processor(tokenizer)


def build_model(processor, args):
    """A fresh model; every call gives identical weights (fixed seed)."""
    if not args.qwen_3b:
        return tiny_qwen2_5_vl(processor.tokenizer, hidden_size=args.tiny_hidden, num_layers=args.tiny_layers)
    return qwen2_5_vl_3b(processor.tokenizer, device="cuda", dtype=torch.bfloat16)


def preference_rows(n_rows: int, image_size: tuple[int, int], n_history: int = 5, n_candidates: int = 10,
                    n_items: int = 300, seed: int = 0) -> list[dict]:
    """Paper-shaped ranking DPO rows (Fig. 6b): 5 history + 10 candidate posters, quoted-title answers, lambda."""
    words = "night city love story dark war summer king queen lost secret house blue golden star".split()
    rng = np.random.default_rng(seed)
    titles = [" ".join(rng.choice(words, size=int(rng.integers(1, 5)))).title() + f" ({1930 + i % 70})"
              for i in range(n_items)]
    posters = [poster(seed * 100_000 + i, image_size) for i in range(n_items)]  # items recur across rows, as in data
    rows = []
    for _ in range(n_rows):
        picks = rng.choice(n_items, size=n_history + n_candidates, replace=False)
        history, candidates = picks[:n_history], picks[n_history:]
        target, negative = rng.choice(candidates, size=2, replace=False)
        prompt, images = ranking_prompt([titles[i] for i in history], [titles[i] for i in candidates],
                                        [posters[i] for i in history], [posters[i] for i in candidates])
        rows.append({
            "prompt": prompt,
            "images": images,
            "chosen": assistant_message(DEFAULT_TEMPLATES.answer_text(titles[target])),
            "rejected": assistant_message(DEFAULT_TEMPLATES.answer_text(titles[negative])),
            "hano_lambda": float(rng.uniform(0.95, 1.05)),
        })
    return rows


def lora_config(model):
    from peft import LoraConfig

    # the paper's adapter (r 8, alpha 32, dropout 0.05), on the language model only
    return LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=language_model_lora_regex(model))


def common_settings(name: str, args, output_dir: Path, gradient_checkpointing: bool) -> dict:
    """The DPOConfig fields every variant shares (the issue's setup; bf16 on the GPU, fp32 on the CPU)."""
    return dict(
        output_dir=str(output_dir / name),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-4,
        beta=0.1,
        max_length=None,  # TRL's default 1024 would cut image tokens
        train_sampling_strategy="sequential",
        gradient_checkpointing=gradient_checkpointing,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **(dict(bf16=True) if args.qwen_3b else dict(use_cpu=True, bf16=False)),
    )


def build_trainer(name: str, processor, dataset, args, output_dir: Path):
    from trl import DPOConfig, DPOTrainer

    fields, _ = VARIANTS[name]
    common = common_settings(name, args, output_dir, not args.no_gradient_checkpointing)
    if fields is None:
        config, trainer_cls = DPOConfig(**common), DPOTrainer
    else:
        config, trainer_cls = HaNoDPOConfig(**common, **fields), HaNoDPOTrainer
    model = build_model(processor, args)
    return trainer_cls(model=model, args=config, train_dataset=dataset, processing_class=processor,
                       peft_config=lora_config(model))


# ---------------------------------------------------------------------------------------------- interleaved timing
class Baton:
    """Lets exactly one of several threads run at a time; hands over in a fresh random order every round."""

    def __init__(self, names: list[str], seed: int = 0):
        self.cond = threading.Condition()
        self.active = list(names)
        self.rng = random.Random(seed)
        self.queue: list[str] = []
        self.holder = self._next(None)

    def _next(self, current: str | None) -> str | None:
        if not self.active:
            return None
        if not self.queue:
            self.queue = self.rng.sample(self.active, len(self.active))
            if len(self.queue) > 1 and self.queue[0] == current:  # never the same trainer twice in a row
                self.queue.append(self.queue.pop(0))
        return self.queue.pop(0)

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.holder == name)

    def release(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.active.remove(name)
                self.queue = [n for n in self.queue if n != name]
            self.holder = self._next(name)
            self.cond.notify_all()


class StepClock:
    """TrainerCallback: records step and period times; with a baton, hands over after every step."""

    def __init__(self, name: str, baton: Baton | None, sync):
        self.name, self.baton, self.sync = name, baton, sync
        self.steps: list[float] = []
        self.periods: list[float] = []
        self._begin = self._resume = 0.0

    def __getattr__(self, attr):
        if attr.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(attr)

    def on_train_begin(self, args, state, control, **kwargs):
        self.sync()
        self._resume = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.sync()
        self._begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        end = time.perf_counter()
        self.steps.append(end - self._begin)
        self.periods.append(end - self._resume)
        if self.baton is not None:
            self.baton.release(self.name)
            self.baton.acquire(self.name)
        self._resume = time.perf_counter()


def run_interleaved(trainers: dict, sync, seed: int = 0) -> dict[str, StepClock]:
    baton = Baton(list(trainers), seed=seed)
    clocks = {name: StepClock(name, baton, sync) for name in trainers}
    errors: dict[str, BaseException] = {}

    def work(name):
        baton.acquire(name)
        try:
            trainers[name].add_callback(clocks[name])
            trainers[name].train()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors[name] = e
        finally:
            baton.release(name, finished=True)

    threads = [threading.Thread(target=work, args=(name,), name=name) for name in trainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"variant {name!r} failed: {type(error).__name__}: {error}") from error
    return clocks


# ---------------------------------------------------------------------------------------------------- breakdown
class PartTimer:
    """Wall time spent in named parts of the HaNo trainer, per variant (the thread's name), for ``--breakdown``.

    Patches the classes for the duration of a ``with`` block. On a GPU each timed part synchronises, which changes
    what it measures (the asynchronous queue drains inside the part): use it to locate, not to quote, overhead there.
    """

    def __init__(self, sync):
        self.sync = sync
        self.totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def _add(self, part: str, seconds: float) -> None:
        self.totals[threading.current_thread().name][part] += seconds

    def wrap(self, fn, part: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self._add(part, time.perf_counter() - start)

        return timed

    def wrap_context(self, factory, part: str):
        timer = self

        @contextlib.contextmanager
        def timed(*args, **kwargs):
            start = time.perf_counter()
            with factory(*args, **kwargs) as value:
                timer._add(part + " (enter)", time.perf_counter() - start)
                try:
                    yield value
                finally:
                    start = time.perf_counter()
            timer._add(part + " (exit)", time.perf_counter() - start)

        return timed

    @contextlib.contextmanager
    def patched(self, trainers: dict):
        import hanorec_trl.trainer as hano_trainer

        patches = [
            (HaNoDPOTrainer, "_set_adaptive_beta", "eta + beta' + hano metrics (_set_adaptive_beta)"),
            (HaNoDPOTrainer, "_reference_logps", "reference forward (_reference_logps)"),
            (HaNoDPOTrainer, "_noise_generator", "noise generator seeding (_noise_generator)"),
            (hano_trainer.HardnessCollator, "__call__", "collator incl. hardness column"),
        ]
        saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
        saved.append((hano_trainer, "lora_noise", hano_trainer.lora_noise))
        for owner, name, part in patches:
            setattr(owner, name, self.wrap(owner.__dict__[name], part))
        hano_trainer.lora_noise = self.wrap_context(hano_trainer.lora_noise,
                                                    "lora_noise: sample noise, perturb / restore")
        for trainer in trainers.values():
            collator = trainer.data_collator
            if isinstance(collator, hano_trainer.HardnessCollator):
                collator.inner = self.wrap(collator.inner, "collator (TRL's or packed)")
            else:
                trainer.data_collator = self.wrap(collator, "collator (TRL's or packed)")
        try:
            yield self
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    def per_step_ms(self, steps: int) -> dict[str, dict[str, float]]:
        return {variant: {part: 1000 * total / steps for part, total in sorted(parts.items())}
                for variant, parts in self.totals.items()}


# ------------------------------------------------------------------------------------------- component timing
COMPONENTS = {  # HaNoDPOConfig fields toggled on ONE HaNoDPOTrainer between its training steps
    "off (TRL's computation)": dict(use_hardness=False, use_responsiveness=False, lora_noise_std=0.0),
    "hardness + responsiveness": dict(use_hardness=True, use_responsiveness=True, lora_noise_std=0.0),
    "NoDO 0.01": dict(use_hardness=False, use_responsiveness=False, lora_noise_std=0.01),
    "all on": dict(use_hardness=True, use_responsiveness=True, lora_noise_std=0.01),
}


def component_timing(trainers: dict, rounds: int, n_batches: int, sync, seed: int = 0) -> dict:
    """``training_step`` (forward, backward) of the ``hano`` trainer with its parts switched on and off in turn, on
    the same model, batch and thread, plus ``trl``'s ``training_step`` on its own copy; paired per round.

    Switching the config between steps is exact here: the trainer reads these fields at every step (with
    everything off it calls TRL's ``_compute_loss`` unchanged). Collation is not included (see ``--breakdown``).
    """
    hano, trl = trainers["hano"], trainers["trl"]
    batches = {name: [] for name in ("hano", "trl")}
    for name, trainer in (("hano", hano), ("trl", trl)):
        for i, batch in enumerate(trainer.get_train_dataloader()):
            if i == n_batches:
                break
            batches[name].append(batch)
    saved = {k: getattr(hano.args, k) for k in COMPONENTS["all on"]}
    times: dict[str, list[float]] = {name: [] for name in [*COMPONENTS, "trl.DPOTrainer"]}
    rng = random.Random(seed)
    try:
        for r in range(rounds):
            order = rng.sample(list(times), len(times))
            for name in order:
                if name == "trl.DPOTrainer":
                    trainer, batch = trl, batches["trl"][r % n_batches]
                else:
                    trainer, batch = hano, batches["hano"][r % n_batches]
                    for key, value in COMPONENTS[name].items():
                        setattr(hano.args, key, value)
                sync()
                start = time.perf_counter()
                trainer.training_step(trainer.model_wrapped, batch)
                sync()
                times[name].append(time.perf_counter() - start)
                trainer.model_wrapped.zero_grad(set_to_none=True)
    finally:
        for key, value in saved.items():
            setattr(hano.args, key, value)
    base = times["off (TRL's computation)"]
    return {name: {"median_s": statistics.median(t), "paired_ratio_vs_off": paired_ratio(t, base)}
            for name, t in times.items()}


# ------------------------------------------------------------------------------------------------------- memory
def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child_memory_run(name: str, args) -> dict:
    """Runs one variant alone (this process) and returns its peak memory and (non-interleaved) step times."""
    import tempfile

    processor = build_processor(args.qwen_3b)
    dataset = make_dataset(args)
    cuda = torch.cuda.is_available() and args.qwen_3b
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(name, processor, dataset, args, Path(tmp))
        clock = StepClock(name, None, sync)
        trainer.add_callback(clock)
        out = {"variant": name}
        if cuda:
            torch.cuda.synchronize()
            out["allocated_before_train_mib"] = torch.cuda.memory_allocated() / MIB
            torch.cuda.reset_peak_memory_stats()
        else:
            out["rss_before_train_mib"] = _proc_status_kib("VmRSS") / 1024
            out["rss_peak_reset"] = _reset_rss_peak()
        trainer.train()
        if cuda:
            out["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
            out["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
        else:
            out["train_peak_rss_mib"] = _proc_status_kib("VmHWM") / 1024
            out["train_increment_mib"] = out["train_peak_rss_mib"] - out["rss_before_train_mib"]
        out["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["median_step_s_alone"] = statistics.median(clock.steps[args.warmup:])
    return out


def memory_runs(names: list[str], args, argv: list[str]) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.memory_repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", name]
            print(f"memory: {name} (repeat {repeat + 1}/{args.memory_repeats}) in a subprocess", flush=True)
            env = dict(os.environ)
            if not args.qwen_3b:
                # large blocks straight from/to the OS, so that the RSS high-water mark follows the live tensors
                # instead of glibc's cached free memory
                env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            marker = [line for line in proc.stdout.splitlines() if line.startswith("CHILD_RESULT ")]
            if proc.returncode != 0 or not marker:
                raise RuntimeError(f"memory run of {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            results[name].append(json.loads(marker[-1][len("CHILD_RESULT "):]))
    return results


# ----------------------------------------------------------------------------------------------- FLOPs and tokens
def batch_shapes(trainer, n_batches: int) -> list[dict]:
    """Token and patch counts of TRL's layout of the first ``n_batches`` batches (sequential sampler)."""
    shapes = []
    loader = trainer.get_train_dataloader()
    for i, batch in enumerate(loader):
        if i == n_batches:
            break
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        grid = batch.get("image_grid_thw")
        shapes.append({
            "sequences": len(lengths),
            "tokens": int(sum(lengths)),
            "sum_sq_lengths": float(sum(s * s for s in lengths)),
            "completion_tokens": int(batch["completion_mask"].sum()),
            "image_tokens": int((batch["input_ids"] == trainer.model.config.image_token_id).sum()),
            "vision_patches": int(grid.prod(dim=1).sum()) if grid is not None else 0,
        })
    return shapes


def parameter_counts(model) -> dict:
    """Parameter groups of a PEFT-wrapped Qwen2.5-VL model (unique tensors)."""
    base = model.get_base_model()
    inner = base.model
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    lm_all = sum(p.numel() for n, p in inner.language_model.named_parameters() if "lora_" not in n)
    embedding = inner.language_model.embed_tokens.weight.numel()
    text = base.config.get_text_config()
    return {
        "language_model_no_embedding": lm_all - embedding,
        "lm_head": base.lm_head.weight.numel(),
        "vision": sum(p.numel() for n, p in inner.visual.named_parameters() if "lora_" not in n),
        "lora": lora,
        "layers": text.num_hidden_layers,
        "attention_width": text.num_attention_heads * (getattr(text, "head_dim", None)
                                                       or text.hidden_size // text.num_attention_heads),
    }


def model_flops_per_step(shape: dict, params: dict) -> float:
    """F_step of the module docstring for one batch of TRL's layout."""
    lm = (2 * params["language_model_no_embedding"] * shape["tokens"]
          + 2 * params["lm_head"] * shape["completion_tokens"])
    attention = 2 * params["layers"] * params["attention_width"] * shape["sum_sq_lengths"]
    forward = lm + attention + 2 * params["vision"] * shape["vision_patches"]
    backward = lm + 2 * attention + 4 * params["lora"] * shape["tokens"]
    return 2 * forward + backward


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, tflops in PEAK_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


# ------------------------------------------------------------------------------------------------------- driver
def make_dataset(args):
    from datasets import Dataset

    n_rows = args.batch_size * (args.warmup + args.steps)
    return Dataset.from_list(preference_rows(n_rows, tuple(args.image_size), n_items=args.items))


def summarize(name: str, clock: StepClock, warmup: int, batch: int, shapes: list[dict], flops: list[float],
              peak: float | None) -> dict:
    steps, periods = clock.steps[warmup:], clock.periods[warmup:]
    period = statistics.median(periods)
    tokens = statistics.mean(s["tokens"] for s in shapes)
    out = {
        "description": VARIANTS[name][1],
        "measured_steps": len(steps),
        "median_step_s": statistics.median(steps),
        "median_period_s": period,
        "step_s_p10_p90": [float(np.percentile(steps, 10)), float(np.percentile(steps, 90))],
        "pairs_per_s": batch / period,
        "tokens_per_s": tokens / period,
        "model_tflops_per_step": statistics.mean(flops) / 1e12,
        "steps_s": steps,
        "periods_s": periods,
    }
    if peak:
        out["mfu"] = statistics.mean(flops) / period / peak
    return out


def paired_ratio(steps: list[float], base: list[float], seed: int = 0, resamples: int = 2000) -> dict:
    """Median over rounds of step_i / base_i (the same batch, run back to back) and its 95% bootstrap interval."""
    ratios = np.asarray(steps) / np.asarray(base)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(resamples, ratios.size), replace=True), axis=1)
    return {"median": float(np.median(ratios)), "ci95": [float(np.percentile(medians, 2.5)),
                                                         float(np.percentile(medians, 97.5))]}


def markdown_table(result: dict) -> str:
    memory = result.get("memory", {})
    rows = ["| variant | median step s | paired step ratio [95% CI] | median period s | paired period ratio | pairs/s "
            "| tokens/s | MFU | peak memory MiB | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        mem = memory.get(name, {}).get("peak_mib")
        base_mem = memory.get("trl", {}).get("peak_mib")
        step, period = v["paired_step_ratio"], v["paired_period_ratio"]
        rows.append(
            f"| {name} | {v['median_step_s']:.4f} | "
            f"{step['median']:.3f} [{step['ci95'][0]:.3f}, {step['ci95'][1]:.3f}] "
            f"| {v['median_period_s']:.4f} | {period['median']:.3f} "
            f"| {v['pairs_per_s']:.3g} | {v['tokens_per_s']:.4g} | "
            + (f"{v['mfu']:.1%}" if "mfu" in v else "n/a")
            + (f" | {mem:.0f} | {mem / base_mem:.4f} |" if mem and base_mem else " | n/a | n/a |")
        )
    return "\n".join(rows)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["trl", "hano", "hano_fast"], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=40, help="measured optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=8, help="steps discarded at the start of each variant (the "
                        "first steps of a process run slow while the allocator's caches fill)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (per device)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None,
                        help="poster width height (default: 185 278, ML-1M's posters = 70 image tokens each, with "
                        "--qwen-3b; 56 84 = 6 image tokens each on the CPU)")
    parser.add_argument("--items", type=int, default=300, help="distinct items (posters) the rows draw from")
    parser.add_argument("--tiny-hidden", type=int, default=64, help="hidden size of the tiny CPU model")
    parser.add_argument("--tiny-layers", type=int, default=2, help="language-model layers of the tiny CPU model")
    parser.add_argument("--qwen-3b", action="store_true", help="Qwen2.5-VL-3B architecture, bf16, on a CUDA GPU")
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="turn TRL's default off")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--components", type=int, default=30,
                        help="rounds of the per-component timing on one HaNo trainer (needs the 'hano' variant; "
                        "0: off)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the HaNo-specific parts of each step (patches the trainer classes)")
    parser.add_argument("--memory-steps", type=int, default=6, help="steps of each memory run after its warm-up")
    parser.add_argument("--memory-warmup", type=int, default=2, help="steps of each memory run before its timing")
    parser.add_argument("--memory-variants", nargs="+", default=["trl", "hano", "hano_fast"], choices=list(VARIANTS),
                        help="variants whose peak memory is measured (each in its own subprocess)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="memory subprocesses per variant (median)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=str, default=None, help="JSON file (default: benchmarks/results/...)")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = [185, 278] if args.qwen_3b else [56, 84]

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.qwen_3b and not torch.cuda.is_available():
        parser.error("--qwen-3b needs a CUDA GPU (a 3B model's DPO step takes tens of minutes on a CPU)")
    if "trl" not in args.variants:
        parser.error("--variants must include 'trl' (the baseline every ratio refers to)")
    if args.child:
        child_args = argparse.Namespace(**{**vars(args), "steps": args.memory_steps, "warmup": args.memory_warmup})
        print("CHILD_RESULT " + json.dumps(child_memory_run(args.child, child_args)), flush=True)
        return None

    import tempfile

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cuda = args.qwen_3b
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    runs = None
    if not args.no_memory:
        # first, while this process holds no model: on a GPU the children need the memory the trainers would take
        runs = memory_runs([n for n in args.variants if n in args.memory_variants], args, argv)
    print(f"device: {device}; building {len(args.variants)} trainers ...", flush=True)
    processor = build_processor(args.qwen_3b)
    dataset = make_dataset(args)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name in args.variants:
            start = time.perf_counter()
            trainers[name] = build_trainer(name, processor, dataset, args, Path(tmp))
            print(f"  {name}: built in {time.perf_counter() - start:.1f} s", flush=True)
        shapes = batch_shapes(trainers["trl"], args.warmup + args.steps)[args.warmup:]
        params = parameter_counts(trainers["trl"].model)
        flops = [model_flops_per_step(s, params) for s in shapes]
        print(f"interleaved timing: {args.warmup} + {args.steps} steps per variant ...", flush=True)
        start = time.perf_counter()
        load_before = os.getloadavg()
        if args.breakdown:
            timer = PartTimer(sync)
            with timer.patched(trainers):
                clocks = run_interleaved(trainers, sync)
            breakdown = timer.per_step_ms(args.warmup + args.steps)
        else:
            clocks, breakdown = run_interleaved(trainers, sync), None
        load_after = os.getloadavg()
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
        components = None
        if args.components and "hano" in trainers:
            print(f"component timing: {args.components} rounds on the 'hano' trainer ...", flush=True)
            components = component_timing(trainers, args.components, 4, sync)
        fast_off = {n: getattr(t, "fast_path_off_reason", None) for n, t in trainers.items()
                    if not n.startswith("trl")}
        del trainers

    peak = peak_flops(device, args.peak_tflops)
    result = {
        "command": "python benchmarks/bench_trainer_overhead.py " + " ".join(argv),
        "device": device,
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "peft")},
        "python": platform.python_version(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "prompt_shape": {"history_items": 5, "candidate_items": 10,
                         "mean_tokens_per_step_trl_layout": statistics.mean(s["tokens"] for s in shapes),
                         "mean_image_tokens_per_step": statistics.mean(s["image_tokens"] for s in shapes),
                         "mean_completion_tokens_per_step": statistics.mean(s["completion_tokens"] for s in shapes),
                         "mean_vision_patches_per_step": statistics.mean(s["vision_patches"] for s in shapes)},
        "load_average_1_5_15min": {"before": load_before, "after": load_after},
        "parameters": params,
        "peak_flops": peak,
        "fast_path_off_reason": fast_off,
        "variants": {name: summarize(name, clocks[name], args.warmup, args.batch_size, shapes, flops, peak)
                     for name in args.variants},
    }
    if breakdown is not None:
        result["breakdown_ms_per_step"] = breakdown
    if components is not None:
        result["components"] = components
    base = result["variants"]["trl"]
    for name, v in result["variants"].items():
        v["paired_step_ratio"] = paired_ratio(v["steps_s"], base["steps_s"])
        v["paired_period_ratio"] = paired_ratio(v["periods_s"], base["periods_s"])
        v["step_overhead"] = v["paired_step_ratio"]["median"] - 1
        v["period_overhead"] = v["paired_period_ratio"]["median"] - 1

    if runs is not None:
        key = "peak_allocated_mib" if cuda else "train_peak_rss_mib"
        result["memory"] = {
            name: {"measure": key, "peak_mib": statistics.median(r[key] for r in rs), "runs": rs}
            for name, rs in runs.items()
        }
        base_mem = result["memory"]["trl"]["peak_mib"]
        for name, m in result["memory"].items():
            m["overhead"] = m["peak_mib"] / base_mem - 1
            if not cuda:
                inc = statistics.median(r["train_increment_mib"] for r in m["runs"])
                base_inc = statistics.median(r["train_increment_mib"] for r in result["memory"]["trl"]["runs"])
                m["train_increment_mib"] = inc
                m["increment_overhead"] = inc / base_inc - 1

    table = markdown_table(result)
    result["table"] = table
    print(table)
    for name, v in result["variants"].items():
        if name != "trl":
            mem = result.get("memory", {}).get(name, {}).get("overhead")
            print(f"{name}: step {v['step_overhead']:+.2%} (paired median), period {v['period_overhead']:+.2%}"
                  + (f", peak memory {mem:+.2%}" if mem is not None else ""))
    if components is not None:
        print("one HaNo trainer, same batches, parts switched on/off between steps (training_step only):")
        for name, c in components.items():
            ratio = c["paired_ratio_vs_off"]
            print(f"  {name}: median {c['median_s']:.4f} s, paired ratio vs off {ratio['median']:.4f} "
                  f"[{ratio['ci95'][0]:.4f}, {ratio['ci95'][1]:.4f}]")
    if breakdown is not None:
        for variant, parts in breakdown.items():
            print(f"{variant}: " + "; ".join(f"{part} {ms:.1f} ms" for part, ms in parts.items()))
    out = Path(args.out) if args.out else RESULTS / ("trainer_overhead_qwen3b.json" if cuda else
                                                      "trainer_overhead_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
