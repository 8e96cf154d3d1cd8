r"""Stage 4, HaNo DPO: ``trl/scripts/dpo.py`` with ``HaNoDPOTrainer`` (paper Eq. 4-12), for any TRL preference dataset.

    python -m hanorec_trl.scripts.dpo --dataset_name my/pairs --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --use_peft --lora_r 8 --beta 0.1 --lora_noise_std 0.01 --output_dir runs/my-dpo
    python -m hanorec_trl.scripts.dpo --config examples/recipes/movielens/smollm2/dpo.yaml \
        --dataset_name runs/ml1m/hardness/pairs --model_name_or_path runs/ml1m/sft/merged --output_dir runs/ml1m/dpo

Lambda: the dataset's ``hano_lambda`` column; without it lambda = 1 (one warning), or computed from
``item_embeddings`` (``item_ids``, ``text`` [, ``image``]) and the ``chosen_item`` / ``rejected_item`` columns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ScriptArguments, get_peft_config

from ..pipeline.parsing import ConfigError, parse_stage_args
from ..pipeline.running import run_stage, say, script_main
from ..pipeline.stage import Stage, describe, input_fingerprint

logger = logging.getLogger(__name__)
OUTPUTS = ("trainer", "adapter", "log_history.json")


@dataclass
class DPOScriptArguments(ScriptArguments):
    """TRL's ``ScriptArguments`` (dataset name, config, splits) plus where lambda comes from."""

    item_embeddings: str | None = field(default=None, metadata={
        "help": "An .npz of item_ids and text (and image) embeddings: lambda (Eq. 4-6) is computed from it when the "
        "dataset has no hardness column."})
    hardness_k: int = field(default=10, metadata={"help": "K of the Top-K similarity sets (with item_embeddings)."})
    hardness_temperature: float = field(default=1.0, metadata={"help": "tau of Eq. 5 (with item_embeddings)."})


def load_preference_dataset(script_args: DPOScriptArguments):
    """A ``datasets.save_to_disk`` folder, or anything ``datasets.load_dataset`` opens (hub name, data files)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    name = script_args.dataset_name
    if name is None:
        raise ConfigError("--dataset_name is required (a hub name, a data folder or a save_to_disk folder)")
    path = Path(name).expanduser()
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        dataset = load_from_disk(str(path))
    else:
        dataset = load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    return DatasetDict({script_args.dataset_train_split: dataset}) if isinstance(dataset, Dataset) else dataset


def with_lambda(dataset, script_args: DPOScriptArguments, column: str):
    """Compute the hardness column from ``item_embeddings`` when the dataset lacks it."""
    import numpy as np

    from ..hardness import add_hardness_column

    if script_args.item_embeddings is None or column in dataset.column_names:
        return dataset
    saved = np.load(script_args.item_embeddings)
    item_rows = {str(item): row for row, item in enumerate(saved["item_ids"].tolist())}
    image = saved["image"] if "image" in saved.files else None
    dataset, _ = add_hardness_column(dataset, (saved["text"], image), item_rows, column=column,
                                     k=script_args.hardness_k, temperature=script_args.hardness_temperature)
    return dataset


def shared_reference_valid(dataset_name: str, model_name: str, max_length: int | None) -> bool:
    """Whether the reference log-probs a hardness stage stored beside these pairs were computed from this model
    under this ``max_length`` (else the trainer computes its own)."""
    record = Path(dataset_name).expanduser().parent / "reference.json"
    if not record.is_file():
        return True  # a user's dataset: its ref_* columns are theirs, as in TRL
    reference = json.loads(record.read_text(encoding="utf-8"))
    return reference["model"] == input_fingerprint(model_name) and reference["max_length"] == max_length


def main(script_args: DPOScriptArguments, training_args, model_args, *, reuse_from: Path | None = None):
    """Run HaNo DPO into ``training_args.output_dir``; returns the stage record."""
    from ..fast.cpu_lm_head import compact_lm_head_on_cpu
    from ..model_utils import lora_config
    from ..models import load_model, load_processing_class
    from ..pipeline.training import train_in_stage
    from ..trainer import HaNoDPOTrainer

    dataset = load_preference_dataset(script_args)
    if script_args.dataset_train_split not in dataset:
        raise ConfigError(f"{script_args.dataset_name} has no split {script_args.dataset_train_split!r} (splits: "
                         f"{', '.join(dataset)})")
    root = Path(training_args.output_dir).resolve().parent
    inputs = {"dataset": input_fingerprint(script_args.dataset_name),
              "model": input_fingerprint(model_args.model_name_or_path)}
    if script_args.item_embeddings:
        inputs["item_embeddings"] = input_fingerprint(script_args.item_embeddings)
    stage = Stage("dpo", training_args.output_dir, describe(script_args, training_args, model_args, root=root),
                  inputs, OUTPUTS)

    def work(folder: Path) -> dict[str, Any]:
        column = training_args.hardness_column or "hano_lambda"
        train = with_lambda(dataset[script_args.dataset_train_split], script_args, column)
        evaluate = training_args.eval_strategy != "no" and script_args.dataset_test_split in dataset
        if not shared_reference_valid(script_args.dataset_name, model_args.model_name_or_path,
                                      training_args.max_length):
            say("        the stored reference log-probs belong to another model or max_length: computed again")
            train = train.remove_columns([c for c in ("ref_chosen_logps", "ref_rejected_logps")
                                          if c in train.column_names])
        model_path = Path(model_args.model_name_or_path).expanduser()
        if (model_path / "hanorec_processor.json").is_file():  # a pipeline model folder (the merged SFT model)
            model, processing_class = load_model(model_path, model_args), load_processing_class(model_path)
        else:
            model, processing_class = model_args.model_name_or_path, None
        if isinstance(model, str):  # TRL loads it, as in trl/scripts/dpo.py
            peft_config = get_peft_config(model_args)
        else:
            peft_config = lora_config(model, model_args) if model_args.use_peft else None
        args = dataclasses.replace(training_args, output_dir=str(folder / "trainer"))
        with compact_lm_head_on_cpu():  # the reference log-probs may be computed while the trainer is built
            trainer = HaNoDPOTrainer(
                model=model, args=args, train_dataset=train,
                eval_dataset=with_lambda(dataset[script_args.dataset_test_split], script_args, column)
                if evaluate else None,
                processing_class=processing_class, peft_config=peft_config)
        summary = train_in_stage(trainer, folder, f"DPO ({Path(training_args.output_dir).name})")
        summary["reference_logps"] = "shared" if "ref_chosen_logps" in train.column_names else "computed"
        return summary

    return run_stage(stage, work, all_processes=True, reuse_from=reuse_from)


def parse(argv=None) -> tuple:
    from trl import ModelConfig

    from ..config import HaNoDPOConfig

    return parse_stage_args((DPOScriptArguments, HaNoDPOConfig, ModelConfig), argv)


if __name__ == "__main__":
    raise SystemExit(script_main(parse, main))
