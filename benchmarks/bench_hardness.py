"""Benchmark of the offline hardness index (Eq. 4-6): HardnessIndex build + hardness() on 1M pairs.

For every catalogue size x embedding dimension x index kind, one fresh worker process (so that its peak RSS belongs to
that case alone) generates random embeddings (seeded), builds the index, scores the pairs and reports:

* build time, hardness() time for all pairs (median over repeats when one run is short), CPU seconds, load average;
* peak RSS of the build and of the scoring (a 20 ms sampler), and the size of the inputs;
* for approximate indices: recall@K of the Top-K sets against an exhaustive search of a sample of anchors, the error
  of the Top-K scores, and the change of lambda on the sample's pairs (temperature 1 and 0.1).

Cases that cannot fit in memory are adapted (float16 inputs, then text only) or skipped; searches estimated to take
longer than --max-search-seconds are timed on a subset of the pairs and extrapolated by the number of distinct anchors.
Every adaptation, skip and extrapolation is printed and recorded in the JSON.

    python benchmarks/bench_hardness.py                      # all sizes, d = 2048 and 384, flat/ivf/hnsw
    python benchmarks/bench_hardness.py --sizes 4k,40k --dims 384 --kinds flat
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = {"4k": 4_000, "40k": 40_000, "400k": 400_000, "4M": 4_000_000}
GIB = 1024**3


# ---------------------------------------------------------------------- the worker (one case per process)


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every 20 ms, plus start and end)."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.peak = 0

    def _sample(self):
        self.peak = max(self.peak, self._process.memory_info().rss)

    def _run(self):
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self):
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def make_embeddings(num_items, dim, data, dtype, with_image, seed):
    """Random item embeddings: isotropic Gaussian; or, for 'clustered', a Gaussian mixture of num_items/100 clusters
    (an item's text and image embeddings come from the same cluster, with a centre per modality)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, max(1, num_items // 100), size=num_items) if data == "clustered" else None

    def table():
        out = np.empty((num_items, dim), dtype=dtype)
        centres = None if cluster is None else rng.standard_normal((cluster.max() + 1, dim), dtype=np.float32)
        for start in range(0, num_items, 65536):
            stop = min(start + 65536, num_items)
            block = rng.standard_normal((stop - start, dim), dtype=np.float32)
            out[start:stop] = block if centres is None else centres[cluster[start:stop]] + 0.8 * block
        return out

    text = table()
    return text, (table() if with_image else None)


def run_case(spec: dict) -> dict:
    import faiss

    from hanorec_trl.hardness import HardnessIndex, lambdas_from_deltas, topk_profiles

    n, d, kind, k = spec["num_items"], spec["dim"], spec["kind"], spec["k"]
    result = dict(spec)
    text, image = make_embeddings(n, d, spec["data"], np.dtype(spec["input_dtype"]), spec["with_image"], spec["seed"])
    result["input_gib"] = (text.nbytes + (image.nbytes if image is not None else 0)) / GIB
    rng = np.random.default_rng(spec["seed"] + 1)
    chosen = rng.integers(0, n, size=spec["pairs"])
    rejected = rng.integers(0, n, size=spec["pairs"])
    anchors_total = len(np.unique(np.concatenate([chosen, rejected])))
    result["distinct_anchors"] = int(anchors_total)
    result["faiss_threads"] = faiss.omp_get_max_threads()
    options = {"index": kind, "show_progress": False, **spec.get("options", {})}

    builds = []
    with PeakRSS() as build_rss:
        for repeat in range(spec["repeats"]):
            start = time.perf_counter()
            index = HardnessIndex(text, image, **options)
            builds.append(time.perf_counter() - start)
            if builds[0] > spec["repeat_below"] or repeat == spec["repeats"] - 1:
                break
            index = None  # free the index before the next build
    result["build_s"] = statistics.median(builds)
    result["build_runs"] = len(builds)
    result["build_peak_rss_gib"] = build_rss.peak / GIB
    if kind == "ivf":
        result["index_params"] = {"nlist": index.faiss_index.nlist, "nprobe": index.faiss_index.nprobe}
    elif kind == "hnsw":
        result["index_params"] = {"M": index.config.hnsw_m, "efConstruction": index.config.hnsw_ef_construction,
                                  "efSearch": index.config.hnsw_ef_search}
    del text, image

    # Exhaustive Top-K of a sample of anchors: the reference for recall, and the per-anchor cost of exact search.
    sample_pairs = min(spec["recall_pairs"], spec["pairs"])
    sample = np.unique(np.concatenate([chosen[:sample_pairs], rejected[:sample_pairs]]))
    start = time.perf_counter()
    exact_ids, exact_scores = index.top_k(sample, k, exact=True)
    result["exact_sample_s"] = time.perf_counter() - start
    result["exact_sample_anchors"] = len(sample)

    # Scoring all pairs; when that is estimated to take too long, a prefix of the pairs, extrapolated by the work of
    # its distinct anchors. Flat (blocked exact search): ~ A*n - A^2/2 anchor-item products (anchor-anchor blocks are
    # computed once); approximate search: ~ A.
    work = (lambda a: a * n - a * a / 2) if kind == "flat" else (lambda a: a)  # noqa: E731
    if kind == "flat":
        estimate = result["exact_sample_s"] * work(anchors_total) / work(len(sample))
    else:  # time one batch-sized prefix
        probe = _timed_prefix(index, chosen, rejected, min(anchors_total, 20_000), k)
        estimate = probe["measured_s"] * work(anchors_total) / work(probe["measured_anchors"])
    result["estimated_hardness_s"] = estimate
    with PeakRSS() as score_rss:
        if kind != "flat" and probe["measured_anchors"] == anchors_total and probe["measured_s"] > spec["repeat_below"]:
            measured = dict(probe, extrapolated=False)  # the probe already scored every anchor, and was not short
        elif estimate <= spec["max_search_seconds"]:
            measured = _timed_prefix(index, chosen, rejected, anchors_total, k, spec["repeats"], spec["repeat_below"])
            measured["extrapolated"] = False
        else:
            if kind == "flat":  # a prefix worth about a quarter of the time budget: solve work(a) = budget for a
                budget = work(anchors_total) * spec["max_search_seconds"] / 4 / estimate
                probe = _timed_prefix(index, chosen, rejected, max(1000, int(n - math.sqrt(n * n - 2 * budget))), k)
            measured = dict(probe, extrapolated=True)
        result.update(measured)
        result["hardness_s"] = measured["measured_s"] * work(anchors_total) / work(measured["measured_anchors"])
    result["hardness_peak_rss_gib"] = score_rss.peak / GIB
    result["load_average_1min"] = os.getloadavg()[0]
    result["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB

    if kind != "flat":
        approx_ids, approx_scores = index.top_k(sample, k)
        result["recall_at_k"] = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx_ids, exact_ids)]))
        result["topk_score_mean_abs_err"] = float(np.mean(np.abs(approx_scores - exact_scores)))
        w = np.searchsorted(sample, chosen[:sample_pairs])
        l = np.searchsorted(sample, rejected[:sample_pairs])  # noqa: E741
        for tau in (1.0, 0.1):
            exact_profiles, approx_profiles = topk_profiles(exact_scores, tau), topk_profiles(approx_scores, tau)
            exact_delta = np.linalg.norm(exact_profiles[w] - exact_profiles[l], axis=1)
            approx_delta = np.linalg.norm(approx_profiles[w] - approx_profiles[l], axis=1)
            exact_lambda, mean = lambdas_from_deltas(exact_delta)
            approx_lambda, _ = lambdas_from_deltas(approx_delta, mean)
            result[f"lambda_max_abs_diff_tau{tau:g}"] = float(np.max(np.abs(approx_lambda - exact_lambda)))
            result[f"lambda_range_exact_tau{tau:g}"] = [float(exact_lambda.min()), float(exact_lambda.max())]
    else:
        w = np.searchsorted(sample, chosen[:sample_pairs])
        l = np.searchsorted(sample, rejected[:sample_pairs])  # noqa: E741
        for tau in (1.0, 0.1):
            profiles = topk_profiles(exact_scores, tau)
            lam, _ = lambdas_from_deltas(np.linalg.norm(profiles[w] - profiles[l], axis=1))
            result[f"lambda_range_exact_tau{tau:g}"] = [float(lam.min()), float(lam.max())]
    return result


