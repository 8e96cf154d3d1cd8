"""The real MovieLens-1M split the data benchmarks share: ``--data-dir``, ``--split-by``, ``--windows-per-user``,
``--seed`` and :func:`load_data_and_split`."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def add_split_arguments(parser: argparse.ArgumentParser, *, split_by: str, windows_per_user: int) -> None:
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "ml-1m")
    parser.add_argument("--split-by", default=split_by, choices=["sequence", "user", "leave_last_out"])
    parser.add_argument("--windows-per-user", type=int, default=windows_per_user,
                        help=f"sliding windows, at most this many per training user; 0: only the most recent window "
                             f"(default {windows_per_user})")
    parser.add_argument("--seed", type=int, default=0, help="split seed")


def load_data_and_split(args: argparse.Namespace):
    """``(data, split)``: ML-1M from ``args.data_dir`` (titles only) and its split under the given protocol."""
    from hanorec_trl.data import ProtocolConfig, build_split, load_movielens_1m

    if not args.data_dir.exists():
        sys.exit(f"{args.data_dir} does not exist: pass --data-dir with MovieLens-1M (ratings + movies.dat)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_movielens_1m(args.data_dir, images=False)
    sliding = args.windows_per_user > 0
    config = ProtocolConfig(split_by=args.split_by, sliding_windows=sliding, seed=args.seed,
                            max_windows_per_user=args.windows_per_user if sliding else None)
    return data, build_split(data, config)
