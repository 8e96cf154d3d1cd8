"""The results of a run: a Markdown + JSON table of every evaluated model, and plots.

* ``training_dynamics.png`` -- beta' (mean, with the min-max band), lambda and eta of every DPO variant over the
  training steps, read from the trainer's log history (``hano/beta_mean|min|max``, ``hano/lambda_mean``,
  ``hano/eta``; paper Eq. 8 and 11), and the DPO loss;
* ``title_image_similarity.png`` -- per item, the title-image cosine after DPO against before (the SFT model), and
  the mean change per quintile of the initial similarity (paper Fig. 1c / Fig. 4: "the weak get weaker").
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .variants import PLAIN_DPO, WO_ALL
from .rundir import read_json, write_json_atomic

METRIC_COLUMNS = ("hr@1", "hr@3", "ndcg@3", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "auc", "binary_auc")
HEADERS = {"auc": "AUC", "binary_auc": "binary AUC", "position_top_first": "top = first listed",
           "position_spearman": "Spearman(score, slot)"}
BAR = "baseline-popularity"  # under uniform negatives the bar to beat (docs/evaluation.md)


def ranking_cutoffs(metric_dicts: Sequence[dict[str, Any]]) -> list[int]:
    """The K of every ``ndcg@K`` among the metrics of the given models, ascending."""
    return sorted({int(m.split("@")[1]) for metrics in metric_dicts for m in metrics if m.startswith("ndcg@")})


def _header(metric: str) -> str:
    return HEADERS.get(metric, metric.upper())


def _cell(value: Any, interval: Sequence[float] | None) -> str:
    if not isinstance(value, (int, float)) or value != value:  # missing or NaN
        return "-"
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def results_table(rows: Sequence[tuple[str, dict[str, float]]],
                  intervals: dict[str, dict[str, Sequence[float]]] | None = None) -> str:
    """A Markdown table: one row per (label, metrics), the metric columns present in any row; with ``intervals``
    (label -> metric -> (low, high)) each cell also shows its 95% interval."""
    intervals = intervals or {}
    columns = [m for m in METRIC_COLUMNS if any(m in metrics for _, metrics in rows)]
    lines = ["| model | " + " | ".join(_header(c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, metrics in rows:
        cells = [_cell(metrics.get(c), intervals.get(label, {}).get(c)) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_intervals(evaluation: dict[str, Any], ks: Sequence[int]) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap intervals over the test rows of HR@K, NDCG@K (per-row hits and gains) and AUC, from the
    per-row results an evaluation wrote (none for the exact expectation of the random baseline)."""
    from ..evaluation.metrics import auc_interval, mean_interval, ndcg_gains

    per_row = evaluation.get("per_row", {})
    out: dict[str, tuple[float, float]] = {}
    ranking = per_row.get("ranking")
    if ranking and ranking.get("ranks"):
        ranks = np.asarray([np.inf if r is None else r for r in ranking["ranks"]], dtype=np.float64)
        for k in ks:
            out[f"hr@{k}"] = mean_interval((ranks <= k).astype(np.float64))
            out[f"ndcg@{k}"] = mean_interval(ndcg_gains(ranks, k))
    auc = per_row.get("auc")
    if auc and "auc" in evaluation["metrics"] and 0 < sum(auc["labels"]) < len(auc["labels"]):
        out["auc"] = auc_interval(auc["labels"], auc["p_yes"])
    return out


def position_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str | None:
    """Markdown: the position diagnostic of every model that has one (evaluate_recommender's ``position_*``)."""
    keys = ("position_top_first", "position_spearman")
    present = [(label, m) for label, m in rows if "position_top_first" in m]
    if not present:
        return None
    lines = ["| model | prompts scored | " + " | ".join(_header(k) for k in keys) + " |", "|---|---:|---:|---:|"]
    for label, m in present:
        lines.append(f"| {label} | {m.get('num_prompt_rows', '-')} | " + " | ".join(_cell(m.get(k), None) for k in keys)
                     + " |")
    return "\n".join(lines)


PLAIN_DPO_NAMES = (PLAIN_DPO.name, WO_ALL.name)  # every HaNoRec switch off: TRL's DPO
SEEDED = re.compile(r"^(?P<base>.+)-seed(?P<seed>-?\d+)$")  # run.dpo_seeds: <variant>-seed<N>


