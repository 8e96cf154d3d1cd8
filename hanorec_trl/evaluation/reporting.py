"""Tables, paired differences and plots of recommendation results: any number of models scored on the same test
rows (``evaluate_recommender``, the baselines), as the report stage, ``benchmarks/compare_conditions.py`` and a
library user tabulate them. Every number beside its 95% interval; paired differences with the rows a difference
of ``POWER_AT`` needs for 80% power; a variant trained under several seeds (``<name>-seed<N>``) pooled per row."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRIC_COLUMNS = ("hr@1", "hr@3", "ndcg@3", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "auc", "binary_auc")
HEADERS = {"auc": "AUC", "binary_auc": "binary AUC", "position_top_first": "top = first listed",
           "position_spearman": "Spearman(score, slot)"}
PLAIN_DPO_NAMES = ("dpo", "wo_all")  # every HaNoRec switch off: TRL's DPO
POWER_AT = 0.01  # the difference the rows-for-80%-power column is computed for
BAR = "baseline-popularity"  # under uniform negatives the bar to beat (docs/evaluation.md)
UNFITTED_BASELINES = ("baseline-random", "baseline-position")
SEEDED = re.compile(r"^(?P<base>.+)-seed(?P<seed>-?\d+)$")


class ReportError(ValueError):
    """Results that are not evaluation results or reports, or that cannot be paired; the message names the file."""


def results_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def read_results(path: str | Path) -> dict[str, Any]:
    """An evaluation's or a report's ``results.json``, or :class:`ReportError` saying why the file is not one."""
    file = results_file(path)
    if not file.is_file():
        raise ReportError(f"{file} does not exist")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{file} is not JSON ({err})") from None
    if not isinstance(results, dict) or not isinstance(results.get("models"), dict):
        raise ReportError(f"{file} is not evaluation results (no 'models')")
    return results


def merge_results(sources: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One set of results from several on the same test rows: the union of their models. A model in several must
    rank the target alike on every row; the same file twice, or two models with one label, is refused."""
    if not sources:
        raise ReportError("no results to report")
    merged: dict[str, Any] = {"models": {}, "per_row_ranks": {}, "training": {}, "similarity": {},
                              "merged_from": [], "illustrative": False}
    owner: dict[str, str] = {}
    for source, results in sources:
        if source in merged["merged_from"]:
            raise ReportError(f"{source} is given twice")
        merged["merged_from"].append(source)
        rows = results.get("test_rows")
        if rows is not None and merged.get("test_rows") not in (None, rows):
            raise ReportError(f"{source}: other test rows than {merged['merged_from'][0]} (test_rows differ)")
        for key in ("test_rows", "test_users", "dataset", "learning_curve"):
            merged[key] = merged.get(key) or results.get(key)
        merged["illustrative"] |= bool(results.get("illustrative"))
        if not isinstance(results.get("per_row_ranks"), dict):
            raise ReportError(f"{source}: no per_row_ranks (each model's rank of the target on every test row), so "
                              "neither the pairing nor the agreement of shared models can be checked")
        adds_nothing = bool(owner) and all(name in owner for name in results.get("models", {}))
        for name, ranks in results.get("per_row_ranks", {}).items():
            known = merged["per_row_ranks"].get(name)
            if known is not None and known != ranks:
                differ = sum(a != b for a, b in zip(known, ranks)) + abs(len(known) - len(ranks))
                raise ReportError(f"{source}: {name} ranks the target differently on {differ} test rows than in "
                                  f"{owner[name]}: not the same model, or not the same rows")
            merged["per_row_ranks"][name], owner[name] = ranks, owner.get(name, source)
        if adds_nothing:
            earlier = sorted({owner[name] for name in results["models"] if name in owner})
            raise ReportError(f"{source} adds no model to {', '.join(earlier)} (every model in it is there already, "
                              "with the same ranks): the same results twice?")
        owner.update({name: owner.get(name, source) for name in results.get("models", {})})
        for name, metrics in results.get("models", {}).items():
            known = merged["models"].setdefault(name, metrics)
            differ = sorted(key for key in set(known) | set(metrics) if known.get(key) != metrics.get(key))
            if differ:
                raise ReportError(f"{source}: {name} has other {', '.join(differ)} than in {owner[name]} (the same "
                                  "ranks, another evaluation): evaluate it once, or name the two apart")
        for part in ("training", "similarity"):
            for name, value in results.get(part, {}).items():
                merged[part].setdefault(name, value)
    labels = [m["label"] for m in merged["models"].values()]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ReportError(f"two models carry the label {', '.join(map(repr, twice))}: name them apart")
    if len({len(r) for r in merged["per_row_ranks"].values()}) > 1:
        raise ReportError("the models were scored on different numbers of test rows")
    return merged


