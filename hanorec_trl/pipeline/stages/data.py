"""The data stage: the dataset (synthetic: generated here; a built-in format; or ``dataset: custom``), the users
subsampled if asked, and the protocol split (paper Sec. 4.1), frozen as JSONL + manifest in ``<run>/data``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...data import (
    ProtocolConfig,
    RecData,
    SyntheticConfig,
    build_split,
    freeze_split,
    load_microlens,
    load_movielens_1m,
    load_netflix_llmrec,
    load_split,
    write_synthetic_movielens,
)
from ..pipeline_config import PipelineConfig
from ..rundir import write_json_atomic
from .context import RunContext, recorded_fields, run_stage


LOADERS: dict[str, Callable[..., RecData]] = {
    "movielens": load_movielens_1m,
    "microlens": load_microlens,
    "netflix": load_netflix_llmrec,
}


DATA_FIELDS = ("dataset", "data_dir", "synthetic_num_users", "synthetic_num_items", "max_users", "min_interactions",
               "sequence_length", "num_candidates", "auc_num_unwatched", "split_by", "sliding_windows",
               "max_windows_per_user", "evaluation_windows")


def subsample_users(data: RecData, num_users: int, seed: int) -> RecData:
    """``data`` restricted to a seeded random sample of ``num_users`` users (all of their interactions)."""
    users = list(data.user_sequences())
    if num_users >= len(users):
        return data
    rng = np.random.default_rng(seed)
    kept = {users[k] for k in rng.choice(len(users), size=num_users, replace=False).tolist()}
    rows = [k for k, user in enumerate(data.users) if user in kept]
    return dataclasses.replace(
        data,
        users=[data.users[k] for k in rows],
        items=[data.items[k] for k in rows],
        timestamps=None if data.timestamps is None else [data.timestamps[k] for k in rows],
        sources={**data.sources, "subsample": f"{num_users} of {len(users)} users, seed {seed}"},
    )


def data_location(ctx: RunContext) -> Path:
    if ctx.synthetic:
        return ctx.rundir.stage_dir("data") / "synthetic"
    return Path(ctx.config.data.data_dir or ".")


CUSTOM_FIELDS = ("interactions", "items", "user_col", "item_col", "time_col", "title_col", "items_item_col", "sep",
                 "image_dir", "image_pattern")


def load_data(config: PipelineConfig, location: Path, with_images: bool) -> RecData:
    """Load the dataset files (errors name the file and line) and subsample users if asked."""
    if config.data.dataset == "custom":
        data = load_custom(config, with_images)
    else:
        data = LOADERS[config.data.dataset](location, images=with_images)
    if config.data.max_users is not None:
        data = subsample_users(data, config.data.max_users, config.seed)
    return data


def load_custom(config: PipelineConfig, with_images: bool) -> RecData:
    """``dataset: custom``: the ``data:`` section's tables through :func:`hanorec_trl.data.load_interactions`
    (relative paths are read from ``data.data_dir``)."""
    from ...data.custom import load_interactions

    d = config.data
    base = Path(d.data_dir) if d.data_dir else Path(".")

    def where(path: str | None) -> Path | None:
        return None if path is None else (Path(path) if Path(path).is_absolute() else base / path)

    return load_interactions(where(d.interactions), where(d.items), user_col=d.user_col, item_col=d.item_col,
                             time_col=d.time_col, title_col=d.title_col, items_item_col=d.items_item_col, sep=d.sep,
                             image_dir=where(d.image_dir) if with_images else None, image_pattern=d.image_pattern,
                             images=with_images)


def data_inputs(config: PipelineConfig, with_images: bool, data: RecData | None = None) -> dict[str, Any]:
    """What the data stage depends on (recorded in its folder, compared on resume)."""
    inputs = {**recorded_fields(config, DATA_FIELDS), "seed": config.seed, "with_images": with_images}
    if config.data.dataset == "custom":  # the files' names and what they hold (tables may also come in memory)
        inputs.update({name: getattr(config.data, name) for name in CUSTOM_FIELDS},
                      data_fingerprint=data.fingerprint() if data is not None else None)
    return inputs


def stage_data(ctx: RunContext) -> dict:
    """Dataset (synthetic: generated here), protocol split (paper Sec. 4.1), frozen as JSONL + manifest."""
    config = ctx.config
    folder = ctx.rundir.stage_dir("data")
    inputs = data_inputs(config, ctx.with_images, ctx.data)

    def work() -> dict:
        if ctx.synthetic:
            synthetic = SyntheticConfig(num_users=config.data.synthetic_num_users,
                                        num_items=config.data.synthetic_num_items, seed=config.seed)
            write_synthetic_movielens(folder / "synthetic", synthetic)
        if ctx.data is None:
            ctx.data = load_data(config, data_location(ctx), ctx.with_images)
        p = config.protocol
        protocol = ProtocolConfig(
            min_interactions=p.min_interactions, sequence_length=p.sequence_length, num_candidates=p.num_candidates,
            auc_num_unwatched=p.auc_num_unwatched, split_by=p.split_by, sliding_windows=p.sliding_windows,
            max_windows_per_user=p.max_windows_per_user, evaluation_windows=p.evaluation_windows, seed=config.seed,
        )
        split = build_split(ctx.data, protocol)
        freeze_split(split, folder / "split")
        summary = {"source": "synthetic" if ctx.synthetic else str(data_location(ctx)), "counts": split.counts(),
                   **ctx.data.summary()}
        write_json_atomic(folder / "summary.json", summary)
        return summary

    summary = run_stage(ctx, "data", folder, inputs, work)
    if ctx.data is None:
        ctx.data = load_data(config, data_location(ctx), ctx.with_images)
    ctx.split = load_split(folder / "split", ctx.data)
    counts = ctx.split.counts()
    ctx.say(f"        {ctx.data.name}: {ctx.data.num_users} users, {ctx.data.num_items} items; sequences "
            f"train/validation/test = {counts['train']}/{counts['validation']}/{counts['test']}; using "
            f"{len(ctx.train_examples)} for training and {len(ctx.test_examples)} for the test")
    return summary


__all__ = ["data_inputs", "load_custom", "load_data", "stage_data", "subsample_users"]
