"""The flat recipes and flags of earlier versions (``--sft_learning_rate``, ``--output_dir``, ``seed: 1``...).

Two directions, one table of names: :func:`translate_flat` turns a flat recipe or flat flags into the nested sections
(table :data:`FLAT_NAMES`, also in ``docs/pipeline.md``, "Flat recipes of earlier versions"), and the ``*_FIELDS``
sets below tell :meth:`~hanorec_trl.pipeline.pipeline_config.PipelineConfig.flat` how to write a configuration under
those names again -- what the stages record and compare on ``--run.resume``, so that a run directory of an earlier
version stays resumable.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any

from .arguments import SECTIONS, EvalArguments, HardnessArguments, PipelineConfigError, ProtocolArguments
from .variants import lambda_column

def _flat_table() -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for name in ("method", "ablation", "variants", "resume", "overwrite", "tokenizer", "dpo_init"):
        table[name] = [f"run.{name}"]
    table["output_dir"] = ["run.run_dir"]
    for name in ("dataset", "data_dir", "synthetic_num_users", "synthetic_num_items", "max_users",
                 "image_min_pixels", "image_max_pixels"):
        table[name] = [f"data.{name}"]
    for f in dataclasses.fields(ProtocolArguments):
        if f.name != "split_seed":
            table[f.name] = [f"protocol.{f.name}"]
    for f in dataclasses.fields(HardnessArguments):
        table[f.name] = [f"hardness.{f.name}"]
    for f in dataclasses.fields(EvalArguments):
        table[f.name] = [f"evaluation.{f.name}"]
    table["seed"] = ["protocol.split_seed", "sft.seed", "dpo.seed"]
    for name in ("logging_steps", "save_steps", "save_total_limit", "report_to", "gradient_checkpointing",
                 "trust_remote_code"):
        table[name] = [f"sft.{name}", f"dpo.{name}"]
    table["model"] = ["model.model_name_or_path"]
    for name in ("attn_implementation", "load_in_4bit", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
        table[name] = [f"model.{name}"]
    table["bf16"] = ["model.dtype", "sft.bf16", "dpo.bf16"]
    for stage in ("sft", "dpo"):
        for old, new in (("epochs", "num_train_epochs"), ("max_steps", "max_steps"), ("learning_rate", "learning_rate"),
                         ("batch_size", "per_device_train_batch_size"),
                         ("gradient_accumulation_steps", "gradient_accumulation_steps"), ("max_length", "max_length")):
            table[f"{stage}_{old}"] = [f"{stage}.{new}"]
        table[f"{stage}_extra_args"] = [f"{stage}.*"]
    for name in ("beta", "use_hardness", "use_responsiveness", "responsiveness", "responsiveness_warmup",
                 "lora_noise_std", "lora_noise_mode"):
        table[name] = [f"dpo.{name}"]
    table["hardness_mode"] = ["dpo.hardness_column"]
    return table


#: old flat name -> the new ``section.field`` (several: the one old value goes to each; ``sft.*``: a mapping of
#: any SFTConfig fields).
FLAT_NAMES: dict[str, list[str]] = _flat_table()
#: flat flags that take a list even when given one value (``--eval_ks 5``)
FLAT_LIST_NAMES = {"variants", "eval_ks", "baselines"}


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1", "y", "on"):
            return True
        if lowered in ("false", "no", "0", "n", "off"):
            return False
        raise PipelineConfigError(f"expected true or false, got {value!r}")
    return bool(value)


def _extra_mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise PipelineConfigError(f"--{name} must be a JSON object, e.g. '{{\"warmup_ratio\": 0.1}}': {e}") from None
    if not isinstance(parsed, dict):
        raise PipelineConfigError(f"--{name} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _flat_value(name: str, target: str, value: Any) -> Any:
    """An old flat value as the new field wants it."""
    if name == "bf16" and target == "model.dtype":
        return "bfloat16" if _bool(value) else "float32"
    if name == "hardness_mode":
        return lambda_column(str(value))
    if name == "lora_target_modules" and isinstance(value, str):
        # a regex stays one string; 'a,b' (names separated by commas) becomes the list PEFT takes
        return [value] if "," not in value else [t.strip() for t in value.split(",") if t.strip()]
    return value


def translate_flat(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Translate a flat recipe (or flat flags) of earlier versions into the nested sections.

    ``{"sft_learning_rate": 3e-4, "seed": 1, "output_dir": "runs/x", "sft_extra_args": {"warmup_ratio": 0.1}}``
    becomes ``{"sft": {"learning_rate": 3e-4, "seed": 1, "warmup_ratio": 0.1}, "dpo": {"seed": 1},
    "protocol": {"split_seed": 1}, "run": {"run_dir": "runs/x"}}``. The table is :data:`FLAT_NAMES`
    (``docs/pipeline.md``, "Flat recipes of earlier versions"); an unknown name is refused with the closest ones.
    """
    nested: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        key = name.replace("-", "_")
        if key not in FLAT_NAMES:
            close = difflib.get_close_matches(key, list(FLAT_NAMES), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise PipelineConfigError(f"unknown argument {name!r}{hint}; the arguments are '--<section>.<field>' "
                                      f"with sections {', '.join(SECTIONS)} (docs/pipeline.md)")
        for target in FLAT_NAMES[key]:
            section, field_name = target.split(".")
            if field_name == "*":
                nested.setdefault(section, {}).update(_extra_mapping(key, value))
            else:
                nested.setdefault(section, {})[field_name] = _flat_value(key, target, value)
    return nested


def is_flat_recipe(recipe: dict[str, Any]) -> bool:
    """True for a recipe of earlier versions (top-level fields rather than sections)."""
    return any(key not in SECTIONS for key in recipe)


# ----------------------------------------------------------------------------------------------------------------
# The other direction: the configuration under the flat names (PipelineConfig.flat, the stages' resume records)
# ----------------------------------------------------------------------------------------------------------------

#: fields of the trainer sections that the stages' resume records never held (they do not change what is trained,
#: or they are recorded under another name)
RUN_LEVEL_FIELDS = {"seed", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "report_to", "bf16",
                     "gradient_checkpointing", "dataloader_num_workers", "disable_tqdm", "output_dir", "use_cpu",
                     "trust_remote_code"}
STAGE_NAMED_FIELDS = {"num_train_epochs": "epochs", "max_steps": "max_steps", "learning_rate": "learning_rate",
                      "per_device_train_batch_size": "batch_size",
                      "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_length"}
DPO_NAMED_FIELDS = {"beta", "use_hardness", "use_responsiveness", "hardness_column", "responsiveness",
                    "responsiveness_warmup", "lora_noise_std", "lora_noise_mode"}


__all__ = [
    "DPO_NAMED_FIELDS",
    "FLAT_LIST_NAMES",
    "FLAT_NAMES",
    "RUN_LEVEL_FIELDS",
    "STAGE_NAMED_FIELDS",
    "is_flat_recipe",
    "translate_flat",
]
