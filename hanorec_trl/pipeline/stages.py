"""The stages of a run: data -> model -> SFT -> hardness -> DPO (per variant) -> evaluation (per model).

Each stage function takes the :class:`RunContext`, works in its own folder of the run directory (see
:mod:`.rundir`), is skipped when that folder is marked finished (after checking that the arguments it depended on
did not change), and returns a small summary dict. Training stages run on every process (``accelerate launch``);
the others run on the main process while the rest wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import (
    PromptTemplates,
    ProtocolConfig,
    RecData,
    RecSplit,
    SyntheticConfig,
    build_auc_eval_dataset,
    build_dpo_dataset,
    build_ranking_eval_dataset,
    build_sft_dataset,
    build_split,
    freeze_split,
    load_microlens,
    load_movielens_1m,
    load_netflix_llmrec,
    load_split,
    write_synthetic_movielens,
)
from ..evaluation.scoring import text_tokenizer
from ..fast.forward import frozen_vision_without_graph, image_feature_cache, parameters_sharded
from .arguments import PipelineConfig, PipelineConfigError, Variant, lambda_column
from .modeling import (
    ModelSpec,
    load_model,
    lora_config,
    merge_adapter,
    processing_class,
    with_adapter,
    write_builtin_model,
)
from .rundir import RunDir, on_main_process, read_json, write_json_atomic
from .training import (
    StopOnNonFinite,
    TrainingInterrupted,
    compact_lm_head_on_cpu,
    last_checkpoint,
    stop_at_step_end_on_interrupt,
    use_stage_progress,
    without_zero3_init,
)


LOADERS: dict[str, Callable[..., RecData]] = {
    "movielens": load_movielens_1m,
    "microlens": load_microlens,
    "netflix": load_netflix_llmrec,
}


# ----------------------------------------------------------------------------------------------------------------
# Context
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """Everything the stages share: arguments, run directory, model, data, the process group."""

    config: PipelineConfig
    rundir: RunDir
    spec: ModelSpec
    state: Any  # accelerate.PartialState
    data: RecData | None = None
    split: RecSplit | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    @property
    def with_images(self) -> bool:
        return self.spec.with_images

    @property
    def synthetic(self) -> bool:
        return self.config.data.data_dir is None and self.config.data.dataset != "custom"

    @property
    def train_examples(self):
        limit = self.config.protocol.max_train_sequences
        return self.split.train[:limit] if limit else self.split.train

    @property
    def test_examples(self):
        limit = self.config.protocol.max_test_sequences
        return self.split.test[:limit] if limit else self.split.test

    def processing_class(self):
        return processing_class(self.spec, self.config)

    @property
    def templates(self) -> PromptTemplates:
        return PromptTemplates(system=self.config.protocol.system_prompt)



def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_stage(ctx: RunContext, stage: str, folder: Path, inputs: dict[str, Any], work: Callable[[], dict],
              *, all_processes: bool = False, keep: tuple[str, ...] = ()) -> dict:
    """Run ``work`` in ``folder`` unless the stage is finished; mark it finished (main process, last, atomically).

    ``all_processes``: every process runs ``work`` (training); otherwise the main process does and the others wait.
    ``keep``: entries of an unfinished stage folder that survive a restart (the trainer's checkpoints).
    """
    rundir = ctx.rundir
    if rundir.is_done(folder):
        rundir.check_inputs(folder, stage, inputs)
        ctx.skipped.append(stage)
        ctx.say(f"[{stage}] finished earlier: skipped ({folder})")
        return rundir.marker(folder)["summary"]
    ctx.say(f"[{stage}] running -> {folder}")
    start = time.perf_counter()

    def begin() -> None:
        resume = ctx.config.run.resume
        if resume:  # what an earlier attempt left is continued only with the arguments it started with
            note = rundir.check_started(folder, stage, inputs, keep)
            if note:
                ctx.say(f"        note: {note}")
        rundir.fresh_stage(folder, keep=keep if resume else ())
        rundir.mark_started(folder, inputs)

    on_main_process(ctx.state, begin)
    summary: dict = {}
    if all_processes:
        summary = work()
    elif ctx.is_main:
        with without_zero3_init():
            summary = work()
    ctx.barrier()
    seconds = time.perf_counter() - start
    if ctx.is_main:
        rundir.mark_done(folder, inputs, summary, seconds)
    ctx.barrier()
    ctx.stage_seconds[stage] = seconds
    ctx.say(f"[{stage}] done in {seconds:.1f} s")
    return rundir.marker(folder)["summary"]


def _fields(config: PipelineConfig, names) -> dict[str, Any]:
    """Arguments under their flat names (:meth:`PipelineConfig.flat`): what the stages record and compare on resume,
    the same names as in run directories of earlier versions."""
    flat = config.flat()
    return {n: flat[n] for n in names}


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------

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
    from ..data.custom import load_interactions

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
    inputs = {**_fields(config, DATA_FIELDS), "seed": config.seed, "with_images": with_images}
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


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def model_inputs(config: PipelineConfig) -> dict[str, Any]:
    return {"model": config.model.model_name_or_path, "tokenizer": config.run.tokenizer, "seed": config.sft.seed,
            "bf16": config.bf16}


def stage_model(ctx: RunContext) -> dict:
    """Built-in models are built and written to ``<run>/model/base``; other models are referenced where they are."""
    config = ctx.config
    folder = ctx.rundir.stage_dir("model")
    inputs = model_inputs(config)

    def work() -> dict:
        summary = {"model": ctx.spec.name, "description": ctx.spec.description, "kind": ctx.spec.kind}
        if ctx.spec.builtin:
            summary.update(write_builtin_model(ctx.spec, config, folder / "base", config.sft.seed))
            summary["path"] = str(folder / "base")
        else:
            summary["path"] = ctx.spec.path
        return summary

    summary = run_stage(ctx, "model", folder, inputs, work)
    if ctx.spec.builtin:
        ctx.spec = ctx.spec.located(folder / "base")
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Shared training settings
# ----------------------------------------------------------------------------------------------------------------


def _lora_fields(config: PipelineConfig, stage: str = "sft") -> dict[str, Any]:
    flat = config.flat()
    fields = {k: flat[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "bf16",
                                   "load_in_4bit", "attn_implementation", "gradient_checkpointing")}
    if stage == "dpo":
        fields["gradient_checkpointing"] = flat["dpo_gradient_checkpointing"]
    return fields


@contextlib.contextmanager
def _sft_fast_path(trainer, stats: dict):
    """Around SFT: a frozen vision tower runs without a graph, and (unless parameters are sharded) each distinct image's
    features are computed once for the whole stage (docs/fast_path.md); the cache's counts go into ``stats``.
    HaNoDPOTrainer does both itself."""
    caching = contextlib.nullcontext() if parameters_sharded(trainer) else image_feature_cache(trainer.model)
    with frozen_vision_without_graph(trainer.model), caching as cache:
        yield
        if cache is not None:
            stats["vision_cache"] = cache.counts()


def _resume_point(ctx: RunContext, trainer, folder: Path, description: str) -> str | None:
    """The newest complete checkpoint of the stage (when resuming); incomplete newer ones (a save cut by a kill) are
    named and deleted, so that training continues from the previous complete one."""
    if not ctx.config.run.resume:
        return None
    need_state = bool(getattr(trainer.args, "use_responsiveness", False))  # HaNoDPOTrainer's eta state
    resume_from, incomplete = last_checkpoint(folder / "trainer", hano_state=need_state)
    for path, why in incomplete:
        ctx.say(f"        {description}: {path} is incomplete ({why}); resuming from the previous complete "
                f"checkpoint ({resume_from or 'none: training starts over'})")
    ctx.barrier()
    if ctx.is_main:
        for path, _ in incomplete:
            shutil.rmtree(path, ignore_errors=True)
    ctx.barrier()
    return resume_from


def _train(ctx: RunContext, trainer, folder: Path, description: str, sft: bool = False) -> dict:
    """Train (from the last complete checkpoint when resuming), save the adapter and the log history. A first
    Ctrl-C finishes the current step, saves a checkpoint and raises :class:`TrainingInterrupted`."""
    use_stage_progress(trainer, description)
    trainer.add_callback(StopOnNonFinite())
    stats: dict[str, Any] = {}
    resume_from = _resume_point(ctx, trainer, folder, description)
    finished = resume_from is not None and _checkpoint_is_final(Path(resume_from))
    if finished:
        # transformers would train one step past max_steps when resumed from the final checkpoint: restore it instead
        ctx.say(f"        {description} had finished training: restoring {resume_from}")
        _restore_adapter(trainer.model, Path(resume_from))
        trainer.state = type(trainer.state).load_from_json(str(Path(resume_from) / "trainer_state.json"))
        train_loss = None
    else:
        if resume_from:
            ctx.say(f"        resuming {description} from {resume_from}")
        with (compact_lm_head_on_cpu(), _sft_fast_path(trainer, stats) if sft else contextlib.nullcontext(),
              stop_at_step_end_on_interrupt(trainer) as interrupt):
            train_loss = trainer.train(resume_from_checkpoint=resume_from).training_loss
        if interrupt.requested:
            saved = folder / "trainer" / f"checkpoint-{trainer.state.global_step}"
            raise TrainingInterrupted(f"{description} stopped at step {trainer.state.global_step} (Ctrl-C)",
                                      str(saved) if saved.is_dir() else None)
    trainer.save_model(str(folder / "adapter"))
    if ctx.is_main:
        write_json_atomic(folder / "log_history.json", trainer.state.log_history)
    return {"steps": trainer.state.global_step, "train_loss": train_loss, "resumed_from": resume_from,
            "train_rows": len(trainer.train_dataset), **stats}


def _checkpoint_is_final(checkpoint: Path) -> bool:
    state = read_json(checkpoint / "trainer_state.json")
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def _restore_adapter(model, checkpoint: Path) -> None:
    """Load the "default" LoRA weights saved in a trainer checkpoint into the (PEFT) model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{checkpoint} has no adapter_model.safetensors to restore the trained adapter from")
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{weights} does not match the model's adapter: unexpected {result.unexpected_keys[:5]}")


# ----------------------------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------------------------


def sft_inputs(config: PipelineConfig) -> dict[str, Any]:
    return {**_fields(config, SFT_FIELDS), **_lora_fields(config), "sft_task": config.protocol.sft_task,
            "max_train_sequences": config.protocol.max_train_sequences, "dpo_init": config.resolved_dpo_init(),
            "image_pixels": [config.data.image_min_pixels, config.data.image_max_pixels],
            "system_prompt": config.protocol.system_prompt}


def stage_sft(ctx: RunContext) -> dict:
    """SFT with TRL's ``SFTTrainer`` and LoRA on ranking and AUC prompts; then the adapter is merged (dpo_init)."""
    from trl import SFTTrainer

    config = ctx.config
    folder = ctx.rundir.stage_dir("sft")
    inputs = sft_inputs(config)

    def work() -> dict:
        proc = ctx.processing_class()
        train = build_sft_dataset(ctx.train_examples, ctx.data, task=config.protocol.sft_task,
                                  with_images=ctx.with_images, templates=ctx.templates)
        model = _load_base(ctx)
        args = config.trainer_args("sft", folder / "trainer")
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=proc,
                             peft_config=lora_config(model, config))
        curve_examples = _add_learning_curve(ctx, trainer)
        summary = _train(ctx, trainer, folder, "SFT", sft=True)
        if curve_examples is not None and ctx.is_main:
            summary["learning_curve"] = _write_learning_curve(ctx, folder, curve_examples)
        del trainer, model
        _free_memory()
        if ctx.is_main and config.resolved_dpo_init() == "merge":
            with without_zero3_init():
                merge_adapter(ctx.spec.path, folder / "adapter", ctx.spec, config, folder / "merged",
                              text_tokenizer(proc))
            summary["merged"] = str(folder / "merged")
        return summary

    return run_stage(ctx, "sft", folder, inputs, work, all_processes=True, keep=("trainer",))


