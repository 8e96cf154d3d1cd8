"""The hardness stage (paper Eq. 4-6): item embeddings of the SFT model, the ``HardnessIndex``, and the DPO pairs
saved once (``hardness/pairs``) with a lambda column per hardness mode; every DPO variant trains on these rows."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...data import build_dpo_dataset
from ..pipeline_config import PipelineConfig
from ..rundir import read_json
from ..variants import lambda_column
from .context import RunContext, free_memory, item_table, recorded_fields, run_stage
from .model import load_sft_model


def _item_similarity(index, item_rows: dict[str, int]) -> Callable[[str, list[str]], np.ndarray]:
    """cosine(target, negatives) between fused item embeddings (paper Eq. 4), for ``rejected='hard'``."""

    def similarity(target: str, negatives: list[str]) -> np.ndarray:
        vectors = index.embeddings([item_rows[target]] + [item_rows[n] for n in negatives])
        return vectors[1:] @ vectors[0]

    return similarity


def _saved_index(ctx: RunContext):
    """The hardness stage's item embeddings as a HardnessIndex and the item -> row map."""
    from ...hardness import HardnessIndex

    saved = np.load(ctx.rundir.stage_dir("hardness") / "item_embeddings.npz")
    item_rows = {str(item): row for row, item in enumerate(saved["item_ids"].tolist())}
    return HardnessIndex(saved["text"], saved["image"]), item_rows


def dpo_dataset(ctx: RunContext, index=None, item_rows: dict[str, int] | None = None):
    """The DPO pairs; ``rejected='hard'`` ranks negatives by the SFT model's item embeddings (the hardness stage's,
    or ``index`` / ``item_rows`` while that stage runs)."""
    config = ctx.config
    similarity = None
    if config.protocol.rejected == "hard":
        if index is None:
            index, item_rows = _saved_index(ctx)
        similarity = _item_similarity(index, item_rows)
    p = config.protocol
    return build_dpo_dataset(ctx.train_examples, ctx.data, task=p.dpo_task, rejected=p.rejected,
                             num_rejected=p.num_rejected, seed=config.seed, similarity=similarity,
                             with_images=ctx.with_images, templates=ctx.templates)


PAIRS = "pairs"  # the hardness stage's DPO pairs (Dataset.save_to_disk), one lambda column per hardness mode
HARDNESS_FIELDS = ("hardness_k", "hardness_temperature", "hardness_title_mode", "dpo_task", "num_rejected", "rejected",
                   "max_train_sequences")


def hardness_inputs(config: PipelineConfig) -> dict[str, Any]:
    return recorded_fields(config, HARDNESS_FIELDS)


def stage_hardness(ctx: RunContext) -> dict:
    """Item embeddings from the SFT model (docs/design.md section 2), HardnessIndex, and the DPO pairs saved once
    (``hardness/pairs``, ``Dataset.save_to_disk``) with lambda for both modes: ``hano_lambda_topk`` and
    ``hano_lambda_pairwise``. Each DPO variant trains on these rows and reads its column (``dpo.hardness_column``)."""
    from ...encoders import QwenVLItemEncoder, encode_items
    from ...hardness import HardnessIndex, add_hardness_column

    config = ctx.config
    hard = config.hardness
    folder = ctx.rundir.stage_dir("hardness")
    inputs = hardness_inputs(config)

    def work() -> dict:
        proc = ctx.processing_class()
        model = load_sft_model(ctx)
        encoder = QwenVLItemEncoder(model, proc, title_mode=hard.hardness_title_mode)
        item_ids = list(ctx.data.item_ids)
        titles, images = item_table(ctx, item_ids)
        # no cache: item_embeddings.npz below is this stage's output, and a finished stage never recomputes it
        embeddings = encode_items(encoder, item_ids, titles, images, use_cache=False)
        np.savez(folder / "item_embeddings.npz", item_ids=np.array(item_ids), text=embeddings.text,
                 image=embeddings.image)
        del model, encoder
        free_memory()
        index = HardnessIndex(embeddings.text, embeddings.image)
        pairs = dpo_dataset(ctx, index, embeddings.item_rows)
        delta_means: dict[str, float] = {}
        for mode in ("topk", "pairwise"):
            pairs, delta_mean = add_hardness_column(pairs, index, embeddings.item_rows, k=hard.hardness_k,
                                                    temperature=hard.hardness_temperature, mode=mode,
                                                    column=lambda_column(mode))
            delta_means[mode] = float(delta_mean)
        pairs.save_to_disk(str(folder / PAIRS))
        stats = {}
        for mode in ("topk", "pairwise"):
            values = np.asarray(pairs[lambda_column(mode)], dtype=np.float64)
            stats[mode] = {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}
        ctx.say("        lambda (topk) min/mean/max = {min:.4f}/{mean:.4f}/{max:.4f}".format(**stats["topk"]))
        return {"items": len(item_ids), "rows": len(pairs), "lambda": stats, "delta_mean": delta_means,
                "embedding_dim": int(embeddings.text.shape[1]), "pairs": str(folder / PAIRS)}

    return run_stage(ctx, "hardness", folder, inputs, work, upstream=(ctx.rundir.stage_dir("sft"),))


def _saved_pairs(ctx: RunContext):
    """The hardness stage's DPO pairs with their lambda columns, or None when that stage did not run. A hardness
    stage of an earlier version (``lambdas.json``, no saved pairs) is converted once: its rows are rebuilt, checked
    against the scored ones and saved with the lambda columns."""
    from datasets import load_from_disk

    folder = ctx.rundir.stage_dir("hardness")
    if not ctx.rundir.is_done(folder):
        return None
    if not (folder / PAIRS).is_dir():
        if ctx.is_main:
            _convert_lambdas_json(ctx, folder)
        ctx.barrier()
    return load_from_disk(str(folder / PAIRS))


def _convert_lambdas_json(ctx: RunContext, folder: Path) -> None:
    """A finished hardness stage of an earlier version -> ``hardness/pairs`` (the same rows and lambdas)."""
    record = read_json(folder / "lambdas.json")
    dataset = dpo_dataset(ctx)
    current = dataset.select_columns(["sequence_id", "task", "chosen_item", "rejected_item"]).to_dict()
    if current != record["rows"]:
        raise RuntimeError(
            f"the DPO rows differ from those scored in {folder}; the data or the protocol changed since the hardness "
            "stage ran (start a new run directory)"
        )
    for mode, values in record["lambda"].items():
        dataset = dataset.add_column(lambda_column(mode), np.asarray(values, dtype=np.float32))
    ctx.say(f"        converting {folder / 'lambdas.json'} (an earlier version's hardness output) to {folder / PAIRS}")
    tmp = folder / (PAIRS + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    tmp.rename(folder / PAIRS)


def dpo_pairs(ctx: RunContext):
    """The DPO rows of every variant: the hardness stage's saved pairs, or (no hardness stage) built here; a seeded
    sample of ``protocol.max_dpo_pairs`` of them when set."""
    pairs = _saved_pairs(ctx)
    pairs = pairs if pairs is not None else dpo_dataset(ctx)
    cap = ctx.config.protocol.max_dpo_pairs
    if cap is not None and len(pairs) > cap:  # a seeded sample, in the saved order
        rows = np.sort(np.random.default_rng(ctx.config.seed).choice(len(pairs), size=cap, replace=False))
        pairs = pairs.select(rows.tolist())
    return pairs


__all__ = ["PAIRS", "dpo_dataset", "dpo_pairs", "hardness_inputs", "stage_hardness"]