def results_record(evaluated: dict[str, dict[str, Any]], test_examples, dataset: str, illustrative: bool,
                   trained_in: dict[str, Path] | None = None) -> dict[str, Any]:
    """What an evaluation's ``results.json`` holds (:func:`read_results`, :func:`merge_results`): each model's
    metrics (``evaluate_recommender`` / ``evaluate_baselines`` output, by name, with its ``label``) with 95%
    intervals and per-row ranks, the test rows and users, and the log history (and SFT learning curve) of the
    folder that trained each model (``trained_in``)."""
    ks = ranking_cutoffs([e["metrics"] for e in evaluated.values()])
    results: dict[str, Any] = {
        "dataset": dataset, "illustrative": illustrative, "test_rows": [ex.sequence_id for ex in test_examples],
        "test_users": [ex.user for ex in test_examples], "models": {}, "per_row_ranks": {}, "training": {},
        "similarity": {}}
    for name, evaluation in evaluated.items():
        intervals = {k: list(v) for k, v in metric_intervals(evaluation, ks).items()}
        results["models"][name] = {"label": evaluation["label"], **evaluation["metrics"], "intervals": intervals}
        ranks = evaluation.get("per_row", {}).get("ranking", {}).get("ranks")
        if ranks is not None:
            results["per_row_ranks"][name] = ranks
        if "similarity" in evaluation:
            results["similarity"][name] = evaluation["similarity"]
        folder = (trained_in or {}).get(name)
        if folder is not None:
            results["training"][name] = json.loads((folder / "log_history.json").read_text())
            if (folder / "learning_curve.json").is_file():
                results["learning_curve"] = json.loads((folder / "learning_curve.json").read_text())
    return results


def ranking_cutoffs(metric_dicts: Sequence[dict[str, Any]]) -> list[int]:
    """The K of every ``ndcg@K`` among the models' metrics, ascending."""
    return sorted({int(m.split("@")[1]) for metrics in metric_dicts for m in metrics if m.startswith("ndcg@")})


def metric_intervals(evaluation: dict[str, Any], ks: Sequence[int]) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap intervals over the test rows of HR@K, NDCG@K and AUC from an evaluation's per-row
    results (none for the exact expectation of the random baseline)."""
    from .metrics import auc_interval, mean_interval, ndcg_gains

    per_row, out = evaluation.get("per_row", {}), {}
    ranks = per_row.get("ranking", {}).get("ranks")
    if ranks:
        ranks = np.asarray([np.inf if r is None else r for r in ranks], dtype=np.float64)
        for k in ks:
            out[f"hr@{k}"] = mean_interval((ranks <= k).astype(np.float64))
            out[f"ndcg@{k}"] = mean_interval(ndcg_gains(ranks, k))
    auc = per_row.get("auc")
    if auc and "auc" in evaluation["metrics"] and 0 < sum(auc["labels"]) < len(auc["labels"]):
        out["auc"] = auc_interval(auc["labels"], auc["p_yes"])
    return out


def seed_groups(models: Sequence[tuple[str, str]]) -> dict[str, tuple[str, list[str]]]:
    """The trainings of one variant under several DPO seeds: ``{variant: (label, [names])}``."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for name, label in models:
        match = SEEDED.match(name)
        if match:
            members = groups.get(match["base"], ("", []))[1] + [name]
            pooled = f"mean of {len(members)} seeds" if len(members) > 1 else "1 seed"
            groups[match["base"]] = (f"{label.rsplit(' (seed ', 1)[0]} ({pooled})", members)
    return groups


def rank_array(ranks: Sequence[float | None]) -> np.ndarray:
    """Per-row ranks as stored in ``results.json`` (``None``: a row the model could not rank) as floats, ``inf``
    for ``None``."""
    return np.asarray([np.inf if v is None else v for v in ranks], dtype=np.float64)