SFT_FIELDS = ("sft_epochs", "sft_max_steps", "sft_learning_rate", "sft_batch_size", "sft_gradient_accumulation_steps",
              "sft_max_length", "sft_extra_args")
CURVE_BASELINES = ("popularity", "item_knn")


def _add_learning_curve(ctx: RunContext, trainer):
    """With ``--curve_steps``: a callback that evaluates the ranking on the first ``--curve_examples`` validation
    sequences before the first SFT step, every N steps and at the end (``trainer/rec_eval/step-<N>.json``).
    Returns those examples, or None without a curve."""
    from ..evaluation import RecEvalConfig, RecommendationEvalCallback

    ev = ctx.config.evaluation
    if ev.curve_steps is None:
        return None
    examples = ctx.split.validation[: ev.curve_examples]
    if not examples:
        raise PipelineConfigError("--curve_steps needs validation sequences, and this split has none")
    rows = _ranking_rows(ctx, examples)
    settings = RecEvalConfig(ks=tuple(ev.eval_ks) if ev.eval_ks else None, batch_size=ev.eval_batch_size,
                             progress=False)
    trainer.add_callback(RecommendationEvalCallback(trainer, ranking_rows=rows, config=settings,
                                                    every_n_steps=ev.curve_steps, on_evaluate=False, at_start=True,
                                                    at_end=True, prefix="curve"))
    return examples


