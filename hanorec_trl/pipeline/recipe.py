"""Every stage of a recipe folder, in order, in one run directory: what ``examples/train_<dataset>.py`` runs.

A recipe folder holds one YAML of raw fields per stage (``data``, ``sft``, ``hardness``, ``dpo``, ``evaluate``) and
optionally ``variants.yaml`` (``name: {label, HaNoDPOConfig fields}``, ``seeds: [...]``: several DPO trainings from
the one SFT model). The runner sets only what connects the stages (output folders, input paths, ``images``, the
hardness stage's ``max_length``, SFT's ``dtype`` / ``attn_implementation`` unless a file sets them). Every file is
checked before anything runs; what needs the data right after the data stage (``docs/pipeline.md``).
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

MODEL_LOADING = ("dtype", "attn_implementation")
DEFAULT_BASELINES = ["random", "position", "popularity", "markov", "item_knn", "sasrec"]  # each also data-matched


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
        "help": "Another run directory whose stages of the same configuration and inputs are reused."})
    variants: str | None = field(default=None, metadata={
        "help": "A variants file (name: {label, HaNoDPOConfig fields}; seeds: [...]); default <recipe>/variants.yaml."})

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the run or replace it")
        if (self.resume or self.overwrite) and not self.run_dir:
            raise ValueError(f"--{'resume' if self.resume else 'overwrite'} needs --run_dir")


def read_variants(path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, label, HaNoDPOConfig fields)`` of every training a variants file names (one per variant and seed)."""
    if not path.is_file():
        return [("hano", "HaNoRec", {})]
    spec = load_yaml(path)
    seeds = spec.pop("seeds", [None])
    if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be a list of distinct integers")
    out = []
    for name, fields in spec.items():
        if not isinstance(fields, dict) or not str(name).replace("_", "").isalnum():
            raise ConfigError(f"{path}: variant {name!r} must be a name (letters, digits, _) mapping to fields")
        fields = dict(fields)
        label = str(fields.pop("label", name))
        for seed in seeds:
            suffix, seeded = ("", {}) if seed is None else (f"-seed{seed}", {"seed": seed})
            out.append((f"{name}{suffix}", label + (f" (seed {seed})" if suffix else ""), {**fields, **seeded}))
    return out


def read_recipe(recipe: Path) -> dict[str, dict[str, Any]]:
    """The stage files of a recipe folder, by stage name."""
    return {p.stem: load_yaml(p) for p in sorted(recipe.glob("*.yaml")) if p.stem != "variants"}