def strongest_baseline(per_row_ranks: dict[str, list], top: int) -> str | None:
    """The full-data fitted baseline (not random, list position or a data-matched fit) with the highest mean
    NDCG@``top`` on these rows: the one an LLM recommender has to beat to be worth its cost."""
    from .metrics import ndcg_gains

    fitted = {name: ranks for name, ranks in per_row_ranks.items() if name.startswith("baseline-")
              and not name.endswith("-matched") and name not in UNFITTED_BASELINES}
    if not fitted:
        return None
    score = {name: float(np.mean(ndcg_gains(rank_array(ranks), top))) for name, ranks in fitted.items()}
    return max(score, key=score.get)


def paired_differences(per_row_ranks: dict[str, list], models: Sequence[tuple[str, str]], ks: Sequence[int],
                       bars: Sequence[str] = (), users: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Each trained model against each of ``bars`` (baselines), and each preference-optimized model against SFT and
    plain DPO, on the same rows: the mean per-row difference of HR@1 and NDCG@max(K) with a 95% paired bootstrap
    interval (over users when ``users`` is given) and the rows needed for 80% power at a difference of ``POWER_AT``.
    A seeded variant enters by its per-row mean over its seeds, with the difference seed by seed (``per_seed``:
    against the reference's training of the same seed)."""
    from .metrics import ndcg_gains, paired_bootstrap, rows_for_power

    top = max(ks)
    per_metric = {}
    for name, values in per_row_ranks.items():
        r = rank_array(values)
        per_metric[name] = {"hr@1": (r <= 1).astype(np.float64), f"ndcg@{top}": ndcg_gains(r, top)}
    names = [name for name, _ in models]
    seeded: dict[str, dict[int, str]] = {}
    for base, (_, members) in seed_groups(models).items():
        if all(m in per_metric for m in members):
            per_metric[base] = {k: np.mean([per_metric[m][k] for m in members], axis=0) for k in per_metric[members[0]]}
            names = [base if n == members[0] else n for n in names if n not in members[1:]]
            seeded[base] = {int(SEEDED.match(m)["seed"]): m for m in members}
    plain = [n for n in names if n in PLAIN_DPO_NAMES]
    pairs = [(n, bar) for bar in dict.fromkeys(bars) for n in names] + [(n, "sft") for n in names if n != "sft"]
    pairs += [(n, ref) for ref in plain for n in names if n not in ("sft", *plain)]
    out = []
    for name, reference in pairs:
        if name not in per_metric or reference not in per_metric:
            continue
        for metric, values in per_metric[name].items():
            delta = values - per_metric[reference][metric]
            entry = {"model": name, "reference": reference, "metric": metric, "rows": len(values),
                     **paired_bootstrap(values, per_metric[reference][metric], users=users),
                     "rows_for_80%_power": rows_for_power(delta, POWER_AT) if delta.std() > 0 else None}
            if name in seeded:
                same = seeded.get(reference)
                entry["per_seed"] = {seed: float(np.mean(per_metric[m][metric]
                                                         - per_metric[same[seed] if same else reference][metric]))
                                     for seed, m in seeded[name].items() if same is None or seed in same}
            out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------ tables
def _header(metric: str) -> str:
    return HEADERS.get(metric, metric.upper())


def _cell(value: Any, interval: Sequence[float] | None = None) -> str:
    if not isinstance(value, (int, float)) or value != value:
        return "-"
    return f"{value:.3f}" if interval is None else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def results_table(models: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per model, every metric with its 95% interval."""
    columns = [c for c in METRIC_COLUMNS if any(c in m for m in models.values())]
    lines = ["| model | " + " | ".join(_header(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for m in models.values():
        cells = [_cell(m.get(c), m.get("intervals", {}).get(c)) for c in columns]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def position_table(models: dict[str, dict[str, Any]]) -> str | None:
    present = [m for m in models.values() if "position_top_first" in m]
    if not present:
        return None
    lines = ["| model | prompts scored | top = first listed | Spearman(score, slot) |", "|---|---:|---:|---:|"]
    lines += [f"| {m['label']} | {m.get('num_prompt_rows', '-')} | {_cell(m['position_top_first'])} | "
              f"{_cell(m.get('position_spearman'))} |" for m in present]
    return "\n".join(lines)


def differences_table(differences: Sequence[dict[str, Any]], labels: dict[str, str]) -> str:
    seeds = any("per_seed" in d for d in differences)
    head = f"| model | vs | metric | rows | difference | 95% CI | rows for 80% power at {POWER_AT} |"
    lines = [head + (" by seed |" if seeds else ""),
             "|---|---|---|---:|---:|---|---:|" + ("---|" if seeds else "")]
    for d in differences:
        by_seed = " / ".join(f"{v:+.3f} (seed {s})" for s, v in d.get("per_seed", {}).items())
        power = d.get("rows_for_80%_power")
        lines.append(f"| {labels.get(d['model'], d['model'])} | {labels.get(d['reference'], d['reference'])} | "
                     f"{_header(d['metric'])} | {d['rows']} | {d['difference']:+.4f} | [{d['low']:+.4f}, "
                     f"{d['high']:+.4f}] | {power if power is not None else '-'} |"
                     + (f" {by_seed} |" if seeds else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plots
def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(*args, **kwargs)


def plot_differences(differences, labels: dict[str, str], path: Path, colour_by: str = "reference") -> Path:
    """Bars: each paired difference with its 95% interval, one panel per metric; dots: seed by seed."""
    metrics = list(dict.fromkeys(d["metric"] for d in differences))
    plt, fig, axes = _figure(1, len(metrics), figsize=(5.5 * len(metrics), 4.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        entries = [d for d in differences if d["metric"] == metric]
        xs, ys = np.arange(len(entries)), np.array([d["difference"] for d in entries])
        errors = np.array([[d["difference"] - d["low"] for d in entries],
                           [d["high"] - d["difference"] for d in entries]])
        groups = list(dict.fromkeys(d[colour_by] for d in entries))
        ax.bar(xs, ys, yerr=errors, color=[f"C{groups.index(d[colour_by])}" for d in entries], alpha=0.75, capsize=3)
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
    return (np.asarray([p[0] for p in points]), np.asarray([p[1] for p in points], dtype=float))


def plot_training_dynamics(histories: dict[str, list[dict]], labels: dict[str, str], path: Path) -> Path:
    """beta' (mean, min-max band), lambda, eta and the loss over the DPO steps, one line per variant."""
    plt, fig, axes = _figure(2, 2, figsize=(11, 7), sharex=True)
    panels = {"hano/beta_mean": axes[0, 0], "hano/lambda_mean": axes[0, 1], "hano/eta": axes[1, 0], "loss": axes[1, 1]}
    for index, (name, history) in enumerate(histories.items()):
        for key, ax in panels.items():
            steps, values = _series(history, key)
            if len(steps):
                ax.plot(steps, values, label=labels.get(name, name), color=f"C{index}")
        steps, low = _series(history, "hano/beta_min")
        _, high = _series(history, "hano/beta_max")
        if len(steps) and len(low) == len(high):
            axes[0, 0].fill_between(steps, low, high, color=f"C{index}", alpha=0.2)
    titles = ("beta' (mean, min-max band)", "lambda (batch mean)", "eta (responsiveness)", "DPO loss")
    for ax, title in zip(panels.values(), titles):
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle("DPO training dynamics (paper Eq. 8, 11; variants with HaNo off log no beta')")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curve(curve: dict[str, Any], path: Path) -> Path:
    """HR@1 and NDCG@max K on the curve's validation rows over the SFT steps, the baselines as lines."""
    points = curve["points"]
    ndcg = max((k for k in points[0] if k.startswith("ndcg@")), key=lambda k: int(k.split("@")[1]))
    plt, fig, axes = _figure(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("hr@1", ndcg)):
        ax.plot([p["step"] for p in points], [p[metric] for p in points], marker="o", color="C0", label="SFT")
        for index, (name, values) in enumerate(curve["baselines"].items()):
            if metric in values:
                ax.axhline(values[metric], linestyle="--", color=f"C{index + 1}", label=values.get("label", name))
        ax.set_xlabel("SFT optimizer step")
        ax.set_title(f"{_header(metric)} on {curve['examples']} validation sequences")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_similarity(before: np.ndarray, after: dict[str, np.ndarray], labels: dict[str, str], path: Path) -> Path:
    """Title-image cosine after vs before DPO per item, and the mean change per quintile of the initial cosine."""
    plt, fig, (scatter, bars) = _figure(1, 2, figsize=(11, 4.5))
    low, high = float(before.min()), float(before.max())
    for index, (name, values) in enumerate(after.items()):
        scatter.scatter(before, values, s=10, alpha=0.6, label=labels.get(name, name), color=f"C{index}")
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    scatter.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", label="unchanged")
    scatter.set_xlabel("title-image cosine, SFT model")
    scatter.set_ylabel("after DPO")
    scatter.legend(fontsize=8)
    bins = np.clip(np.searchsorted(np.quantile(before, np.linspace(0, 1, 6)), before, side="right") - 1, 0, 4)
    width = 0.8 / max(1, len(after))
    for k, (name, values) in enumerate(after.items()):
        change = [float(np.mean(values[bins == b] - before[bins == b])) if np.any(bins == b) else 0.0 for b in range(5)]
        bars.bar(np.arange(5) + k * width, change, width=width, label=labels.get(name, name), color=f"C{k}")
    bars.axhline(0, color="grey", linewidth=1)
    bars.set_xticks(np.arange(5) + width * (len(after) - 1) / 2)
    bars.set_xticklabels(["lowest", "2", "3", "4", "highest"])
    bars.set_xlabel("quintile of the SFT model's similarity")
    bars.set_title("mean change of the cosine ('the weak get weaker'? paper Fig. 1c)")
    bars.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(merged: dict[str, Any], folder: Path, title: str) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plots of :func:`merge_results`' output into ``folder``: every
    model's metrics with intervals, the position diagnostic, paired differences against popularity (the bar under
    uniform negatives), against the strongest full-data baseline (:func:`strongest_baseline`) and against the model
    each was trained from; returns the results record."""
    models = merged["models"]
    pairs = [(name, m["label"]) for name, m in models.items()]
    labels = dict(pairs) | {base: label for base, (label, _) in seed_groups(pairs).items()}
    ks = ranking_cutoffs(list(models.values()))
    trained = [(n, label) for n, label in pairs if not n.startswith("baseline-")]
    ranks = merged["per_row_ranks"]
    bars = [b for b in (BAR, strongest_baseline(ranks, max(ks)) if ks else None) if b in ranks]
    differences = paired_differences(ranks, trained, ks, bars=bars,
                                     users=merged.get("test_users")) if ks and len(ranks) > 1 else []
    plots: dict[str, str] = {}
    if differences:
        plots["paired_differences"] = plot_differences(differences, labels, folder / "paired_differences.png").name
    histories = {n: h for n, h in merged["training"].items() if n != "sft"}
    if histories:
        plots["training_dynamics"] = plot_training_dynamics(histories, labels, folder / "training_dynamics.png").name
    if (merged.get("learning_curve") or {}).get("points"):
        plots["learning_curve"] = plot_learning_curve(merged["learning_curve"], folder / "learning_curve.png").name
    similarity = merged["similarity"]
    if "sft" in similarity and len(similarity) > 1:
        before = np.asarray(similarity["sft"]["cosine"])
        after = {n: np.asarray(s["cosine"]) for n, s in similarity.items() if n != "sft"}
        plots["title_image_similarity"] = plot_similarity(before, after, labels,
                                                          folder / "title_image_similarity.png").name
    disclaimer = ("These numbers come from synthetic data or a model with random weights: they show that every stage "
                  "ran, not how well HaNoRec recommends." if merged.get("illustrative") else None)
    results = {**merged, "title": title, "paired_differences": differences, "plots": plots, "disclaimer": disclaimer}
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    rows = len(merged.get("test_rows") or next(iter(ranks.values()), []))
    lines = [f"# {title}", ""] + ([f"> **{disclaimer}**", ""] if disclaimer else [])
    lines += [f"Dataset: {merged.get('dataset')}; every row is scored on the same {rows} test rows. In brackets: the "
              "95% percentile-bootstrap interval over those rows. Under uniform negatives popularity is the bar to "
              "beat, not random.", "", results_table(models), ""]
    positions = position_table(models)
    if positions:
        lines += ["Position diagnostic (top = first listed near 1/candidates, Spearman near 0: no list-position "
                  "preference; the ranking above averages over every candidate order):", "", positions, ""]
    if differences:
        lines += ["Paired differences on the same test rows (95% paired bootstrap; an interval containing 0 shows no "
                  "difference):", "", differences_table(differences, labels), ""]
    lines += [f"![{name}]({file})" for name, file in plots.items()]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return results


__all__ = ["METRIC_COLUMNS", "PLAIN_DPO_NAMES", "POWER_AT", "ReportError", "differences_table", "merge_results",
           "metric_intervals", "paired_differences", "plot_differences", "plot_learning_curve", "plot_similarity",
           "plot_training_dynamics", "position_table", "ranking_cutoffs", "read_results", "results_file",
           "results_record", "results_table", "seed_groups", "strongest_baseline", "write_report"]