def _write_learning_curve(ctx: RunContext, folder: Path, examples) -> dict:
    """Collect the curve's evaluations (also those of an interrupted and resumed run) and the baselines on the same
    validation rows into ``learning_curve.json``; returns its summary."""
    from ..baselines import LABELS, TrainingInteractions, evaluate_baseline, expected_random_metrics, fit_baseline

    points = []
    for path in (folder / "trainer" / "rec_eval").glob("step-*.json"):
        points.append({"step": int(path.stem.split("-")[1]), **read_json(path)["metrics"]})
    points.sort(key=lambda p: p["step"])
    ks = tuple(ctx.config.evaluation.eval_ks) if ctx.config.evaluation.eval_ks else None
    training = TrainingInteractions.from_split(ctx.data, ctx.split)
    baselines = {"random": {"label": LABELS["random"], **expected_random_metrics(examples, ks)["metrics"]}}
    for name in CURVE_BASELINES:
        baselines[name] = {"label": LABELS[name],
                           **evaluate_baseline(fit_baseline(name, training), examples, ks)["metrics"]}
    curve = {"examples": len(examples), "split": "validation", "points": points, "baselines": baselines}
    write_json_atomic(folder / "learning_curve.json", curve)
    last = points[-1] if points else {}
    return {"points": len(points), "last_step": last.get("step"),
            **{k: last[k] for k in ("hr@1", "ndcg@10") if k in last}}