def _timed_prefix(index, chosen, rejected, anchors_wanted, k, repeats=1, repeat_below=0.0):
    """Time ``index.hardness`` on the shortest prefix of the pairs touching ``anchors_wanted`` distinct anchors."""
    prefix = len(chosen) if anchors_wanted >= len(np.unique(np.concatenate([chosen, rejected]))) else (
        _prefix_with_anchors(chosen, rejected, anchors_wanted))
    runs, cpu = [], []
    for _ in range(repeats):
        start, cpu0 = time.perf_counter(), time.process_time()
        index.score(chosen[:prefix], rejected[:prefix], k=k)
        runs.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu0)
        if runs[0] > repeat_below:
            break
    return {
        "measured_pairs": int(prefix),
        "measured_anchors": int(len(np.unique(np.concatenate([chosen[:prefix], rejected[:prefix]])))),
        "measured_s": statistics.median(runs),
        "measured_cpu_s": statistics.median(cpu),
        "hardness_runs": len(runs),
    }


def _prefix_with_anchors(chosen, rejected, wanted):
    """Smallest prefix of the pairs that touches about ``wanted`` distinct anchors (uniform pairs: by bisection)."""
    low, high = 1, len(chosen)
    while low < high:
        middle = (low + high) // 2
        if len(np.unique(np.concatenate([chosen[:middle], rejected[:middle]]))) < wanted:
            low = middle + 1
        else:
            high = middle
    return low


