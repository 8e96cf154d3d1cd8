r"""Stage 2, SFT: TRL's ``SFTTrainer`` with LoRA on the data stage's prompts (paper App. C.1), then the adapter merged
into the base weights (``<output_dir>/merged``, where every later stage starts).

    python -m hanorec_trl.scripts.sft --config examples/recipes/movielens/smollm2/sft.yaml \
        --data_path runs/ml1m/data --output_dir runs/ml1m/sft

Every ``SFTConfig`` and ``ModelConfig`` field is a flag or YAML key, as in ``trl sft``. ``curve_steps``: the ranking on
the validation rows every N steps beside popularity and item-kNN (``learning_curve.json``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pipeline.parsing import ConfigError, parse_stage_args
from ..pipeline.running import process_state, run_stage, script_main
from ..pipeline.stage import Stage, describe, input_fingerprint
from .data import Prepared, load_prepared

OUTPUTS = ("trainer", "adapter", "merged", "log_history.json", "learning_curve.json")


@dataclass
class SFTScriptArguments:
    """The SFT stage's own arguments (the trainer's are ``SFTConfig``'s, the model's ``ModelConfig``'s)."""

    data_path: str | None = field(default=None, metadata={"help": "The data stage's output folder."})
    tokenizer: str = field(default="auto", metadata={
        "help": "'auto': the model's own tokenizer (the real Qwen2.5 tokenizer for the built-in Qwen models); "
        "'tiny': a 512-token tokenizer, for fast tests of the built-in tiny models.", "choices": ["auto", "tiny"]})
    image_min_pixels: int = field(default=28 * 28, metadata={"help": "Smallest image area after resizing (pixels)."})
    image_max_pixels: int = field(default=56 * 56, metadata={
        "help": "Largest image area after resizing: max_pixels / 784 image tokens per image (56*56 = 4 for the CPU "
        "demo; 200704 = 256 for real runs)."})
    curve_steps: int | None = field(default=None, metadata={
        "help": "Learning curve: evaluate the ranking on the data stage's validation rows every N steps."})
    curve_batch_size: int = field(default=4, metadata={"help": "Prompts per forward of the learning curve."})
    item_tokens: str | None = field(default=None, metadata={
        "help": "Data named by item token: 'trainable' (a trained vocabulary row per item) or 'soft' (LLaRA's "
        "projector over the CF vectors, with its curriculum), from the data stage's item_cf.npz; "
        "docs/item_tokens.md.", "choices": [None, "trainable", "soft"]})

    def __post_init__(self) -> None:
        if not self.data_path:
            raise ValueError("the SFT stage needs --data_path (the data stage's output folder)")
        if not 1 <= self.image_min_pixels <= self.image_max_pixels:
            raise ValueError(f"need 1 <= image_min_pixels <= image_max_pixels, got {self.image_min_pixels} and "
                             f"{self.image_max_pixels}")
        if self.curve_steps is not None and self.curve_steps < 1 or self.curve_batch_size < 1:
            raise ValueError("curve_steps and curve_batch_size must be at least 1")


def check_model_fits_data(images: bool, prepared: Prepared, model: str, item_tokens: str | None) -> None:
    if images != prepared.args.images:
        raise ConfigError(f"model {model} {'sees' if images else 'does not see'} images but the data stage "
                         f"({prepared.folder}) was prepared with images={prepared.args.images}; prepare the data with "
                         f"images={images}")
    if bool(item_tokens) != prepared.args.names_by_token:
        raise ConfigError(f"item_tokens {item_tokens} but the data stage ({prepared.folder}) names items by "
                          f"{prepared.args.item_naming} and answers by {prepared.args.answer_naming}: item tokens "
                          "need data that names items by token, and such data needs item_tokens")


def _learning_curve(trainer, prepared: Prepared, script_args) -> dict[str, Any] | None:
    """The curve's callback (when ``curve_steps``); returns its settings for :func:`_write_curve`."""
    from ..evaluation import RecEvalConfig, RecommendationEvalCallback

    if script_args.curve_steps is None:
        return None
    if not (prepared.folder / "curve_ranking").is_dir():
        raise ConfigError("curve_steps needs validation rows, and the data stage wrote none (curve_examples 0, or no "
                         "validation sequences)")
    rows = prepared.dataset("curve_ranking")
    trainer.add_callback(RecommendationEvalCallback(
        trainer, ranking_rows=rows, config=RecEvalConfig(batch_size=script_args.curve_batch_size, progress=False),
        every_n_steps=script_args.curve_steps, on_evaluate=False, at_start=True, at_end=True, prefix="curve"))
    return {"rows": rows}