def _load_base(ctx: RunContext):
    """The base model (4-bit with QLoRA), as SFT starts from it."""
    return load_model(ctx.spec.path, ctx.spec, ctx.config, quantized=ctx.config.model.load_in_4bit)


def _dpo_start(ctx: RunContext):
    """What DPO's adapters sit on: the merged SFT weights (dpo_init='merge') or the base (dpo_init='adapter')."""
    if ctx.config.resolved_dpo_init() == "merge":
        return load_model(ctx.rundir.stage_dir("sft") / "merged", ctx.spec, ctx.config)
    return _load_base(ctx)


def load_sft_model(ctx: RunContext):
    """The SFT model: the merged weights (dpo_init='merge') or the base with the SFT adapter."""
    model = _dpo_start(ctx)
    if ctx.config.resolved_dpo_init() == "merge":
        return model
    return with_adapter(model, ctx.rundir.stage_dir("sft") / "adapter")


def load_dpo_model(ctx: RunContext, variant: Variant):
    """The model after DPO: the DPO adapter on the merged SFT model (or on the base, dpo_init='adapter')."""
    return with_adapter(_dpo_start(ctx), ctx.rundir.stage_dir("dpo", variant.name) / "adapter")


# ----------------------------------------------------------------------------------------------------------------
# Hardness
# ----------------------------------------------------------------------------------------------------------------