# ---------------------------------------------------------------------- the driver


def plan_case(n, d, kind, args):
    """Decide how a case runs on this machine: inputs dtype/images, or a skip reason (never silently)."""
    available = _available_memory_bytes() * args.memory_fraction
    catalogue = n * d * 4  # one float32 copy of the fused vectors
    index_extra = {"flat": 0, "hnsw": catalogue + n * args.hnsw_m * 2 * 4 * 1.2, "ivf": catalogue}[kind]
    notes = []
    for dtype, with_image in (("float32", True), ("float16", True), ("float16", False)):
        inputs = n * d * np.dtype(dtype).itemsize * (2 if with_image else 1)
        peak = inputs + catalogue + index_extra + 1.0 * GIB  # + search buffers and the Python/FAISS runtime
        if peak <= available:
            if (dtype, with_image) != ("float32", True):
                notes.append(
                    "adapted: float32 text+image inputs would need "
                    f"~{(2 * n * d * 4 + catalogue + index_extra) / GIB:.1f} GiB (> {available / GIB:.1f} GiB "
                    f"usable), so inputs are {dtype}"
                    + ("" if with_image else " and text only (image_emb=None)")
                )
            return {"input_dtype": dtype, "with_image": with_image, "planned_peak_gib": peak / GIB}, notes
    need = (n * d * 2 + catalogue + index_extra) / GIB
    usable = available / GIB
    return None, [f"skipped: needs >= {need:.1f} GiB even with float16 text-only inputs; {usable:.1f} GiB usable here"]


