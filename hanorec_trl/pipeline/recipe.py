"""Every stage of a recipe folder, in order, in one run directory: what ``examples/train_<dataset>.py`` runs.

A recipe is a folder of stage files, each holding raw fields of that stage's dataclasses (as TRL's and the
alignment-handbook's recipes do): ``data.yaml`` (``DataArguments``, ``ProtocolConfig``), ``sft.yaml`` (``SFTConfig``,
``ModelConfig``, ``SFTScriptArguments``), and, to go on to preference optimization, ``hardness.yaml``,
``dpo.yaml`` (``HaNoDPOConfig``, ``ModelConfig``, ``DPOScriptArguments``); ``evaluate.yaml`` (``EvalArguments``)
applies to every evaluation. The runner sets only what connects the stages: each stage's ``output_dir`` inside the
run directory, the paths of its inputs, ``images`` (from the model), the hardness stage's ``max_length`` (the DPO
stage's) and, unless a stage's file sets them, the model-loading fields of ``sft.yaml`` (``dtype``,
``attn_implementation``). Several DPO trainings from the one SFT model: ``variants.yaml``
(in the recipe folder, or ``--variants FILE``) maps each variant's name to its label and the ``HaNoDPOConfig``
fields it changes, with an optional ``seeds:`` list (every variant once per ``seed``).

Every file is parsed and checked (the dataclasses' own checks) before anything runs; the checks that need the data
(``max_length`` against the shortest row, K against the catalogue) run right after the data stage, before SFT.
Stages are identified by their content (:mod:`.stage`): ``--resume`` continues a run, reusing every complete stage
and continuing an unfinished one; ``--reuse_from`` copies the complete stages another run directory made from the
same configuration and inputs.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .parsing import ConfigError, load_yaml, parse_stage_args
from .run_dir import RunDir, new_run_dir
from .running import on_main_process, say, script_main

STAGE_FILES = ("data", "sft", "hardness", "dpo", "evaluate")
MODEL_LOADING = ("dtype", "attn_implementation")


@dataclass
class RecipeArguments:
    """The run of a recipe folder (each stage's own fields are in its file: ``docs/pipeline.md``)."""

    recipe: str | None = field(default=None, metadata={"help": "The recipe folder (data.yaml, sft.yaml, ...)."})
    data_dir: str | None = field(default=None, metadata={"help": "The dataset folder (replaces data.yaml's)."})
    run_dir: str | None = field(default=None, metadata={"help": "Run directory (default runs/<recipe>-<time>)."})
    resume: bool = field(default=False, metadata={"help": "Continue the run in run_dir."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace the run in run_dir (deletes only what the pipeline wrote there)."})
    reuse_from: str | None = field(default=None, metadata={
        "help": "Another run directory whose complete stages of the same configuration and inputs are reused."})
    variants: str | None = field(default=None, metadata={
        "help": "A variants file (name: {label, HaNoDPOConfig fields}; seeds: [...]); default <recipe>/variants.yaml."})

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the run or replace it")
        if (self.resume or self.overwrite) and not self.run_dir:
            raise ValueError(f"--{'resume' if self.resume else 'overwrite'} needs --run_dir")


@dataclass
class Plan:
    """The parsed stages of one recipe run (every value checked), by stage folder name."""

    root: Path
    stages: dict[str, tuple] = field(default_factory=dict)
    variants: list[tuple[str, str]] = field(default_factory=list)  # (name, label)


def _variants(path: Path | None) -> tuple[dict[str, dict[str, Any]], list[int] | None]:
    if path is None or not path.is_file():
        return {"hano": {"label": "HaNoRec"}}, None
    spec = load_yaml(path)
    seeds = spec.pop("seeds", None)
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{path}: seeds must be a list of distinct integers")
    for name, fields in spec.items():
        if not isinstance(fields, dict) or not str(name).replace("_", "").isalnum():
            raise ConfigError(f"{path}: variant {name!r} must be a name (letters, digits, _) mapping to fields")
    return spec, seeds


def make_plan(args: RecipeArguments, root: Path) -> Plan:
    """Parse every stage of the recipe with the runner's connecting fields; nothing is read or written yet."""
    from trl import ModelConfig, SFTConfig

    from ..config import HaNoDPOConfig
    from ..data import ProtocolConfig
    from ..scripts.data import DataArguments
    from ..scripts.dpo import DPOScriptArguments
    from ..scripts.evaluate import EvalArguments
    from ..scripts.hardness import HardnessArguments
    from ..scripts.report import ReportArguments
    from ..scripts.sft import SFTScriptArguments
    from .models import sees_images

    recipe = Path(args.recipe)
    if not recipe.is_dir():
        raise ConfigError(f"--recipe {recipe}: no such folder")
    files = {name: load_yaml(recipe / f"{name}.yaml") for name in STAGE_FILES if (recipe / f"{name}.yaml").is_file()}
    for needed in ("data", "sft"):
        if needed not in files:
            raise ConfigError(f"{recipe} has no {needed}.yaml (a recipe needs data.yaml and sft.yaml)")
    if ("dpo" in files) != ("hardness" in files):
        raise ConfigError(f"{recipe}: dpo.yaml and hardness.yaml go together (the hardness stage prepares DPO's pairs)")

    def where(name: str) -> str:
        return str(recipe / f"{name}.yaml")

    def stage(name: str, types: tuple, values: dict[str, Any], source: str) -> tuple:
        return parse_stage_args(types, [], config=values, where=source)

    plan = Plan(root)
    sft_file = files["sft"]
    model = sft_file.get("model_name_or_path", "tiny-qwen2.5-vl")
    loading = {k: sft_file[k] for k in MODEL_LOADING if k in sft_file}
    data = dict(files["data"], output_dir=str(root / "data"), images=sees_images(model),
                **({"data_dir": args.data_dir} if args.data_dir else {}))
    if "images" in files["data"] and files["data"]["images"] != data["images"]:
        raise ConfigError(f"{where('data')}: images {files['data']['images']} does not fit {model}")
    plan.stages["data"] = stage("data", (DataArguments, ProtocolConfig), data, where("data"))
    data_path = str(root / "data")
    plan.stages["sft"] = stage("sft", (SFTScriptArguments, SFTConfig, ModelConfig),
                               dict(sft_file, model_name_or_path=model, data_path=data_path,
                                    output_dir=str(root / "sft")), where("sft"))
    merged = str(root / "sft" / "merged")
    evaluate = files.get("evaluate", {})
    if evaluate.get("baselines", ["popularity"]):
        plan.stages["eval-baselines"] = stage("eval", (EvalArguments, ModelConfig),
                                              {**evaluate, "data_path": data_path, "output_dir": str(root /
                                               "eval-baselines"), "baselines": evaluate.get(
                                                  "baselines", ["random", "position", "popularity", "markov",
                                                                "item_knn"])}, where("evaluate"))
    trained = [("sft", "SFT", merged, None)]
    if "dpo" in files:
        variants, seeds = _variants(Path(args.variants) if args.variants else recipe / "variants.yaml")
        for name, spec in variants.items():
            spec = dict(spec)
            label = str(spec.pop("label", name))
            for seed in seeds or [None]:
                key = name if seed is None else f"{name}-seed{seed}"
                values = {**loading, **files["dpo"], **spec, "model_name_or_path": merged,
                          "dataset_name": str(root / "hardness" / "pairs"), "output_dir": str(root / f"dpo-{key}"),
                          **({} if seed is None else {"seed": seed})}
                plan.stages[f"dpo-{key}"] = stage("dpo", (DPOScriptArguments, HaNoDPOConfig, ModelConfig), values,
                                                  where("dpo") + f" (variant {key})")
                plan.variants.append((key, label if seed is None else f"{label} (seed {seed})"))
                trained.append((key, plan.variants[-1][1], merged, str(root / f"dpo-{key}" / "adapter")))
        first = plan.stages[f"dpo-{plan.variants[0][0]}"][1]
        plan.stages["hardness"] = stage("hardness", (HardnessArguments, ModelConfig),
                                        {**loading, **files["hardness"], "data_path": data_path,
                                         "model_name_or_path": merged, "max_length": first.max_length,
                                         "output_dir": str(root / "hardness")}, where("hardness"))
    for name, label, model_path, adapter in trained:
        values = {**loading, **evaluate, "baselines": [], "data_matched": False, "data_path": data_path,
                  "model_name_or_path": model_path, "adapter_path": adapter, "name": name, "label": label,
                  "output_dir": str(root / f"eval-{name}")}
        plan.stages[f"eval-{name}"] = stage("eval", (EvalArguments, ModelConfig), values, where("evaluate"))
    results = [str(root / n) for n in plan.stages if n.startswith("eval-")]
    plan.stages["report"] = (ReportArguments(results=results, output_dir=str(root / "report"),
                                             title=f"Results: {root}"),)
    return plan


def check_against_data(plan: Plan) -> None:
    """The values that need the data, checked right after the data stage, before any training."""
    from ..scripts.data import load_prepared
    from .models import load_tokenizer
    from .training import check_max_length

    prepared = load_prepared(plan.root / "data")
    items = prepared.data.num_items
    hardness = plan.stages.get("hardness")
    if hardness is not None and hardness[0].hardness_k >= items:
        raise ConfigError(f"hardness_k {hardness[0].hardness_k}: the catalogue has {items} items, so K is at most "
                          f"{items - 1}")
    model = plan.stages["sft"][2].model_name_or_path
    from .models import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        if BUILTIN_MODELS[model][1] and plan.stages["sft"][0].tokenizer == "tiny":
            from ..testing import tiny_tokenizer

            tokenizer = tiny_tokenizer()
        elif model == "smollm2":
            return  # its tokenizer comes with the weights; SFT checks max_length itself before training
        else:
            from ..processing import qwen2_5_tokenizer

            tokenizer = qwen2_5_tokenizer()
    else:
        tokenizer = load_tokenizer(model)
    check_max_length(prepared.dataset("sft"), tokenizer, plan.stages["sft"][1].max_length, "sft.yaml max_length")
    for name, parsed in plan.stages.items():
        if name.startswith("dpo-"):
            check_max_length(prepared.dataset("dpo"), tokenizer, parsed[1].max_length, f"dpo.yaml max_length ({name})")


def resume_command(argv: Sequence[str], root: Path) -> str:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--run_dir",):
            skip = True
        elif not arg.startswith("--run_dir=") and arg not in ("--resume", "--overwrite"):
            kept.append(arg)
    return shlex.join(["python", sys.argv[0] or "examples/train_<dataset>.py", *kept, "--run_dir", str(root),
                       "--resume"])


def run_recipe(args: RecipeArguments, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or continue) every stage of ``args.recipe`` in its run directory; returns the report's record."""
    from ..scripts import data, dpo, evaluate, hardness, report, sft
    from .training import TrainingInterrupted

    root = Path(args.run_dir) if args.run_dir else Path(on_main_process(lambda: str(new_run_dir(Path(args.recipe).name))))
    plan = make_plan(args, root)
    rundir = RunDir(root)
    stage_names = list(plan.stages)
    recipe_inputs = {"--recipe": args.recipe, "--data_dir": plan.stages["data"][0].data_dir,
                     "--variants": args.variants}
    lock = None

    def take() -> None:
        nonlocal lock
        rundir.check(resume=args.resume, overwrite=args.overwrite)
        rundir.check_inputs_outside(recipe_inputs, overwrite=args.overwrite)
        lock = rundir.lock()
        if lock.took_over:
            print(f"note: took over the lock of a run that is gone (pid {lock.took_over.get('pid')})", flush=True)
        rundir.prepare(stage_names, overwrite=args.overwrite, extra={"recipe": str(Path(args.recipe).resolve()),
                                                                      "argv": list(argv)})

    on_main_process(take)
    reuse = Path(args.reuse_from) if args.reuse_from else None
    say(f"HaNoRec pipeline: recipe {args.recipe}; run directory {root}")
    try:
        data.main(*plan.stages["data"])
        on_main_process(lambda: check_against_data(plan))
        runs = {"eval-baselines": evaluate.main, "sft": sft.main, "hardness": hardness.main}
        order = ["eval-baselines", "sft", "hardness"] + [n for n in stage_names if n.startswith("dpo-")]
        order += [n for n in stage_names if n.startswith("eval-") and n != "eval-baselines"]
        for name in order:
            if name in plan.stages:
                main = runs.get(name) or (dpo.main if name.startswith("dpo-") else evaluate.main)
                main(*plan.stages[name], reuse_from=reuse)
        record = report.main(*plan.stages["report"])
    except TrainingInterrupted as interrupt:
        interrupt.resume = resume_command(argv, root)
        raise
    except KeyboardInterrupt as interrupt:
        interrupt.resume = resume_command(argv, root)
        raise
    finally:
        if lock is not None:
            lock.release()
    say(f"results: {root / 'report' / 'results.md'}")
    return record


def parse(argv: Sequence[str] | None, default_recipe: str | Path | None = None) -> tuple:
    (args,) = parse_stage_args((RecipeArguments,), argv)
    if args.recipe is None:
        args.recipe = str(default_recipe)
    return (args, list(sys.argv[1:] if argv is None else argv))


def main(argv: Sequence[str] | None = None, *, default_recipe: str | Path | None = None) -> int:
    """The entry point of ``examples/train_<dataset>.py``; returns the exit code."""
    import datasets

    datasets.disable_progress_bars()  # saving and mapping; the stages' own work keeps its bars
    return script_main(lambda a: parse(a, default_recipe), run_recipe, argv)


__all__ = ["Plan", "RecipeArguments", "check_against_data", "main", "make_plan", "run_recipe"]