def _item_table(ctx: RunContext, item_ids):
    """Titles (an empty title becomes 'item <id>': the encoder needs text) and image files (None: no image, or one
    that does not decode: the placeholder, with one warning naming the items, or an error under strict_images)."""
    data = ctx.data
    titles = [data.title(i).strip() or f"item {i}" for i in item_ids]
    if ctx.with_images:
        data.verify_images(list(item_ids))
    images = [data.image_path(i) for i in item_ids] if ctx.with_images else None
    return titles, images


def _item_similarity(index, item_rows: dict[str, int]) -> Callable[[str, list[str]], np.ndarray]:
    """cosine(target, negatives) between fused item embeddings (paper Eq. 4), for ``rejected='hard'``."""

    def similarity(target: str, negatives: list[str]) -> np.ndarray:
        vectors = index.embeddings([item_rows[target]] + [item_rows[n] for n in negatives])
        return vectors[1:] @ vectors[0]

    return similarity


def _saved_index(ctx: RunContext):
    """The hardness stage's item embeddings as a HardnessIndex and the item -> row map."""
    from ..hardness import HardnessIndex

    saved = np.load(ctx.rundir.stage_dir("hardness") / "item_embeddings.npz")
    item_rows = {str(item): row for row, item in enumerate(saved["item_ids"].tolist())}
    return HardnessIndex(saved["text"], saved["image"]), item_rows


def _dpo_dataset(ctx: RunContext, index=None, item_rows: dict[str, int] | None = None):
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
REFERENCE = "reference"  # dpo/reference/<key>.npz: reference log-probs shared by the variants (one SFT model)
HARDNESS_FIELDS = ("hardness_k", "hardness_temperature", "hardness_title_mode", "dpo_task", "num_rejected", "rejected",
                   "max_train_sequences")


def hardness_inputs(config: PipelineConfig) -> dict[str, Any]:
    return _fields(config, HARDNESS_FIELDS)


def stage_hardness(ctx: RunContext) -> dict:
    """Item embeddings from the SFT model (docs/design.md section 2), HardnessIndex, and the DPO pairs saved once
    (``hardness/pairs``, ``Dataset.save_to_disk``) with lambda for both modes: ``hano_lambda_topk`` and
    ``hano_lambda_pairwise``. Each DPO variant trains on these rows and reads its column (``dpo.hardness_column``)."""
    from ..encoders import QwenVLItemEncoder, encode_items
    from ..hardness import HardnessIndex, add_hardness_column

    config = ctx.config
    hard = config.hardness
    folder = ctx.rundir.stage_dir("hardness")
    inputs = hardness_inputs(config)

    def work() -> dict:
        proc = ctx.processing_class()
        model = load_sft_model(ctx)
        encoder = QwenVLItemEncoder(model, proc, title_mode=hard.hardness_title_mode)
        item_ids = list(ctx.data.item_ids)
        titles, images = _item_table(ctx, item_ids)
        # no cache: item_embeddings.npz below is this stage's output, and a finished stage never recomputes it
        embeddings = encode_items(encoder, item_ids, titles, images, use_cache=False)
        np.savez(folder / "item_embeddings.npz", item_ids=np.array(item_ids), text=embeddings.text,
                 image=embeddings.image)
        del model, encoder
        _free_memory()
        index = HardnessIndex(embeddings.text, embeddings.image)
        pairs = _dpo_dataset(ctx, index, embeddings.item_rows)
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

    return run_stage(ctx, "hardness", folder, inputs, work)


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
    dataset = _dpo_dataset(ctx)
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


def _dpo_pairs(ctx: RunContext):
    """The DPO rows of every variant: the hardness stage's saved pairs, or (no hardness stage) built here."""
    pairs = _saved_pairs(ctx)
    return pairs if pairs is not None else _dpo_dataset(ctx)


