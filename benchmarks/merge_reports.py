"""One report from several pipeline runs on the same test rows from the same SFT model, e.g. the variants of one
condition trained in separate run directories (``--run.reuse_from``): their models side by side and the paired
differences recomputed over all of them, so that a variant of one run is compared with plain DPO of another::

    python benchmarks/merge_reports.py runs/ml1m-hard/report/results.json runs/ml1m-hard-wo-sam/report/results.json \\
        --out benchmarks/results/ml1m_smollm2_conditions/hard_tau1_all

writes ``<out>.json`` (a report that ``benchmarks/compare_conditions.py`` reads) and ``<out>.md``: the suffixes
are appended to ``--out`` as given (``--out tau0.1`` writes ``tau0.1.json``), and an existing file is never
overwritten (the script names it and stops; remove it or choose another ``--out``). Runs that share a model (SFT,
the baselines, a training both ran) must rank the target identically on every test row in each; if not, they are
not from the same SFT model or not on the same rows, and the script names the model and stops. A report given
twice, or one that adds no model to the others (a copy), is refused naming it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hanorec_trl.files import appended, check_new, new_files
from hanorec_trl.pipeline.report import ReportError, merge_reports, merged_markdown, read_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="the report/results.json of each run")
    parser.add_argument("--out", required=True, help="output prefix: <out>.json and <out>.md (appended to the name "
                        "as given; neither may exist)")
    args = parser.parse_args(argv)

    outputs = [appended(args.out, ".json"), appended(args.out, ".md")]
    try:
        check_new(outputs)
        merged = merge_reports([(str(Path(path)), read_report(path)) for path in args.results])
        markdown = merged_markdown(merged)
        with new_files(outputs) as (json_file, markdown_file):
            json_file.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
            markdown_file.write_text(markdown + "\n", encoding="utf-8")
    except (ReportError, FileExistsError) as err:
        parser.error(str(err))
    print(markdown)
    print(f"\nwrote {outputs[0]} and {outputs[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
