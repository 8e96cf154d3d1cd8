"""Ranking-evaluation throughput: prompt-once likelihood scoring vs naive per-candidate scoring vs generation.

Each example is one ranking prompt in the paper's shape (5 history items + 10 candidates, one poster each) with its
10 candidate completions. Reports examples/s (median over repeats) for

* ``prompt_once`` -- :func:`hanorec_trl.evaluation.score_candidates` (prompt + images once, KV cache over candidates);
* ``naive``       -- the same scores with the prompt and its images re-run for every candidate (TRL-collator style);
* ``generation``  -- greedy generation of exactly ``--max-new-tokens`` tokens (the paper's protocol; parsing is
  negligible);

and checks that prompt-once and naive scores agree.

CPU (tiny random Qwen2.5-VL, the real architecture)::

    python benchmarks/bench_scoring.py --rows 8 --repeats 5

GPU (Qwen2.5-VL-3B architecture, random weights, bf16, the real Qwen2.5 tokenizer)::

    python benchmarks/bench_scoring.py --qwen-3b --rows 16 --batch-size 4 --repeats 3

Without a GPU ``--qwen-3b`` only builds the 3B model on the meta device and prints its size (a construction check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hanorec_trl.data.prompts import ranking_prompt  # noqa: E402
from hanorec_trl.evaluation import GenerationSettings, generate_answers, score_candidates  # noqa: E402
from hanorec_trl.processing import qwen2_5_tokenizer, qwen2_5_vl_processor  # noqa: E402
from hanorec_trl.testing import qwen2_5_vl_3b, tiny_qwen2_5_vl, tiny_tokenizer  # noqa: E402


def build_3b(device: str):
    """The Qwen2.5-VL-3B architecture (random weights, bf16) and its processor, with the real Qwen2.5 tokenizer."""
    tok = qwen2_5_tokenizer()
    model = qwen2_5_vl_3b(tok, device=device, dtype=torch.bfloat16)
    # ML-1M posters are about 185x278; 12,845,056 is Qwen's default max_pixels
    return model, qwen2_5_vl_processor(tok, min_pixels=3136, max_pixels=12845056)


def poster(seed: int, size: tuple[int, int]):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8))


def make_rows(n_rows: int, image_size: tuple[int, int], n_history: int = 5, n_candidates: int = 10):
    words = "night city love story dark war summer king queen lost secret house".split()
    rows = []
    for r in range(n_rows):
        rng = np.random.default_rng(r)

        def title():
            return (
                " ".join(rng.choice(words, size=int(rng.integers(2, 6)))).title()
                + f" ({1950 + int(rng.integers(0, 50))})"
            )

        history = [title() for _ in range(n_history)]
        cands = [title() for _ in range(n_candidates)]
        msgs, imgs = ranking_prompt(
            history,
            cands,
            [poster(1000 * r + i, image_size) for i in range(n_history)],
            [poster(1000 * r + 100 + j, image_size) for j in range(n_candidates)],
        )
        rows.append({"prompt": msgs, "images": imgs, "candidates": [f'"{c}"' for c in cands]})
    return rows


def timed(fn, repeats: int, sync) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="ranking examples per measurement")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per forward (prompt-once, generation)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements; the median is reported")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generation length (a quoted title)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[185, 278], help="poster width height")
    parser.add_argument("--qwen-3b", action="store_true", help="Qwen2.5-VL-3B architecture, bf16 (GPU; meta without)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["naive", "generation"], help="methods to skip")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(torch.get_num_threads())
    if args.qwen_3b:
        if not torch.cuda.is_available():
            model, _ = build_3b("meta")
            n = sum(p.numel() for p in model.parameters())
            print(
                f"--qwen-3b: no GPU here; built the Qwen2.5-VL-3B architecture on the meta device: {n / 1e9:.3f}B "
                "parameters. Run on a GPU machine for timings."
            )
            return None
        model, proc = build_3b("cuda")
        device_name = torch.cuda.get_device_name()
    else:
        tok = tiny_tokenizer()
        proc = qwen2_5_vl_processor(tok, min_pixels=3136, max_pixels=12845056)
        model = tiny_qwen2_5_vl(tok)
        device_name = f"CPU ({torch.get_num_threads()} threads)"
    sync = torch.cuda.synchronize if torch.cuda.is_available() and args.qwen_3b else (lambda: None)
    rows = make_rows(args.rows, tuple(args.image_size))
    enc = proc(
        images=rows[0]["images"],
        text=[proc.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)],
        return_tensors="pt",
    )
    prompt_tokens = int(enc["input_ids"].shape[1])
    image_tokens = int((enc["input_ids"] == model.config.image_token_id).sum())
    prompts, cands, images = [r["prompt"] for r in rows], [r["candidates"] for r in rows], [r["images"] for r in rows]

    results = {
        "device": device_name,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "prompt_tokens": prompt_tokens,
        "image_tokens": image_tokens,
        "candidates": len(cands[0]),
    }
    t, once = timed(
        lambda: score_candidates(model, proc, prompts, cands, images, batch_size=args.batch_size, progress=False),
        args.repeats,
        sync,
    )
    results["prompt_once_examples_per_s"] = args.rows / t
    if "naive" not in args.skip:
        t, naive = timed(
            lambda: score_candidates(model, proc, prompts, cands, images, method="naive", progress=False),
            args.repeats,
            sync,
        )
        results["naive_examples_per_s"] = args.rows / t
        results["max_abs_score_diff"] = float(
            max(abs(a.sum() - b.sum()) for ra, rb in zip(once, naive) for a, b in zip(ra, rb))
        )
    if "generation" not in args.skip:
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
        # random weights may hit the end-of-turn token at any step: force the length of a real answer
        model.generation_config.min_new_tokens = args.max_new_tokens
        t, _ = timed(
            lambda: generate_answers(
                model, proc, prompts, images, settings=settings, batch_size=args.batch_size, progress=False
            ),
            args.repeats,
            sync,
        )
        results["generation_examples_per_s"] = args.rows / t
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
