r"""Stage 5, evaluation: one model (or the classical baselines) on the data stage's test rows -> ``results.json``.

    python -m hanorec_trl.scripts.evaluate --data_path runs/ml1m/data --model_name_or_path runs/ml1m/sft/merged \
        --adapter_path runs/ml1m/dpo-hano/adapter --name hano --label HaNoRec --output_dir runs/ml1m/eval-hano
    python -m hanorec_trl.scripts.evaluate --data_path runs/ml1m/data --baselines popularity markov item_knn \
        --output_dir runs/ml1m/eval-baselines

HR@K / NDCG@K (likelihood, every candidate order), AUC, 95% intervals, per-row ranks (``per_row_ranks`` in the order
of ``test_rows``), the title-image probe for a VLM (Fig. 1c) and the trained model's log history, for the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.reporting import ranking_cutoffs, results_record
from ..models import model_settings
from ..pipeline.parsing import ConfigError, parse_stage_args
from ..pipeline.running import run_stage, script_main
from ..pipeline.stage import Stage, describe, input_fingerprint
from .data import Prepared, load_prepared

OUTPUTS = ("results.json", "metrics")
BASELINE_NAMES = ("random", "position", "popularity", "markov", "item_knn", "sasrec")


@dataclass
class EvalArguments:
    """What to evaluate and how (the model's loading settings are ``ModelConfig``'s)."""

    data_path: str | None = field(default=None, metadata={"help": "The data stage's output folder."})
    output_dir: str | None = field(default=None, metadata={"help": "The stage folder to write (must be new)."})
    adapter_path: str | None = field(default=None, metadata={"help": "A LoRA adapter to load on the model."})
    name: str = field(default="model", metadata={"help": "The model's key in results.json."})
    label: str | None = field(default=None, metadata={"help": "The model's row label in the tables (name)."})
    baselines: list[str] = field(default_factory=list, metadata={
        "help": "Without model_name_or_path: the baselines to score (hanorec_trl.baselines).",
        "choices": list(BASELINE_NAMES)})
    data_matched: bool = field(default=False, metadata={
        "help": "Also fit every baseline on the LLM's training windows only, beside the full-data fit."})
    eval_ks: list[int] | None = field(default=None, metadata={"help": "Cut-offs K of HR@K / NDCG@K."})
    eval_batch_size: int = field(default=4, metadata={"help": "Prompts per forward."})
    ranking_mode: str = field(default="likelihood", metadata={
        "help": "'likelihood' (rank candidates by log-likelihood) or 'generation' (the paper's).",
        "choices": ["likelihood", "generation"]})
    auc_probability: str = field(default="sequence", metadata={
        "help": "P(Yes) from the 'Yes'/'No' completions ('sequence') or their first token.",
        "choices": ["sequence", "first_token"]})
    similarity_items: int = field(default=100, metadata={
        "help": "VLMs: items whose title-image cosine is measured (paper Fig. 1c); 0: none."})

    def __post_init__(self) -> None:
        if not self.data_path or not self.output_dir:
            raise ValueError("the evaluation stage needs --data_path and --output_dir")
        if self.eval_batch_size < 1 or self.similarity_items < 0:
            raise ValueError("eval_batch_size must be at least 1 and similarity_items at least 0")
        if self.eval_ks is not None and (not self.eval_ks or min(self.eval_ks) < 1):
            raise ValueError(f"eval_ks must be cut-offs of at least 1, got {self.eval_ks}")
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines names one twice: {self.baselines}")


def evaluate_baselines(args: EvalArguments, prepared: Prepared, folder: Path) -> dict[str, dict[str, Any]]:
    from ..baselines import evaluate_baselines as score

    out = score(args.baselines, prepared.data, prepared.split, prepared.test_examples, ks=args.eval_ks,
                matched_windows=prepared.train_examples if args.data_matched else None)
    for key, evaluation in out.items():
        (folder / "metrics" / f"{key}.json").write_text(json.dumps(evaluation) + "\n")
    return out


def evaluate_model(args: EvalArguments, model_args, prepared: Prepared, folder: Path) -> dict[str, Any]:
    import torch

    from ..evaluation import RecEvalConfig, evaluate_recommender
    from ..models import load_model, load_processing_class

    model = load_model(model_args.model_name_or_path, model_args)
    if args.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter_path).merge_and_unload()
    if torch.cuda.is_available():
        model.to("cuda")
    proc = load_processing_class(model_args.model_name_or_path)
    config = RecEvalConfig(ks=tuple(args.eval_ks) if args.eval_ks else None, ranking_mode=args.ranking_mode,
                           auc_probability=args.auc_probability, batch_size=args.eval_batch_size,
                           candidate_score="first_token" if prepared.args.answer_naming == "token" else "sequence")
    evaluate_recommender(model, proc, prepared.dataset("eval_ranking"), prepared.dataset("eval_auc"),
                         config=config, output_path=folder / "metrics" / f"{args.name}.json")
    evaluation = json.loads((folder / "metrics" / f"{args.name}.json").read_text(encoding="utf-8"))
    if prepared.args.images and args.similarity_items > 0:
        from ..evaluation.similarity import title_image_similarity

        items = list(dict.fromkeys([ex.target for ex in prepared.test_examples]
                                   + [c for ex in prepared.test_examples for c in ex.candidates]))
        items = items[: args.similarity_items]
        titles = [prepared.data.title(i).strip() or f"item {i}" for i in items]
        cosine = title_image_similarity(model, proc, items, titles, [prepared.data.image(i) for i in items],
                                        batch_size=args.eval_batch_size)
        evaluation["similarity"] = {"item_ids": items, "cosine": cosine.tolist()}
    return {args.name: {"label": args.label or args.name, **evaluation}}


def trained_by(args: EvalArguments, model_args) -> Path | None:
    """The stage folder that trained the model (the adapter's, else the merged model's parent), if it has logs."""
    path = Path(args.adapter_path or model_args.model_name_or_path or "").expanduser()
    return path.parent if (path.parent / "log_history.json").is_file() else None


def main(args: EvalArguments, model_args, *, reuse_from: Path | None = None) -> dict[str, Any]:
    """Run the evaluation stage into ``args.output_dir``; returns the stage record."""
    if bool(model_args.model_name_or_path) == bool(args.baselines):
        raise ConfigError("evaluate either a model (model_name_or_path) or baselines (--baselines ...), not both")
    prepared = load_prepared(args.data_path)
    root = Path(args.output_dir).resolve().parent
    inputs = {"data": input_fingerprint(args.data_path)}
    if model_args.model_name_or_path:
        inputs["model"] = input_fingerprint(model_args.model_name_or_path)
    if args.adapter_path:
        inputs["adapter"] = input_fingerprint(Path(args.adapter_path).parent)
    stage = Stage("evaluate", args.output_dir, describe(args, model_args, root=root), inputs, OUTPUTS)

    def work(folder: Path) -> dict[str, Any]:
        (folder / "metrics").mkdir(exist_ok=True)
        evaluated = (evaluate_baselines(args, prepared, folder) if args.baselines
                     else evaluate_model(args, model_args, prepared, folder))
        training = trained_by(args, model_args)
        settings = model_settings(model_args.model_name_or_path) if model_args.model_name_or_path else None
        training = {name: training for name in evaluated} if training else {}
        illustrative = prepared.args.synthetic or bool((settings or {}).get("random_weights"))
        results = results_record(evaluated, prepared.test_examples, prepared.data.name, illustrative, training)
        (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        return {"models": {name: {k: m[k] for k in m if k.startswith(("hr@", "ndcg@", "auc"))}
                           for name, m in results["models"].items()},
                "ks": ranking_cutoffs(list(results["models"].values()))}

    return run_stage(stage, work, reuse_from=reuse_from)


def parse(argv=None) -> tuple:
    from trl import ModelConfig

    return parse_stage_args((EvalArguments, ModelConfig), argv)


if __name__ == "__main__":
    raise SystemExit(script_main(parse, main))