def _available_memory_bytes():
    import psutil

    return psutil.virtual_memory().available


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4k,40k,400k,4M", help=f"catalogue sizes, from {list(SIZES)} or integers")
    parser.add_argument("--dims", default="2048,384", help="embedding dimensions")
    parser.add_argument("--kinds", default="flat,ivf,hnsw", help="index kinds: flat (exact), ivf, hnsw")
    parser.add_argument("--pairs", type=int, default=1_000_000, help="preference pairs scored per case")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", choices=["gaussian", "clustered"], default="gaussian",
                        help="gaussian: isotropic random embeddings (worst case for approximate search); clustered: a "
                        "Gaussian mixture, closer to real item embeddings")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median) when one run is short")
    parser.add_argument("--repeat-below", type=float, default=20.0, help="repeat only runs shorter than this (s)")
    parser.add_argument("--max-search-seconds", type=float, default=150.0,
                        help="a hardness() run estimated longer than this is timed on a prefix and extrapolated")
    parser.add_argument("--hnsw-max-size", type=float, default=2e7,
                        help="HNSW builds single-threaded (deterministic) and slowly: cases with items x dim above "
                        "this are skipped")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ivf-nprobe", type=int, default=None, help="override HardnessIndexConfig.ivf_nprobe")
    parser.add_argument("--recall-pairs", type=int, default=250, help="pairs whose anchors form the recall sample")
    parser.add_argument("--memory-fraction", type=float, default=0.9, help="share of available memory a case may use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/hardness-*.json)")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        print(json.dumps(run_case(json.loads(args.worker))))
        return

    sizes = [SIZES.get(s, None) or int(s) for s in args.sizes.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    kinds = args.kinds.split(",")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or HERE / "results" / f"hardness-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "command": "python " + " ".join([os.path.relpath(__file__, HERE.parent)] + sys.argv[1:]),
        "started_utc": stamp,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{_total_memory_gib():.0f} GiB",
        "load_average_at_start": os.getloadavg(),
        "data": args.data,
        "pairs": args.pairs,
        "k": args.k,
    }
    print(f"# {header['command']}\n# {header['machine']}, load average {header['load_average_at_start']}")
    results = []
    begin = time.perf_counter()
    for n in sizes:
        for d in dims:
            for kind in kinds:
                case = {"num_items": n, "dim": d, "kind": kind}
                if kind == "hnsw" and n * d > args.hnsw_max_size:
                    case["skipped"] = (
                        f"skipped: HNSW builds single-threaded (deterministic), and {n:,} x {d} is beyond "
                        f"--hnsw-max-size={args.hnsw_max_size:.0e} (tens of minutes or more here)"
                    )
                    print(f"{n:>9,} x {d:<4} {kind:<5} {case['skipped']}")
                    results.append(case)
                    continue
                plan, notes = plan_case(n, d, kind, args)
                for note in notes:
                    print(f"{n:>9,} x {d:<4} {kind:<5} {note}")
                case["notes"] = notes
                if plan is None:
                    case["skipped"] = notes[-1]
                    results.append(case)
                    continue
                options = {"hnsw_m": args.hnsw_m} if kind == "hnsw" else {}
                if kind == "ivf" and args.ivf_nprobe:
                    options["ivf_nprobe"] = args.ivf_nprobe
                spec = {
                    **case, **plan, "k": args.k, "pairs": args.pairs, "data": args.data, "seed": args.seed,
                    "repeats": args.repeats, "repeat_below": args.repeat_below, "options": options,
                    "max_search_seconds": args.max_search_seconds, "recall_pairs": args.recall_pairs,
                }
                case.update(_run_worker(spec))
                results.append(case)
                print(_row(case), flush=True)
                _write(out, header, results, time.perf_counter() - begin)
    _write(out, header, results, time.perf_counter() - begin)
    print()
    print(_table(results, args.pairs))
    print(f"\nwrote {out} ({time.perf_counter() - begin:.0f} s in all)")
    if args.plot:
        print(f"plot: {_plot(results, out.with_suffix('.png'))}")


