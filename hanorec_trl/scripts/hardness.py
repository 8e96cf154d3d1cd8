r"""Stage 3, hardness: the SFT model's item embeddings, lambda of every DPO pair (paper Eq. 4-6) and the reference
log-probs of every pair, once for all DPO variants from this SFT model.

    python -m hanorec_trl.scripts.hardness --config examples/recipes/movielens/smollm2/hardness.yaml \
        --data_path runs/ml1m/data --model_name_or_path runs/ml1m/sft/merged --output_dir runs/ml1m/hardness

Writes ``pairs/``: the pairs (``hard_negatives``: rejected items nearest to the target) with ``hano_lambda`` (Top-K
sets), ``hano_lambda_pairwise`` ("w/o SAM") and TRL's ``ref_chosen_logps`` / ``ref_rejected_logps`` (computed under
``max_length``, the DPO stage's); ``item_embeddings.npz``, ``reference.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline.parsing import parse_stage_args
from ..pipeline.running import run_stage, say, script_main
from ..pipeline.stage import Stage, describe, input_fingerprint
from .data import Prepared, load_prepared

OUTPUTS = ("pairs", "item_embeddings.npz", "reference.json")
LAMBDA_COLUMNS = {"topk": "hano_lambda", "pairwise": "hano_lambda_pairwise"}


@dataclass
class HardnessArguments:
    """The hardness stage: lambda from the SFT model's item embeddings, and the shared reference log-probs."""

    data_path: str | None = field(default=None, metadata={"help": "The data stage's output folder."})
    output_dir: str | None = field(default=None, metadata={"help": "The stage folder to write (must be new)."})
    hardness_k: int = field(default=10, metadata={"help": "K of the Top-K similarity sets (paper: 10)."})
    hardness_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature tau of Eq. 5."})
    hardness_title_mode: str = field(default="input_embeddings", metadata={
        "help": "Title embedding: mean input embedding of the title tokens, or mean last hidden state "
        "('contextual'; docs/design.md section 2).", "choices": ["input_embeddings", "contextual"]})
    hardness_space: str = field(default="lm", metadata={
        "help": "The item vectors of lambda: 'lm', the SFT model's embeddings of titles (and images), the paper's; "
        "'cf', the data stage's collaborative vectors (item_cf.npz; docs/hardness.md).", "choices": ["lm", "cf"]})
    hard_negatives: bool = field(default=False, metadata={
        "help": "Replace each pair's rejected item by the negative nearest to the target in lambda's item space "
        "(hardness_space; the data stage's num_rejected nearest; its random ones otherwise)."})
    reference: bool = field(default=True, metadata={
        "help": "Compute the reference log-probs (TRL's ref_chosen_logps / ref_rejected_logps) once here."})
    max_length: int | None = field(default=None, metadata={
        "help": "The DPO stage's max_length, under which the reference log-probs are computed (must be equal)."})
    reference_batch_size: int = field(default=4, metadata={"help": "Pairs per forward of the reference pass."})

    def __post_init__(self) -> None:
        if not self.data_path or not self.output_dir:
            raise ValueError("the hardness stage needs --data_path and --output_dir")
        if self.hardness_k < 1 or self.reference_batch_size < 1:
            raise ValueError("hardness_k and reference_batch_size must be at least 1")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be at least 1 (or None), got {self.max_length}")


def _pairs(prepared: Prepared, args: HardnessArguments, index, item_rows):
    """The DPO pairs: the data stage's, or rebuilt with the nearest negatives (``hard_negatives``)."""
    from ..data import build_dpo_dataset
    from ..data.builders import sample_pairs

    if not args.hard_negatives:
        return prepared.dataset("dpo")

    def similarity(target: str, negatives: list[str]) -> np.ndarray:
        vectors = index.embeddings([item_rows[target]] + [item_rows[n] for n in negatives])
        return vectors[1:] @ vectors[0]

    d = prepared.args
    pairs = build_dpo_dataset(prepared.train_examples, prepared.data, task=d.dpo_task, rejected="hard",
                              num_rejected=d.num_rejected, seed=prepared.protocol.seed, similarity=similarity,
                              **d.naming(prepared.data))
    return sample_pairs(pairs, d.max_dpo_pairs, prepared.protocol.seed)


def main(args: HardnessArguments, model_args, *, reuse_from: Path | None = None) -> dict[str, Any]:
    """Run the hardness stage into ``args.output_dir``; ``model_args.model_name_or_path`` is the SFT model."""
    from ..encoders import CollaborativeItemEncoder, QwenVLItemEncoder, encode_items
    from ..fast.cpu_lm_head import compact_lm_head_on_cpu
    from ..hardness import HardnessIndex, add_hardness_column
    from ..model_utils import lora_config
    from ..models import load_model, load_processing_class
    from ..reference import add_reference_logps

    prepared = load_prepared(args.data_path)
    model_path = model_args.model_name_or_path
    root = Path(args.output_dir).resolve().parent
    inputs = {"data": input_fingerprint(args.data_path), "model": input_fingerprint(model_path)}
    stage = Stage("hardness", args.output_dir, describe(args, model_args, root=root), inputs, OUTPUTS)

    def work(folder: Path) -> dict[str, Any]:
        data = prepared.data
        model, processing_class = load_model(model_path, model_args), load_processing_class(model_path)
        encoder = (CollaborativeItemEncoder(prepared.cf) if args.hardness_space == "cf" else
                   QwenVLItemEncoder(model, processing_class, title_mode=args.hardness_title_mode))
        item_ids = list(data.item_ids)
        titles = [data.title(i).strip() or f"item {i}" for i in item_ids]
        images = [data.image_path(i) for i in item_ids] if prepared.args.images else None
        embeddings = encode_items(encoder, item_ids, titles, images, use_cache=False)
        np.savez(folder / "item_embeddings.npz", item_ids=np.array(item_ids), text=embeddings.text,
                 image=embeddings.image)
        index = HardnessIndex(embeddings.text, embeddings.image)
        pairs = _pairs(prepared, args, index, embeddings.item_rows)
        spread = {}
        for mode, column in LAMBDA_COLUMNS.items():
            pairs, delta_mean = add_hardness_column(pairs, index, embeddings.item_rows, k=args.hardness_k,
                                                    temperature=args.hardness_temperature, mode=mode, column=column)
            values = np.asarray(pairs[column], dtype=np.float64)
            spread[mode] = {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max()),
                            "delta_mean": float(delta_mean)}
        say("        lambda (Top-K) min/mean/max = {min:.4f}/{mean:.4f}/{max:.4f}".format(**spread["topk"]))
        with_reference = None
        if args.reference:  # the model that encoded the items: the SFT model, the DPO reference
            with compact_lm_head_on_cpu():
                with_reference = add_reference_logps(
                    pairs, model, processing_class, max_length=args.max_length,
                    batch_size=args.reference_batch_size,
                    peft_config=lora_config(model, dataclasses.replace(model_args, use_peft=True)))
        reference = {"model": inputs["model"], "max_length": args.max_length,
                     "computed": with_reference is not None}
        (folder / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
        (with_reference if with_reference is not None else pairs).save_to_disk(str(folder / "pairs"))
        return {"rows": len(pairs), "lambda": spread, "reference_logps": reference["computed"]}

    return run_stage(stage, work, reuse_from=reuse_from)


def parse(argv=None) -> tuple:
    from trl import ModelConfig

    return parse_stage_args((HardnessArguments, ModelConfig), argv)


if __name__ == "__main__":
    raise SystemExit(script_main(parse, main))
