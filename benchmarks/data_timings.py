"""Wall-clock timings of the data layer (loaders, synthetic generator, protocol, builders).

    python benchmarks/data_timings.py [--ml1m ../shared/data/ml-1m]

Prints one line per step. The ML-1M steps run only when the folder exists.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from hanorec_trl.data import (
    ProtocolConfig,
    SyntheticConfig,
    build_dpo_dataset,
    build_sft_dataset,
    build_split,
    load_movielens_1m,
    write_synthetic_movielens,
)


@contextmanager
def timed(label: str):
    start = time.perf_counter()
    yield
    print(f"{label:<58} {time.perf_counter() - start:7.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml1m", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, cfg in [
            ("synthetic, default (300 users, 400 items)", SyntheticConfig()),
            ("synthetic, 3,000 users, 2,000 items", SyntheticConfig(num_users=3000, num_items=2000)),
            (
                "synthetic, ML-1M-sized (6,040 users, 3,900 items, mean 160)",
                SyntheticConfig(num_users=6040, num_items=3900, mean_interactions=160, max_interactions=1000),
            ),
        ]:
            folder = tmp / label.split(",")[1].strip().replace(" ", "_")
            with timed("write " + label):
                write_synthetic_movielens(folder, cfg)
            with timed("  load_movielens_1m"):
                data = load_movielens_1m(folder)
            print(f"  -> {data.num_users} users, {data.num_items} items, {data.num_interactions} interactions")

        ml1m = Path(args.ml1m)
        if not ml1m.is_dir():
            print(f"{ml1m} absent: skipping the ML-1M timings")
            return
        with timed("load_movielens_1m(ML-1M users 1-2999, 487,650 ratings)"):
            data = load_movielens_1m(ml1m)
        with timed("  fingerprint + user_sequences"):
            data.fingerprint()
            data.user_sequences()
        with timed("build_split (paper protocol)"):
            split = build_split(data)
        print(f"  -> {split.counts()}")
        with timed("build_sft_dataset(train, task='both') incl. poster header check"):
            sft = build_sft_dataset(split.train, data, task="both")
        print(f"  -> {len(sft)} rows")
        with timed("build_dpo_dataset(train, num_rejected=3)"):
            dpo = build_dpo_dataset(split.train, data, num_rejected=3)
        print(f"  -> {len(dpo)} rows")
        with timed("build_split(sliding_windows=True)"):
            windows = build_split(data, ProtocolConfig(sliding_windows=True))
        print(f"  -> {sum(windows.counts().values())} windows")


if __name__ == "__main__":
    main()