def make_plan(args: RecipeArguments, root: Path, files: dict[str, dict[str, Any]] | None = None) -> dict[str, tuple]:
    """Every stage of the recipe (``files``: its stage files, else read), parsed and checked, in running order."""
    from trl import ModelConfig, SFTConfig

    from ..config import HaNoDPOConfig
    from ..data import ProtocolConfig
    from ..models import sees_images
    from ..scripts.data import DataArguments
    from ..scripts.dpo import DPOScriptArguments
    from ..scripts.evaluate import EvalArguments
    from ..scripts.hardness import HardnessArguments
    from ..scripts.report import ReportArguments
    from ..scripts.sft import SFTScriptArguments

    recipe = Path(args.recipe)
    files = read_recipe(recipe) if files is None else files
    if not {"data", "sft"} <= set(files) or ("dpo" in files) != ("hardness" in files):
        raise ConfigError(f"{recipe}: a recipe folder holds data.yaml and sft.yaml, and hardness.yaml with dpo.yaml "
                          f"(found: {', '.join(sorted(files)) or 'nothing'})")
    unknown = sorted(set(files) - {"data", "sft", "hardness", "dpo", "evaluate"})
    if unknown:
        raise ConfigError(f"{recipe}: {', '.join(u + '.yaml' for u in unknown)} is not a stage file")

    def parse(name: str, types: tuple, values: dict[str, Any], note: str = "") -> tuple:
        return parse_stage_args(types, [], config=values, where=f"{recipe / (name + '.yaml')}{note}")

    model = files["sft"].get("model_name_or_path", "tiny-qwen2.5-vl")
    loading = {k: files["sft"][k] for k in MODEL_LOADING if k in files["sft"]}
    images = sees_images(model)
    if files["data"].get("images", images) != images:
        raise ConfigError(f"{recipe / 'data.yaml'}: images {files['data']['images']} does not fit the model {model}")
    data_path, merged = str(root / "data"), str(root / "sft" / "merged")
    data = {**files["data"], "output_dir": data_path, "images": images}
    plan = {"data": parse("data", (DataArguments, ProtocolConfig), data | ({"data_dir": args.data_dir} if
                                                                          args.data_dir else {}))}
    evaluate = {"data_matched": True, **files.get("evaluate", {}), "data_path": data_path}
    baselines = evaluate.pop("baselines", DEFAULT_BASELINES)
    if baselines:
        plan["eval-baselines"] = parse("evaluate", (EvalArguments, ModelConfig), {
            **evaluate, "baselines": baselines, "output_dir": str(root / "eval-baselines")})
    plan["sft"] = parse("sft", (SFTScriptArguments, SFTConfig, ModelConfig), {
        **files["sft"], "model_name_or_path": model, "data_path": data_path, "output_dir": str(root / "sft")})
    trained = [("sft", "SFT", None)]
    if "dpo" in files:
        trainings = read_variants(Path(args.variants) if args.variants else recipe / "variants.yaml")
        dpo = {name: parse("dpo", (DPOScriptArguments, HaNoDPOConfig, ModelConfig), {
            **loading, **files["dpo"], **fields, "model_name_or_path": merged, "output_dir": str(root / f"dpo-{name}"),
            "dataset_name": str(root / "hardness" / "pairs")}, f" (variant {name})") for name, _, fields in trainings}
        plan["hardness"] = parse("hardness", (HardnessArguments, ModelConfig), {
            **loading, **files["hardness"], "data_path": data_path, "model_name_or_path": merged,
            "max_length": next(iter(dpo.values()))[1].max_length, "output_dir": str(root / "hardness")})
        plan.update({f"dpo-{name}": parsed for name, parsed in dpo.items()})
        trained += [(name, label, str(root / f"dpo-{name}" / "adapter")) for name, label, _ in trainings]
    for name, label, adapter in trained:
        plan[f"eval-{name}"] = parse("evaluate", (EvalArguments, ModelConfig), {
            **loading, **evaluate, "model_name_or_path": merged, "adapter_path": adapter, "name": name,
            "label": label, "output_dir": str(root / f"eval-{name}")})
    ks, candidates = plan[f"eval-{trained[0][0]}"][0].eval_ks, plan["data"][1].num_candidates
    if ks and max(ks) > candidates:
        raise ConfigError(f"{recipe / 'evaluate.yaml'}: eval_ks {ks}: the data stage ranks {candidates} candidates "
                          f"(data.yaml num_candidates), so K is at most {candidates}")
    results = [str(root / name) for name in plan if name.startswith("eval-")]
    plan["report"] = (ReportArguments(results=results, output_dir=str(root / "report"), title=f"Results: {root}"),)
    return plan


def check_against_data(plan: dict[str, tuple], root: Path) -> None:
    """The values that need the data, checked after the data stage and before any training."""
    from ..models import base_tokenizer
    from ..scripts.data import load_prepared
    from .training import check_max_length

    prepared = load_prepared(root / "data")
    if "hardness" in plan and plan["hardness"][0].hardness_k >= prepared.data.num_items:
        raise ConfigError(f"hardness_k {plan['hardness'][0].hardness_k}: the catalogue has "
                          f"{prepared.data.num_items} items, so K is at most {prepared.data.num_items - 1}")
    script_args, sft_args, model_args = plan["sft"]
    tokenizer = base_tokenizer(model_args, script_args.tokenizer == "tiny")
    check_max_length(prepared.dataset("sft"), tokenizer, sft_args.max_length, "sft.yaml max_length")
    for name, parsed in plan.items():
        if name.startswith("dpo-"):
            check_max_length(prepared.dataset("dpo"), tokenizer, parsed[1].max_length, f"dpo.yaml max_length ({name})")