def seed_groups(models: Sequence[tuple[str, str]]) -> dict[str, tuple[str, list[str]]]:
    """The trainings of one variant under several DPO seeds (``run.dpo_seeds``): ``{variant: (label, [names])}``,
    the label saying over how many seeds the variant's per-row results are averaged."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for name, label in models:
        match = SEEDED.match(name)
        if match:
            base = match["base"]
            members = groups.get(base, ("", []))[1] + [name]
            plain = label.rsplit(" (seed ", 1)[0]
            pooled = f"mean of {len(members)} seeds" if len(members) > 1 else "1 seed"
            groups[base] = (f"{plain} ({pooled})", members)
    return groups


def paired_differences(per_row_ranks: dict[str, list[float | None]], models: Sequence[tuple[str, str]],
                       ks: Sequence[int], bar: str | None = None) -> list[dict[str, Any]]:
    """Each trained model against ``bar`` (a baseline's name, e.g. popularity), and each preference-optimized model
    against SFT and against plain DPO (when the run has it), on the same test rows: the mean per-row difference of
    HR@1 and NDCG@max(K) with a 95% paired bootstrap interval
    (:func:`~hanorec_trl.evaluation.metrics.paired_bootstrap`). ``models`` are the trained models (baselines are
    not compared with each other); pairs without per-row ranks, or evaluated on other rows, are left out.

    A variant trained under several DPO seeds (:func:`seed_groups`) is compared once, by its per-row metric averaged
    over the seeds (under its variant name); the entry also lists the difference seed by seed under ``per_seed``
    (``{seed: difference}``; against a reference with the same seeds, the training of that seed), since the interval
    over rows does not count the randomness of training."""
    from ..evaluation.metrics import ndcg_gains, paired_bootstrap

    top = max(ks)
    ranks = {name: np.asarray([np.inf if r is None else r for r in values], dtype=np.float64)
             for name, values in per_row_ranks.items()}
    per_metric = {name: {"hr@1": (r <= 1).astype(np.float64), f"ndcg@{top}": ndcg_gains(r, top)}
                  for name, r in ranks.items()}
    names = [name for name, _ in models]
    seeded: dict[str, dict[int, str]] = {}  # pooled variant -> {seed: training}
    for base, (_, members) in seed_groups(models).items():
        present = [m for m in members if m in per_metric]
        if len(present) == len(members) and len({len(ranks[m]) for m in members}) == 1:
            per_metric[base] = {metric: np.mean([per_metric[m][metric] for m in members], axis=0)
                                for metric in per_metric[members[0]]}
            names = [base if n == members[0] else n for n in names if n not in members[1:]]
            seeded[base] = {int(SEEDED.match(m)["seed"]): m for m in members}
    plain_dpo = [name for name in names if name in PLAIN_DPO_NAMES]
    pairs = [(name, bar) for name in names] if bar is not None else []
    pairs += [(name, "sft") for name in names if name != "sft"]
    pairs += [(name, reference) for reference in plain_dpo for name in names if name not in ("sft", *plain_dpo)]
    out = []
    for name, reference in pairs:
        if name not in per_metric or reference not in per_metric or \
                len(per_metric[name]["hr@1"]) != len(per_metric[reference]["hr@1"]):
            continue
        for metric, values in per_metric[name].items():
            entry = {"model": name, "reference": reference, "metric": metric, "rows": len(values),
                     **paired_bootstrap(values, per_metric[reference][metric])}
            if name in seeded:  # against a seeded reference, its training of the same seed; else the reference
                same_seed = seeded.get(reference)
                entry["per_seed"] = {
                    seed: float(np.mean(per_metric[member][metric]
                                        - per_metric[same_seed[seed] if same_seed else reference][metric]))
                    for seed, member in seeded[name].items() if same_seed is None or seed in same_seed}
            out.append(entry)
    return out


def run_differences(ranks: dict[str, list[float | None]], models: Sequence[tuple[str, str]],
                    ks: Sequence[int]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The paired differences of a report (:func:`paired_differences` of its trained models, against popularity
    when it has per-row ranks) and the labels of its seed-pooled variants."""
    trained = [(name, label) for name, label in models if not name.startswith("baseline-")]
    bar = BAR if BAR in ranks else None
    labels = {base: label for base, (label, _) in seed_groups(trained).items()}
    differences = paired_differences(ranks, trained, ks, bar=bar) if ks and len(ranks) > 1 else []
    return differences, labels


def differences_table(differences: Sequence[dict[str, Any]], labels: dict[str, str]) -> str:
    """Markdown: one row per (model, reference, metric) with the difference and its 95% interval (and the
    difference seed by seed when a variant was trained under several DPO seeds)."""
    per_seed = any("per_seed" in d for d in differences)
    lines = ["| model | vs | metric | rows | difference | 95% CI | P(diff <= 0) |" + (" by seed |" if per_seed else ""),
             "|---|---|---|---:|---:|---|---:|" + ("---|" if per_seed else "")]
    for d in differences:
        seeds = " / ".join(f"{v:+.3f} (seed {s})" for s, v in d.get("per_seed", {}).items())
        lines.append(f"| {labels.get(d['model'], d['model'])} | {labels.get(d['reference'], d['reference'])} | "
                     f"{_header(d['metric'])} | {d['rows']} | {d['difference']:+.4f} | [{d['low']:+.4f}, "
                     f"{d['high']:+.4f}] | {d['p_not_better']:.3f} |" + (f" {seeds} |" if per_seed else ""))
    return "\n".join(lines)


def plot_differences(differences: Sequence[dict[str, Any]], labels: dict[str, str], path: Path,
                     colour_by: str = "reference") -> Path:
    """The paired differences of :func:`paired_differences` as bars with their 95% intervals over rows, one panel
    per metric, and the seed-by-seed differences as dots (paper Fig. 5 style: each variant against SFT, the bar
    and DPO). ``colour_by``: the entry field that picks a bar's colour (one colour per value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(d["metric"] for d in differences))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        entries = [d for d in differences if d["metric"] == metric]
        xs = np.arange(len(entries))
        ys = np.array([d["difference"] for d in entries])
        errors = np.array([[d["difference"] - d["low"] for d in entries], [d["high"] - d["difference"] for d in entries]])
        groups = list(dict.fromkeys(d[colour_by] for d in entries))  # one colour per reference (or condition)
        colours = [f"C{groups.index(d[colour_by])}" for d in entries]
        ax.bar(xs, ys, yerr=errors, color=colours, alpha=0.75, capsize=3)
        for x, d in zip(xs, entries):
            seeds = list(d.get("per_seed", {}).values())
            ax.scatter([x] * len(seeds), seeds, s=10, color="black", zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{labels.get(d['model'], d['model'])}\nvs {labels.get(d['reference'], d['reference'])}"
                            for d in entries], fontsize=7, rotation=60, ha="right")
        ax.set_title(f"{_header(metric)}: difference, 95% interval over {entries[0]['rows']} rows; dots: seeds",
                     fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    if not points:
        return np.array([]), np.array([])
    steps, values = zip(*points)
    return np.asarray(steps), np.asarray(values, dtype=float)


def plot_training_dynamics(histories: dict[str, list[dict]], labels: dict[str, str], beta0: float,
                           path: Path) -> Path:
    """beta', lambda, eta and the loss over the DPO steps of each variant (one line per variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    panels = [(axes[0, 0], "beta' (mean, min-max band)"), (axes[0, 1], "lambda (batch mean)"),
              (axes[1, 0], "eta (responsiveness)"), (axes[1, 1], "DPO loss")]
    for index, (name, history) in enumerate(histories.items()):
        label, color = labels.get(name, name), f"C{index}"  # one colour per variant in every panel
        steps, beta = _series(history, "hano/beta_mean")
        if len(steps):
            axes[0, 0].plot(steps, beta, label=label, color=color)
            _, low = _series(history, "hano/beta_min")
            _, high = _series(history, "hano/beta_max")
            if len(low) == len(steps) and len(high) == len(steps):
                axes[0, 0].fill_between(steps, low, high, color=color, alpha=0.2)
        else:  # hardness and responsiveness off: beta' = beta0 throughout
            loss_steps, _ = _series(history, "loss")
            if len(loss_steps):
                axes[0, 0].plot(loss_steps, np.full(len(loss_steps), beta0), linestyle="--", color=color,
                                label=f"{label} (beta0)")
        for ax, key in ((axes[0, 1], "hano/lambda_mean"), (axes[1, 0], "hano/eta"), (axes[1, 1], "loss")):
            steps, values = _series(history, key)
            if len(steps):
                ax.plot(steps, values, label=label, color=color)
    for ax, title in panels:
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle("DPO training dynamics (paper Eq. 8, 11)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curve(curve: dict[str, Any], path: Path) -> Path:
    """HR@1 and NDCG@10 (or the largest K) of the model on the curve's validation rows over the SFT steps, with the
    baselines on the same rows as horizontal lines (paper Fig. 3 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = curve["points"]
    ndcg = max((k for k in points[0] if k.startswith("ndcg@")), key=lambda k: int(k.split("@")[1]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = [p["step"] for p in points]
    for ax, metric in zip(axes, ("hr@1", ndcg)):
        ax.plot(steps, [p[metric] for p in points], marker="o", color="C0", label="model (SFT)")
        for index, (name, values) in enumerate(curve["baselines"].items()):
            if metric in values:
                ax.axhline(values[metric], linestyle="--", color=f"C{index + 1}", label=values.get("label", name))
        ax.set_xlabel("SFT optimizer step")
        ax.set_title(f"{_header(metric)} on {curve['examples']} {curve.get('split', 'validation')} sequences")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_similarity(before: np.ndarray, after: dict[str, np.ndarray], labels: dict[str, str], path: Path) -> Path:
    """Title-image cosine after vs before DPO per item, and the mean change per quintile of the initial cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scatter, bars) = plt.subplots(1, 2, figsize=(11, 4.5))
    low, high = float(before.min()), float(before.max())
    for index, (name, values) in enumerate(after.items()):
        scatter.scatter(before, values, s=10, alpha=0.6, label=labels.get(name, name), color=f"C{index}")
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    scatter.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", label="unchanged")
    scatter.set_xlabel("title-image cosine, SFT model (before DPO)")
    scatter.set_ylabel("title-image cosine, after DPO")
    scatter.set_title("per item")
    scatter.legend(fontsize=8)
    edges = np.quantile(before, np.linspace(0, 1, 6))
    bins = np.clip(np.searchsorted(edges, before, side="right") - 1, 0, 4)
    width = 0.8 / max(1, len(after))
    for k, (name, values) in enumerate(after.items()):
        change = [float(np.mean(values[bins == b] - before[bins == b])) if np.any(bins == b) else 0.0
                  for b in range(5)]
        bars.bar(np.arange(5) + k * width, change, width=width, label=labels.get(name, name), color=f"C{k}")
    bars.axhline(0, color="grey", linewidth=1)
    bars.set_xticks(np.arange(5) + width * (len(after) - 1) / 2)
    bars.set_xticklabels(["lowest", "2", "3", "4", "highest"])
    bars.set_xlabel("quintile of the initial (SFT) similarity")
    bars.set_ylabel("mean change of the cosine")
    bars.set_title("'the weak get weaker'? (paper Fig. 1c)")
    bars.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_root: Path, models: Sequence[tuple[str, str]], *, beta0: float, header: dict[str, Any],
                 disclaimer: str | None) -> dict[str, Any]:
    """Collect ``eval/<name>/metrics.json`` of every (name, label) and the DPO log histories; write
    ``report/results.{md,json}`` and the plots. Returns the results dict (with the Markdown table under "table").

    ``results.json`` keeps, besides the metrics, each model's rank of the target on every test row
    (``per_row_ranks``, in the order of ``test_rows``, the test sequence ids), so that runs sharing the SFT model
    and the test rows can be paired later (:func:`merge_reports`)."""
    folder = run_root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    evaluations = {name: read_json(run_root / "eval" / name / "metrics.json") for name, _ in models}
    metrics = {name: evaluation["metrics"] for name, evaluation in evaluations.items()}
    labels = dict(models)
    ks = ranking_cutoffs(list(metrics.values()))
    intervals = {labels[name]: metric_intervals(e, ks) for name, e in evaluations.items()}
    table = results_table([(label, metrics[name]) for name, label in models], intervals)
    positions = position_table([(label, metrics[name]) for name, label in models])
    ranks = {name: e["per_row"]["ranking"]["ranks"] for name, e in evaluations.items()
             if "ranking" in e.get("per_row", {})}
    test_rows = next((e["per_row"]["ranking"]["sequence_ids"] for e in evaluations.values()
                      if "sequence_ids" in e.get("per_row", {}).get("ranking", {})), None)
    differences, group_labels = run_differences(ranks, models, ks)
    labels.update(group_labels)
    differences_md = differences_table(differences, labels) if differences else None

    plots: dict[str, str] = {}
    histories = {name: read_json(p) for name, _ in models
                 if (p := run_root / "dpo" / name / "log_history.json").is_file()}
    if differences:
        plots["paired_differences"] = str(plot_differences(differences, labels, folder / "paired_differences.png"))
    if histories:
        plots["training_dynamics"] = str(plot_training_dynamics(histories, labels, beta0,
                                                                folder / "training_dynamics.png"))
    curve_file = run_root / "sft" / "learning_curve.json"
    curve = read_json(curve_file) if curve_file.is_file() else None
    if curve and curve["points"]:
        plots["learning_curve"] = str(plot_learning_curve(curve, folder / "learning_curve.png"))
    similarity = {name: read_json(p) for name, _ in models
                  if (p := run_root / "eval" / name / "similarity.json").is_file()}
    similarity_summary: dict[str, Any] = {}
    if "sft" in similarity and len(similarity) > 1:
        before = np.asarray(similarity["sft"]["cosine"])
        after = {n: np.asarray(s["cosine"]) for n, s in similarity.items() if n != "sft"}
        plots["title_image_similarity"] = str(plot_similarity(before, after, labels,
                                                              folder / "title_image_similarity.png"))
        similarity_summary = {
            "items": len(before), "sft_mean": float(before.mean()),
            **{f"{n}_mean": float(v.mean()) for n, v in after.items()},
            **{f"{n}_mean_change": float((v - before).mean()) for n, v in after.items()},
        }

    results = {**header, "disclaimer": disclaimer,
               "models": {name: {"label": labels[name], **metrics[name],
                                 "intervals": {k: list(v) for k, v in intervals[labels[name]].items()}}
                          for name, _ in models},
               "paired_differences": differences, "title_image_similarity": similarity_summary, "plots": plots,
               "test_rows": test_rows, "per_row_ranks": ranks}
    write_json_atomic(folder / "results.json", results, sort_keys=False)  # models in table order
    lines = [f"# Results: {header.get('run_dir', '')}", ""]
    if disclaimer:
        lines += [f"> **{disclaimer}**", ""]
    lines += [f"Dataset: {header.get('dataset')}; model: {header.get('model')}; every row of the table is scored on "
              f"the same {header.get('test_sequences')} test sequences. In brackets: the 95% percentile-bootstrap "
              "interval over those rows. Under uniform negatives popularity is the bar to beat, not random.", "",
              table, ""]
    if positions:
        lines += ["Position diagnostic over the scored prompts (a model that ignores list position: top = first "
                  "listed near 1/num_candidates, Spearman near 0; the averaged ranking above is free of it):", "",
                  positions, ""]
    if differences_md:
        lines += ["Paired differences on the same test rows (95% percentile bootstrap over rows, 10,000 resamples; "
                  "an interval that contains 0 is no evidence of a difference):", "",
                  differences_md, ""]
    if similarity_summary:
        lines += ["Mean title-image cosine (paper Fig. 1c/4): " + ", ".join(
            f"{labels.get(k[:-5], k[:-5])} {v:.4f}" for k, v in similarity_summary.items() if k.endswith("_mean")), ""]
    lines += [f"![{name}]({Path(p).name})" for name, p in plots.items()]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {**results, "table": table, "differences_table": differences_md, "position_table": positions}