def _write_curve(folder: Path, prepared: Prepared, rows) -> dict[str, Any]:
    """The curve's points and the baselines on the same validation rows -> ``learning_curve.json``."""
    from ..evaluation.callback import learning_curve

    ids = set(rows["sequence_id"])
    examples = [ex for ex in prepared.split.validation if ex.sequence_id in ids]
    curve = {**learning_curve(folder / "trainer", examples, prepared.data, prepared.split), "split": "validation"}
    (folder / "learning_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    return {"curve_points": len(curve["points"])}


def main(script_args: SFTScriptArguments, training_args, model_args, *, reuse_from: Path | None = None):
    """Run the SFT stage into ``training_args.output_dir``; returns the stage record."""
    import dataclasses

    from trl import SFTTrainer

    from ..fast.forward import frozen_vision_without_graph, image_feature_cache, parameters_sharded
    from ..item_tokens import VARIANTS, ItemTokenCurriculum
    from ..model_utils import lora_config, without_zero3_init
    from ..models import (
        BUILTIN_MODELS,
        build_base_model,
        merge_into_base,
        processing_class,
        save_model,
        sees_images,
    )
    from ..pipeline.training import check_max_length, train_in_stage

    if not model_args.use_peft:
        raise ConfigError("use_peft false: the pipeline trains LoRA adapters (SFT, then DPO on the merged SFT model)")
    prepared = load_prepared(script_args.data_path)
    images = sees_images(model_args.model_name_or_path)
    check_model_fits_data(images, prepared, model_args.model_name_or_path, script_args.item_tokens)
    root = Path(training_args.output_dir).resolve().parent
    inputs = {"data": input_fingerprint(script_args.data_path),
              "model": input_fingerprint(model_args.model_name_or_path)}
    stage = Stage("sft", training_args.output_dir, describe(script_args, training_args, model_args, root=root),
                  inputs, OUTPUTS)
    tiny = script_args.tokenizer == "tiny"
    pixels = {"min_pixels": script_args.image_min_pixels, "max_pixels": script_args.image_max_pixels}

    def work(folder: Path) -> dict[str, Any]:
        model, tokenizer = build_base_model(model_args, training_args.seed, tiny)
        peft_config, items, callbacks = lora_config(model, model_args), None, []
        if script_args.item_tokens:  # installed before PEFT wraps the model; the curriculum is the soft tokens'
            items = VARIANTS[script_args.item_tokens].for_data(prepared.data, prepared.cf)
            items.install(model, tokenizer)
            peft_config = items.lora_config(peft_config)
            callbacks = [ItemTokenCurriculum()] if items.name == "soft" else []
        proc = processing_class(tokenizer, images, **pixels)
        train = prepared.dataset("sft")
        check_max_length(train, proc, training_args.max_length, "SFTConfig.max_length")
        args = dataclasses.replace(training_args, output_dir=str(folder / "trainer"))
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=proc,
                             peft_config=peft_config, callbacks=callbacks)
        curve = _learning_curve(trainer, prepared, script_args)
        caching = contextlib.nullcontext() if parameters_sharded(trainer) else image_feature_cache(trainer.model)
        with frozen_vision_without_graph(trainer.model), caching as cache:
            summary = train_in_stage(trainer, folder, "SFT")
            if items is not None and trainer.accelerator.is_main_process:
                items.save(folder / "adapter")
            if cache is not None:
                summary["vision_cache"] = cache.counts()
        if curve is not None and trainer.accelerator.is_main_process:
            summary.update(_write_curve(folder, prepared, curve["rows"]))
        del trainer, model
        if process_state().is_main_process:
            with without_zero3_init():
                merged, tokenizer = merge_into_base(model_args, training_args.seed, folder / "adapter", tiny)
                save_model(merged, tokenizer, folder / "merged", images=images, **pixels,
                           random_weights=BUILTIN_MODELS.get(model_args.model_name_or_path, (0, False))[1])
        return summary

    return run_stage(stage, work, all_processes=True, reuse_from=reuse_from)


def parse(argv=None) -> tuple:
    from trl import ModelConfig, SFTConfig

    return parse_stage_args((SFTScriptArguments, SFTConfig, ModelConfig), argv)


if __name__ == "__main__":
    raise SystemExit(script_main(parse, main))