# ----------------------------------------------------------------------------------------------------------------
# DPO
# ----------------------------------------------------------------------------------------------------------------

DPO_FIELDS = ("dpo_epochs", "dpo_max_steps", "dpo_learning_rate", "dpo_batch_size", "dpo_gradient_accumulation_steps",
              "dpo_max_length", "beta", "responsiveness", "responsiveness_warmup", "lora_noise_mode", "dpo_extra_args",
              "hardness_k", "hardness_temperature", "hardness_title_mode")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def _pairs_fingerprint(dataset) -> str:
    """A content hash of the DPO rows (prompts, completions, image files), independent of the lambda columns."""
    import hashlib

    digest = hashlib.sha256()
    columns = [c for c in ("prompt", "chosen", "rejected", "images") if c in dataset.column_names]
    # arrow rows: images as stored (file path or bytes), not decoded into objects
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=512):
        digest.update(json.dumps(batch.to_pydict(), sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def reference_key(ctx: RunContext, dataset, args) -> str:
    """What the reference log-probs depend on: the SFT model (its stage's finish record, how DPO starts from it, the
    model and its precision), the processor, the rows, and the trainer settings that shape their batches."""
    import hashlib

    sft_marker = ctx.rundir.marker(ctx.rundir.stage_dir("sft")) if ctx.rundir.is_done(ctx.rundir.stage_dir("sft")) \
        else {}
    settings = {name: getattr(args, name, None) for name in (
        "max_length", "per_device_train_batch_size", "precompute_ref_batch_size", "fast_prompt_once",
        "fast_vision_cache", "bf16", "fp16", "padding_free", "pad_to_multiple_of", "truncation_mode",
        "use_logits_to_keep", "ld_alpha", "loss_type")}
    record = {"sft": sft_marker.get("finished"), "sft_inputs": sft_marker.get("inputs"),
              "dpo_init": ctx.config.resolved_dpo_init(), "model": ctx.spec.path, "dtype": str(ctx.config.bf16),
              "pixels": [ctx.config.data.image_min_pixels, ctx.config.data.image_max_pixels], "args": settings,
              "rows": _pairs_fingerprint(dataset), "count": len(dataset)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:20]


def _shared_reference(ctx: RunContext, dataset, key: str):
    """``dataset`` with the reference log-probs another variant computed from the same SFT model, or None."""
    path = ctx.rundir.stage_dir("dpo") / REFERENCE / f"{key}.npz"
    if not path.is_file():
        return None
    saved = np.load(path)
    if any(len(saved[c]) != len(dataset) for c in REF_COLUMNS):
        return None
    for column in REF_COLUMNS:
        dataset = dataset.add_column(column, saved[column].tolist())
    return dataset


def _share_reference(ctx: RunContext, trainer, key: str, rows: int) -> bool:
    """Save the reference log-probs the trainer computed (its fast-path cache), for the next variants."""
    train = trainer.train_dataset
    columns = getattr(train, "column_names", None) or []
    if not all(c in columns for c in REF_COLUMNS) or len(train) != rows:
        return False  # computed every step (fast path off, DeepSpeed...): nothing to share
    if ctx.is_main:
        folder = ctx.rundir.stage_dir("dpo") / REFERENCE
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.tmp.npz"
        np.savez(tmp, **{c: np.asarray(train[c], dtype=np.float64) for c in REF_COLUMNS})
        os.replace(tmp, folder / f"{key}.npz")
    return True


def dpo_inputs(config: PipelineConfig, variant: Variant) -> dict[str, Any]:
    protocol, switches = config.protocol, variant.switches(config.dpo)
    return {**_fields(config, DPO_FIELDS), **switches, **_lora_fields(config, "dpo"),
            "dpo_task": protocol.dpo_task, "num_rejected": protocol.num_rejected, "rejected": protocol.rejected,
            "max_train_sequences": protocol.max_train_sequences, "dpo_init": config.resolved_dpo_init(),
            "system_prompt": protocol.system_prompt, **({} if variant.seed is None else {"dpo_seed": variant.seed})}


def stage_dpo(ctx: RunContext, variant: Variant) -> dict:
    """Preference optimization with ``HaNoDPOTrainer`` from the SFT model, the reference being the SFT model.

    The rows are the hardness stage's saved pairs; the variant reads its lambda column (``dpo.hardness_column``).
    The reference log-probs are computed by the first variant and shared with every later one from the same SFT
    model and rows (``dpo/reference/<key>.npz``)."""
    from ..trainer import HaNoDPOTrainer

    config = ctx.config
    switches = variant.switches(config.dpo)
    folder = ctx.rundir.stage_dir("dpo", variant.name)
    inputs = dpo_inputs(config, variant)

    def work() -> dict:
        proc = ctx.processing_class()
        dataset = _dpo_pairs(ctx)
        model = _dpo_start(ctx)
        if config.resolved_dpo_init() == "merge":
            peft_config = lora_config(model, config)
        else:  # continue the SFT adapter; TRL keeps a frozen copy of it as the reference ("ref" adapter)
            model, peft_config = with_adapter(model, ctx.rundir.stage_dir("sft") / "adapter", trainable=True), None
        args = config.trainer_args(
            "dpo", folder / "trainer", use_hardness=switches["use_hardness"],
            use_responsiveness=switches["use_responsiveness"], hardness_column=lambda_column(switches["hardness_mode"]),
            lora_noise_std=switches["lora_noise_std"], **({} if variant.seed is None else {"seed": variant.seed}),
        )
        if switches["use_hardness"] and args.hardness_column not in dataset.column_names:
            raise RuntimeError(f"the DPO pairs have no {args.hardness_column!r} column (no finished hardness stage in "
                               f"{ctx.rundir.root})")
        key = reference_key(ctx, dataset, args)
        shared = None if args.sync_ref_model else _shared_reference(ctx, dataset, key)
        rows = len(dataset)
        if shared is not None:
            ctx.say(f"        reference log-probs shared from an earlier variant ({REFERENCE}/{key}.npz)")
            dataset = shared
        with compact_lm_head_on_cpu():  # the reference log-probs are cached while the trainer is built
            trainer = HaNoDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=proc,
                                     peft_config=peft_config)
        reference = "shared" if shared is not None else (
            "computed" if not args.sync_ref_model and _share_reference(ctx, trainer, key, rows) else "every step")
        summary = _train(ctx, trainer, folder, f"DPO {variant.name}")
        summary.update(variant=variant.name, label=variant.label, reference_logps=reference, **switches)
        del trainer, model
        _free_memory()
        return summary

    return run_stage(ctx, f"dpo/{variant.name}", folder, inputs, work, all_processes=True, keep=("trainer",))


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def _ranking_rows(ctx: RunContext, examples):
    """Ranking evaluation rows of ``examples`` in the run's prompt format and candidate orders."""
    config = ctx.config
    return build_ranking_eval_dataset(examples, ctx.data, with_images=ctx.with_images, templates=ctx.templates,
                                      prompt=config.evaluation_prompt(),
                                      permutations=config.evaluation.score_permutations, seed=config.seed)


def evaluation_inputs(config: PipelineConfig) -> dict[str, Any]:
    """What a model's evaluation depends on."""
    return {**_evaluation_inputs(config), "image_pixels": [config.data.image_min_pixels, config.data.image_max_pixels]}


def _evaluation_inputs(config: PipelineConfig) -> dict[str, Any]:
    """What a finished evaluation depends on (the baselines shown beside it do not change it)."""
    values = {k: v for k, v in dataclasses.asdict(config.evaluation).items()
              if k not in ("baselines", "curve_steps", "curve_examples")}
    return {**values, "eval_prompt": config.evaluation_prompt(),
            "max_test_sequences": config.protocol.max_test_sequences, "system_prompt": config.protocol.system_prompt}


def stage_baselines(ctx: RunContext) -> list[tuple[str, str]]:
    """The classical baselines (:mod:`hanorec_trl.baselines`) on the same test rows; ``eval/baseline-<name>/``.
    Returns the (folder name, label) of each, for the report."""
    from ..baselines import LABELS, TrainingInteractions, evaluate_baseline, expected_random_metrics, fit_baseline

    config = ctx.config
    names = config.baseline_names()
    training: list[TrainingInteractions] = []
    models = []
    for name in names:
        folder = ctx.rundir.stage_dir("eval", f"baseline-{name}")
        inputs = {"baseline": name, "max_test_sequences": config.protocol.max_test_sequences,
                  "eval_ks": config.evaluation.eval_ks}

        def work(name=name, folder=folder) -> dict:
            ks = tuple(config.evaluation.eval_ks) if config.evaluation.eval_ks else None
            if name == "random":
                result = expected_random_metrics(ctx.test_examples, ks)
            else:
                if not training:
                    training.append(TrainingInteractions.from_split(ctx.data, ctx.split))
                result = evaluate_baseline(fit_baseline(name, training[0]), ctx.test_examples, ks)
            write_json_atomic(folder / "metrics.json", {**result, "baseline": name,
                                                        "training_interactions": training[0].num_interactions
                                                        if training else None})
            return {"metrics": result["metrics"]}

        run_stage(ctx, f"eval/baseline-{name}", folder, inputs, work)
        models.append((f"baseline-{name}", LABELS[name]))
    return models


def similarity_items(ctx: RunContext) -> list[str]:
    """The items of the similarity probe: test targets, then test candidates, in order, up to the limit."""
    seen: dict[str, None] = {}
    for ex in ctx.test_examples:
        seen.setdefault(ex.target)
    for ex in ctx.test_examples:
        for c in ex.candidates:
            seen.setdefault(c)
    return list(seen)[: ctx.config.evaluation.similarity_items]


def stage_evaluate(ctx: RunContext, name: str, load: Callable[[], Any]) -> dict:
    """HR@K / NDCG@K / AUC of one model on the frozen test split (+ title-image similarities for VLMs)."""
    from ..evaluation import RecEvalConfig, evaluate_recommender
    from .similarity import title_image_similarity

    config = ctx.config
    ev = config.evaluation
    folder = ctx.rundir.stage_dir("eval", name)
    inputs = evaluation_inputs(config)

    def work() -> dict:
        proc = ctx.processing_class()
        model = load()
        if not config.model.load_in_4bit:
            if hasattr(model, "merge_and_unload"):  # same function, no adapter overhead per forward
                model = model.merge_and_unload()
            if torch.cuda.is_available():
                model.to("cuda")
        test = ctx.test_examples
        ranking = _ranking_rows(ctx, test)
        auc = build_auc_eval_dataset(test, ctx.data, with_images=ctx.with_images, templates=ctx.templates)
        eval_config = RecEvalConfig(ks=tuple(ev.eval_ks) if ev.eval_ks else None, ranking_mode=ev.eval_ranking_mode,
                                    auc_probability=ev.auc_probability, batch_size=ev.eval_batch_size)
        metrics = evaluate_recommender(model, proc, ranking, auc, config=eval_config,
                                       output_path=folder / "metrics.json", overwrite=True)
        if ctx.with_images and ev.similarity_items > 0:
            items = similarity_items(ctx)
            titles, _ = _item_table(ctx, items)
            cosine = title_image_similarity(model, proc, items, titles, [ctx.data.image(i) for i in items],
                                            batch_size=ev.eval_batch_size)
            write_json_atomic(folder / "similarity.json", {"item_ids": items, "cosine": cosine.tolist()})
        del model
        _free_memory()
        return {"metrics": metrics}

    return run_stage(ctx, f"eval/{name}", folder, inputs, work)


__all__ = [
    "RunContext",
    "load_data",
    "load_dpo_model",
    "load_sft_model",
    "run_stage",
    "stage_data",
    "stage_dpo",
    "stage_baselines",
    "stage_evaluate",
    "stage_hardness",
    "stage_model",
    "stage_sft",
    "subsample_users",
]