class ReportError(ValueError):
    """A file or dict that is not a pipeline report (``report/results.json``)."""


class ReportMergeError(ReportError):
    """Reports that cannot be paired: no per-row ranks, other test rows, or one model name for two trainings."""


def check_report(source: str, results: Any) -> None:
    """Raise :class:`ReportError` unless ``results`` (read from ``source``) is a pipeline report."""
    if not isinstance(results, dict) or "models" not in results:
        raise ReportError(f"{source} is not a pipeline report (no 'models')")


def read_report(path: str | Path) -> dict[str, Any]:
    """A run's ``report/results.json``, or :class:`ReportError` saying why the file is not one."""
    file = Path(path)
    if not file.is_file():
        raise ReportError(f"{file} does not exist")
    try:
        results = read_json(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{file} is not JSON ({err})") from err
    check_report(str(file), results)
    return results


def merge_reports(reports: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One report from the ``results.json`` of several runs on the same test rows from the same SFT model, e.g. the
    variants of one condition trained in separate runs (``--run.reuse_from``): the union of their models and
    per-row ranks, and the paired differences recomputed over all of them (:func:`run_differences`), so a
    variant of one run is compared with plain DPO of another.

    ``reports``: ``(source, results)`` pairs, ``source`` naming the file in errors. A model in several reports
    (SFT, the baselines, a training both ran) must have the same rank on every row in each; otherwise the runs
    are not on the same rows or not from the same model, and :class:`ReportMergeError` names the model and rows. A
    source given twice, or a report that adds no model to the ones before it (a copy), is refused naming it."""
    if not reports:
        raise ReportMergeError("no reports to merge")
    sources = [source for source, _ in reports]
    repeated = sorted({source for source in sources if sources.count(source) > 1})
    if repeated:
        raise ReportMergeError(f"{', '.join(repeated)}: given more than once; each report is merged once")
    models: dict[str, dict[str, Any]] = {}
    ranks: dict[str, list[float | None]] = {}
    owner: dict[str, str] = {}
    test_rows, rows_source = None, None
    for source, results in reports:
        check_report(source, results)
        if not results.get("per_row_ranks"):
            raise ReportMergeError(f"{source}: has no per_row_ranks (a report of an earlier version); rerun the run "
                                   "with --run.resume to rewrite its report")
        if results.get("test_rows") is not None:
            if test_rows is not None and results["test_rows"] != test_rows:
                raise ReportMergeError(f"{source}: other test rows than {rows_source} (test_rows differ)")
            test_rows, rows_source = results["test_rows"], source
        adds_nothing = bool(ranks) and all(name in ranks for name in results["per_row_ranks"])
        for name, values in results["per_row_ranks"].items():
            if name in ranks:
                if len(values) != len(ranks[name]):
                    raise ReportMergeError(f"{source}: {name} has {len(values)} test rows, {len(ranks[name])} in "
                                           f"{owner[name]}")
                differ = sum(a != b for a, b in zip(values, ranks[name]))
                if differ:
                    raise ReportMergeError(
                        f"{source}: {name} ranks the target differently on {differ} of {len(values)} test rows than "
                        f"in {owner[name]}: not the same model (or not the same rows)")
            else:
                ranks[name], owner[name] = list(values), source
        if adds_nothing:
            earlier = sorted({owner[name] for name in results["per_row_ranks"]})
            raise ReportMergeError(f"{source}: adds no model to {', '.join(earlier)} (every model in it is there "
                                   "already, with the same ranks): the same report twice?")
        for name, model in results["models"].items():
            models.setdefault(name, model)
    lengths = {len(v) for v in ranks.values()}
    if len(lengths) > 1:
        raise ReportMergeError(f"the reports' models were scored on different numbers of test rows: {sorted(lengths)}")
    pairs = [(name, model["label"]) for name, model in models.items()]
    ks = ranking_cutoffs(list(models.values()))
    differences, group_labels = run_differences(ranks, pairs, ks)
    first = reports[0][1]
    return {"dataset": first.get("dataset"), "model": first.get("model"), "test_sequences": first.get("test_sequences"),
            "merged_from": [source for source, _ in reports], "disclaimer": first.get("disclaimer"),
            "models": models, "paired_differences": differences, "group_labels": group_labels,
            "test_rows": test_rows, "per_row_ranks": ranks}


def merged_markdown(merged: dict[str, Any]) -> str:
    """The Markdown of a merged report: the results table (with intervals) and the paired differences."""
    models = merged["models"]
    table = results_table([(m["label"], m) for m in models.values()],
                          {m["label"]: m.get("intervals", {}) for m in models.values()})
    labels = {name: m["label"] for name, m in models.items()} | merged["group_labels"]
    lines = [f"# Merged report: {', '.join(merged['merged_from'])}", "",
             f"Dataset: {merged['dataset']}; model: {merged['model']}; every row is scored on the same "
             f"{len(next(iter(merged['per_row_ranks'].values())))} test rows (95% percentile-bootstrap intervals).",
             "", table, ""]
    if merged["paired_differences"]:
        lines += ["Paired differences on the same test rows (95% percentile bootstrap over rows):", "",
                  differences_table(merged["paired_differences"], labels), ""]
    return "\n".join(lines)


__all__ = ["ReportError", "ReportMergeError", "check_report", "differences_table", "merge_reports", "merged_markdown",
           "metric_intervals", "paired_differences", "plot_differences", "plot_learning_curve", "plot_similarity",
           "plot_training_dynamics", "position_table", "ranking_cutoffs", "read_report", "results_table",
           "run_differences", "seed_groups", "write_report"]
