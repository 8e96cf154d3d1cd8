"""Paired differences of several pipeline runs side by side: one condition per run (e.g. random vs hard rejected
items, hardness temperature 1 / 0.1 / 0.05), each variant against a reference model of its own run, on the same
test rows (paper Fig. 3 style: the ablations per condition).

Reads the ``report/results.json`` each run wrote (a recipe with ``variants.yaml``), keeps the entries of
its paired differences against ``--reference`` (default: plain DPO), and writes one Markdown table, one plot (bars:
difference with the 95% paired-bootstrap interval over rows; dots: seed by seed) and the entries as JSON::

    python benchmarks/compare_conditions.py \\
        --condition "random, tau 1" runs/ml1m-sft/report/results.json \\
        --condition "random, tau 0.1" runs/ml1m-tau01/report/results.json \\
        --out benchmarks/results/ml1m_smollm2_conditions

Only numbers the runs measured are shown; a run without the reference (or without per-row ranks) contributes
nothing, and the script says so. The suffixes are appended to ``--out`` as given (``--out ctau0.1`` writes
``ctau0.1.md``, ...), and an existing file is never overwritten (the script names it and stops: a run's own
``report/results.json`` can never be replaced). Two conditions with the same label, or one report under two
labels, are refused naming them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hanorec_trl.evaluation.reporting import ReportError, differences_table, plot_differences, read_results, seed_groups
from hanorec_trl.files import appended, check_new, new_files


def condition_entries(label: str, results: dict, reference: str) -> tuple[list[dict], dict[str, str]]:
    """The paired differences of one run against ``reference``, with model and reference names prefixed by the
    condition (runs differ in their seeds, so each run's reference keeps its own label)."""
    models = [(name, model["label"]) for name, model in results["models"].items()]
    labels = {name: label_ for name, label_ in models}
    labels.update({base: group_label for base, (group_label, _) in seed_groups(models).items()})
    entries, names = [], {}
    for entry in results.get("paired_differences", []):
        if entry["reference"] != reference:
            continue
        key, reference_key = f"{label}: {entry['model']}", f"{label}: {reference}"
        entries.append({**entry, "model": key, "reference": reference_key, "condition": label,
                        "variant": entry["model"], "reference_model": reference})
        names[key] = f"{labels.get(entry['model'], entry['model'])} [{label}]"
        names[reference_key] = labels.get(reference, reference)
    return entries, names


def refuse_repeated_conditions(parser: argparse.ArgumentParser, conditions: list[list[str]]) -> None:
    """Two conditions with one label (their rows could not be told apart), or one report under two labels (the
    same numbers shown as two conditions): refused, naming them."""
    by_label: dict[str, str] = {}
    by_file: dict[Path, str] = {}
    for label, path in conditions:
        if label in by_label:
            parser.error(f"--condition {label!r} is given twice ({by_label[label]} and {path}); give each condition "
                         "its own label")
        file = Path(path).resolve()
        if file in by_file:
            parser.error(f"{path} is given twice (as --condition {by_file[file]!r} and {label!r}); each report is one "
                         "condition")
        by_label[label], by_file[file] = path, label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--condition", nargs=2, action="append", metavar=("LABEL", "RESULTS_JSON"), required=True,
                        help="a condition's label and the results.json of its run (repeat for each condition)")
    parser.add_argument("--reference", default="dpo", help="the model every variant is compared with (its name in "
                        "the run: 'dpo' pools dpo-seed<N>, 'sft')")
    parser.add_argument("--out", required=True, help="output prefix: <out>.md, <out>.png, <out>.json (appended to the "
                        "name as given; none may exist)")
    args = parser.parse_args(argv)

    outputs = [appended(args.out, suffix) for suffix in (".md", ".png", ".json")]
    try:
        check_new(outputs)
    except FileExistsError as err:
        parser.error(str(err))
    refuse_repeated_conditions(parser, args.condition)
    entries, labels = [], {}
    for label, path in args.condition:
        try:
            results = read_results(path)
        except ReportError as err:
            parser.error(f"--condition {label!r}: {err}")
        found, names = condition_entries(label, results, args.reference)
        if not found:
            print(f"note: {path} has no paired differences against {args.reference!r}: condition {label!r} left "
                  "out", file=sys.stderr)
        entries += found
        labels.update(names)
    if not entries:
        parser.error(f"no run has paired differences against {args.reference!r}")

    table = differences_table(entries, labels)
    try:
        with new_files(outputs) as (markdown_file, plot_file, json_file):
            markdown_file.write_text(table + "\n", encoding="utf-8")
            plot_differences(entries, labels, plot_file, colour_by="condition")
            json_file.write_text(json.dumps(
                {"reference": args.reference, "conditions": [{"label": label, "results": path}
                                                             for label, path in args.condition],
                 "differences": entries}, indent=1) + "\n", encoding="utf-8")
    except FileExistsError as err:
        parser.error(str(err))
    print(table)
    print(f"\nwrote {', '.join(map(str, outputs))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
