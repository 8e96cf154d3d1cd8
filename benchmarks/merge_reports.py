"""One report from several pipeline runs on the same test rows from the same SFT model, e.g. the variants of one
condition trained in separate run directories (``--run.reuse_from``): their models side by side and the paired
differences recomputed over all of them, so that a variant of one run is compared with plain DPO of another::

    python benchmarks/merge_reports.py runs/ml1m-hard/report/results.json runs/ml1m-hard-wo-sam/report/results.json \\
        --out benchmarks/results/ml1m_smollm2_conditions/hard_tau1_all

writes ``<out>.json`` (a report that ``benchmarks/compare_conditions.py`` reads) and ``<out>.md``. Runs that share a
model (SFT, the baselines, a training both ran) must rank the target identically on every test row in each; if
not, they are not from the same SFT model or not on the same rows, and the script names the model and stops.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hanorec_trl.pipeline.report import ReportError, merge_reports, merged_markdown, read_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="the report/results.json of each run")
    parser.add_argument("--out", required=True, help="output prefix: <out>.json and <out>.md (must not exist)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    for existing in (out.with_suffix(".json"), out.with_suffix(".md")):
        if existing.exists():
            parser.error(f"{existing} exists; choose another --out (nothing is overwritten)")
    try:
        merged = merge_reports([(path, read_report(path)) for path in args.results])
    except ReportError as err:
        parser.error(str(err))
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown = merged_markdown(merged)
    out.with_suffix(".json").write_text(json.dumps(merged, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