def _run_worker(spec):
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        killed = ", killed: out of memory?" if done.returncode < 0 else ""
        reason = f"failed (exit {done.returncode}{killed}): " + " | ".join(tail)
        print(f"{spec['num_items']:>9,} x {spec['dim']:<4} {spec['kind']:<5} {reason}")
        return {"skipped": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(case):
    if "skipped" in case:
        return f"{case['num_items']:>9,} x {case['dim']:<4} {case['kind']:<5} {case['skipped']}"
    hardness = f"{case['hardness_s']:8.1f}{'*' if case['extrapolated'] else ' '}"
    recall = f"{case['recall_at_k']:.3f}" if "recall_at_k" in case else "exact"
    inputs = case["input_dtype"] + ("" if case["with_image"] else ", text only")
    return (f"{case['num_items']:>9,} x {case['dim']:<4} {case['kind']:<5} build {case['build_s']:7.1f} s  "
            f"hardness {hardness} s  recall@{case['k']} {recall:>5}  peak RSS {case['build_peak_rss_gib']:.1f}/"
            f"{case['hardness_peak_rss_gib']:.1f} GiB  anchors {case['distinct_anchors']:,}  ({inputs}, load "
            f"{case['load_average_1min']:.1f})")


def _table(results, pairs):
    lines = [
        f"| items | d | index | inputs | build s | hardness({pairs:,} pairs) s | CPU s | distinct anchors | "
        "peak RSS GiB (build / score) | recall@K | lambda max diff vs exact, tau=1 / 0.1 | lambda range, tau=1 / 0.1 "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results:
        if "skipped" in c:
            lines.append(f"| {c['num_items']:,} | {c['dim']} | {c['kind']} | | | {c['skipped']} | | | | | | | |")
            continue
        hardness = f"{c['hardness_s']:.1f}" + (
            f" (extrapolated from {c['measured_anchors']:,} anchors, {c['measured_s']:.1f} s)" if c["extrapolated"] else
            (f" (median of {c['hardness_runs']})" if c["hardness_runs"] > 1 else ""))
        recall = f"{c['recall_at_k']:.3f}" if "recall_at_k" in c else "exact"
        lam = (f"{c['lambda_max_abs_diff_tau1']:.1e} / {c['lambda_max_abs_diff_tau0.1']:.1e}"
               if "lambda_max_abs_diff_tau1" in c else "-")
        inputs = c["input_dtype"] + (" text+image" if c["with_image"] else " text only")
        ranges = " / ".join(f"{c[f'lambda_range_exact_tau{t}'][0]:.4f}-{c[f'lambda_range_exact_tau{t}'][1]:.4f}"
                            for t in ("1", "0.1"))
        lines.append(
            f"| {c['num_items']:,} | {c['dim']} | {c['kind']} | {inputs} | {c['build_s']:.1f} | {hardness} | "
            f"{c['measured_cpu_s']:.1f}{'' if not c['extrapolated'] else ' (prefix)'} | "
            f"{c['distinct_anchors']:,} | {c['build_peak_rss_gib']:.1f} / {c['hardness_peak_rss_gib']:.1f} | "
            f"{recall} | {lam} | {ranges} | {c['load_average_1min']:.1f} |"
        )
    return "\n".join(lines)


def _write(out, header, results, elapsed):
    out.write_text(json.dumps({**header, "elapsed_s": elapsed, "results": results}, indent=1) + "\n")


def _plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped (matplotlib missing)"
    done = [c for c in results if "hardness_s" in c]
    if not done:
        return "skipped (no measured case)"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for kind, marker in (("flat", "o"), ("ivf", "s"), ("hnsw", "^")):
        for d, style in ((2048, "-"), (384, "--")):
            points = sorted((c["num_items"], c["hardness_s"], c["extrapolated"]) for c in done
                            if c["kind"] == kind and c["dim"] == d)
            if not points:
                continue
            xs, ys, extra = zip(*points)
            line, = ax.plot(xs, ys, style, marker=marker, label=f"{kind}, d={d}")
            hollow = [(x, y) for x, y, e in points if e]
            if hollow:
                ax.plot(*zip(*hollow), marker, mfc="white", color=line.get_color(), ms=9)
    ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="hardness() on 1M pairs, s",
           title="HardnessIndex: 1M pairs (hollow = extrapolated)")
    ax.axhline(60, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


def _total_memory_gib():
    import psutil

    return psutil.virtual_memory().total / GIB


if __name__ == "__main__":
    main()