def resume_command(argv: Sequence[str], root: Path) -> str:
    """The command that continues the run in ``root``: the same arguments with ``--run_dir root --resume``."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg in ("--resume", "--overwrite") or arg.startswith("--run_dir="):
            skip = False
        elif arg == "--run_dir":
            skip = True
        else:
            kept.append(arg)
    return shlex.join(["python", sys.argv[0] or "examples/train_<dataset>.py", *kept, "--run_dir", str(root),
                       "--resume"])


def run_recipe(args: RecipeArguments, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or continue) every stage of ``args.recipe`` in its run directory; returns the report's record."""
    from ..scripts import data, dpo, evaluate, hardness, report, sft

    if not Path(args.recipe).is_dir():
        raise ConfigError(f"--recipe {args.recipe}: no such folder")
    root = Path(args.run_dir or on_main_process(lambda: str(new_run_dir(Path(args.recipe).name))))
    rundir, lock = RunDir(root), []
    files = read_recipe(Path(args.recipe))
    inputs = {"--recipe": args.recipe, "--data_dir": args.data_dir, "--variants": args.variants} | {
        f"{name}.yaml {key}": value for name, values in files.items() for key, value in values.items()
        if isinstance(value, str)}
    on_main_process(lambda: rundir.check_inputs_outside(inputs, overwrite=args.overwrite))  # before reading them
    if args.reuse_from:
        RunDir(args.reuse_from).check_reuse_source()
    plan = make_plan(args, root, files)
    extra = {"recipe": str(Path(args.recipe).resolve()), "argv": list(argv)}

    def take() -> None:
        rundir.check(resume=args.resume, overwrite=args.overwrite)
        lock.append(rundir.lock())
        if lock[0].took_over:
            print(f"note: took over the lock of a run that is gone (pid {lock[0].took_over.get('pid')})", flush=True)
        rundir.prepare(list(plan), overwrite=args.overwrite, extra=None if args.resume else extra)

    on_main_process(take)
    reuse = {"reuse_from": Path(args.reuse_from)} if args.reuse_from else {}
    say(f"HaNoRec pipeline: recipe {args.recipe}; run directory {root}")
    mains = {"data": data.main, "eval": evaluate.main, "sft": sft.main, "hardness": hardness.main, "dpo": dpo.main}
    try:
        for name, parsed in plan.items():
            if name == "report":
                on_main_process(lambda: rundir.prepare(list(plan), overwrite=False, extra=extra))  # the last command
                return report.main(*parsed, rebuild=True)  # the run's report covers its current stages
            mains[name.split("-")[0]](*parsed, **({} if name == "data" else reuse))
            if name == "data":
                on_main_process(lambda: check_against_data(plan, root))
    except KeyboardInterrupt as interrupt:
        interrupt.resume = resume_command(argv, root)
        raise
    finally:
        for held in lock:
            held.release()
    raise AssertionError("unreachable: every plan ends with the report")


def main(argv: Sequence[str] | None = None, *, default_recipe: str | Path | None = None) -> int:
    """The entry point of ``examples/train_<dataset>.py``; returns the exit code."""
    def parse(argv):
        (args,) = parse_stage_args((RecipeArguments,), argv)
        args.recipe = args.recipe or str(default_recipe)
        return args, list(sys.argv[1:] if argv is None else argv)

    return script_main(parse, run_recipe, argv)


__all__ = ["RecipeArguments", "check_against_data", "main", "make_plan", "read_variants", "run_recipe"]
