"""All arguments of one pipeline run: :class:`PipelineConfig` (the sections of :mod:`.arguments` and TRL's
``model`` / ``sft`` / ``dpo``), what follows from them (the variants to train, the trainers' arguments, the flat view
the stages record), and the checks that TRL's dataclasses do not make (:meth:`PipelineConfig.validate`).

:func:`make_config` builds one from section values; :func:`~hanorec_trl.pipeline.command_line.parse_args` from a
recipe and the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .arguments import (
    PIPELINE_SECTIONS,
    SECTIONS,
    DataArguments,
    EvalArguments,
    HardnessArguments,
    PipelineConfigError,
    ProtocolArguments,
    RunArguments,
    trl_section_classes,
)
from .flat_names import DPO_NAMED_FIELDS, RUN_LEVEL_FIELDS, STAGE_NAMED_FIELDS
from .section_values import build_sections
from .variants import (
    ABLATION_VARIANTS,
    HANO,
    HARDNESS_MODES,
    LAMBDA_PREFIX,
    PLAIN_DPO,
    VARIANT_NAMES,
    VARIANTS_BY_NAME,
    Variant,
    lambda_column,
)


def make_config(sections: dict[str, dict[str, Any]]) -> PipelineConfig:
    """A :class:`PipelineConfig` from section values (missing fields: the pipeline's defaults)."""
    built, explicit = build_sections(sections)
    return PipelineConfig(**built, explicit=explicit)


@dataclass
class PipelineConfig:
    """All arguments of one pipeline run: the pipeline's sections and TRL's ``model`` / ``sft`` / ``dpo``.

    ``explicit`` keeps, per section, the values that were set (pipeline defaults, recipe, command line); the trainers
    of the stages are built from them (plus the stage's ``output_dir``).
    """

    run: RunArguments = field(default_factory=RunArguments)
    data: DataArguments = field(default_factory=DataArguments)
    protocol: ProtocolArguments = field(default_factory=ProtocolArguments)
    hardness: HardnessArguments = field(default_factory=HardnessArguments)
    evaluation: EvalArguments = field(default_factory=EvalArguments)
    model: Any = None  # trl.ModelConfig
    sft: Any = None  # trl.SFTConfig
    dpo: Any = None  # hanorec_trl.HaNoDPOConfig
    explicit: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.model is None or self.sft is None or self.dpo is None:
            base = make_config({name: dataclasses.asdict(getattr(self, name)) for name in PIPELINE_SECTIONS})
            self.model, self.sft, self.dpo, self.explicit = base.model, base.sft, base.dpo, base.explicit

    def groups(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SECTIONS}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The sections as a recipe would write them (the TRL sections: their explicitly set fields)."""
        out: dict[str, dict[str, Any]] = {name: dataclasses.asdict(getattr(self, name)) for name in PIPELINE_SECTIONS}
        for name in ("model", "sft", "dpo"):
            out[name] = {k: v for k, v in self.explicit.get(name, {}).items() if k not in ("use_cpu",)}
        return json.loads(json.dumps(out, default=str))

    @classmethod
    def from_dict(cls, values: dict[str, dict[str, Any]]) -> PipelineConfig:
        return make_config(values)

    def trainer_args(self, stage: str, output_dir: str | os.PathLike, **pipeline_set) -> Any:
        """The stage's ``SFTConfig`` / ``HaNoDPOConfig``: the explicit values, the stage folder, the device."""
        import torch

        values = {**self.explicit[stage], "output_dir": str(output_dir), **pipeline_set}
        values.setdefault("use_cpu", not torch.cuda.is_available())
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return trl_section_classes()[stage](**values)

    # --------------------------------------------------------------------------------------------- derived settings
    @property
    def seed(self) -> int:
        """The data seed (split, subsample, synthetic data, negatives, rejected items)."""
        return self.protocol.split_seed

    @property
    def bf16(self) -> bool:
        return self.model.dtype in ("bfloat16", "bf16") or bool(self.sft.bf16) or bool(self.dpo.bf16)

    def hardness_mode(self) -> str:
        """``topk`` / ``pairwise`` from ``dpo.hardness_column`` (the hardness stage writes one column per mode)."""
        column = self.dpo.hardness_column
        return column[len(LAMBDA_PREFIX):] if column.startswith(LAMBDA_PREFIX) else column

    def stage_extra(self, stage: str) -> dict[str, Any] | None:
        """The trainer fields set beyond the named ones (what ``sft_extra_args`` / ``dpo_extra_args`` held)."""
        cls = trl_section_classes()[stage]
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        named = set(STAGE_NAMED_FIELDS) | RUN_LEVEL_FIELDS | (DPO_NAMED_FIELDS if stage == "dpo" else set())
        extra = {k: v for k, v in self.explicit.get(stage, {}).items()
                 if k not in named and (k not in defaults or v != defaults[k])}
        return extra or None

    def flat(self) -> dict[str, Any]:
        """The configuration under the flat names of earlier versions: what the stages record and compare on
        ``--resume`` (so that a run directory of an earlier version stays resumable with the same recipe)."""
        m, sft, dpo = self.model, self.sft, self.dpo
        targets = m.lora_target_modules
        if isinstance(targets, (list, tuple)):
            targets = ",".join(targets) if len(targets) != 1 else targets[0]
        flat: dict[str, Any] = {
            **{k: v for k, v in dataclasses.asdict(self.run).items() if k != "run_dir"},
            "output_dir": self.run.run_dir,
            **{k: getattr(self.data, k) for k in ("dataset", "data_dir", "synthetic_num_users", "synthetic_num_items",
                                                   "max_users", "image_min_pixels", "image_max_pixels")},
            **{k: v for k, v in dataclasses.asdict(self.protocol).items() if k != "split_seed"},
            **dataclasses.asdict(self.hardness), **dataclasses.asdict(self.evaluation),
            "seed": self.seed, "model": m.model_name_or_path, "attn_implementation": m.attn_implementation,
            "bf16": self.bf16, "load_in_4bit": m.load_in_4bit, "lora_r": m.lora_r, "lora_alpha": m.lora_alpha,
            "lora_dropout": m.lora_dropout, "lora_target_modules": targets,
            "gradient_checkpointing": bool(sft.gradient_checkpointing),
            "dpo_gradient_checkpointing": bool(dpo.gradient_checkpointing),
            "hardness_mode": self.hardness_mode(),
        }
        for stage, args in (("sft", sft), ("dpo", dpo)):
            for name, old in STAGE_NAMED_FIELDS.items():
                flat[f"{stage}_{old}"] = getattr(args, name)
            flat[f"{stage}_extra_args"] = self.stage_extra(stage)
        for name in DPO_NAMED_FIELDS - {"hardness_column"}:
            flat[name] = getattr(dpo, name)
        return flat

    def variants_to_train(self, default: Sequence[Variant] | None = None) -> list[Variant]:
        """The variants to train from the one SFT model: ``run.variants`` if given, else ``default`` (the ablation
        script's list), else the one :meth:`variant` describes (none for method sft)."""
        if self.run.variants:
            variants = [VARIANTS_BY_NAME[name] for name in self.run.variants]
        elif default is not None:
            variants = list(default)
        else:
            variant = self.variant()
            variants = [variant] if variant is not None else []
        if not self.run.dpo_seeds:
            return variants
        return [v.with_seed(seed) for v in variants for seed in self.run.dpo_seeds]

    def variant(self) -> Variant | None:
        """The preference-optimization variant this run trains (None for method sft)."""
        method, ablation, dpo = self.run.method, self.run.ablation, self.dpo
        mode = self.hardness_mode()
        if method == "sft":
            return None
        if method == "dpo":
            return PLAIN_DPO
        if ablation != "none":
            return next(v for v in ABLATION_VARIANTS if v.name == ablation)
        if dpo.use_hardness and dpo.use_responsiveness and mode == "topk" and dpo.lora_noise_std > 0:
            return HANO
        # switches set by hand: name the variant after them
        parts = [
            "hardness" if dpo.use_hardness else None,
            "responsiveness" if dpo.use_responsiveness else None,
            "pairwise" if dpo.use_hardness and mode == "pairwise" else None,
            f"noise{dpo.lora_noise_std:g}" if dpo.lora_noise_std > 0 else None,
        ]
        name = "hano-" + ("-".join(p for p in parts if p) or "off")
        return Variant(name, name, dpo.use_hardness, dpo.use_responsiveness, mode, dpo.lora_noise_std)

    def resolved_dpo_init(self) -> str:
        if self.run.dpo_init == "auto":
            return "adapter" if self.model.load_in_4bit else "merge"
        return self.run.dpo_init

    def evaluation_prompt(self) -> str:
        """The ranking prompt format of the evaluation (``eval_prompt``; 'auto' follows the SFT task)."""
        from ..data.builders import parse_tasks

        if self.evaluation.eval_prompt != "auto":
            return self.evaluation.eval_prompt
        return "next_item" if "next_item" in parse_tasks(self.protocol.sft_task) else "list"

    def baseline_names(self) -> list[str]:
        return [] if self.evaluation.baselines == ["none"] else list(self.evaluation.baselines)

    def _validate_protocol_and_evaluation(self) -> None:
        from ..data.builders import parse_tasks

        protocol, ev = self.protocol, self.evaluation
        for name in ("sft_task", "dpo_task"):
            try:
                parse_tasks(getattr(protocol, name))
            except ValueError as e:
                raise PipelineConfigError(f"--protocol.{name}: {e}") from None
        if protocol.max_windows_per_user is not None and (protocol.max_windows_per_user < 1
                                                          or not protocol.sliding_windows):
            raise PipelineConfigError("--protocol.max_windows_per_user needs --protocol.sliding_windows and a value "
                                      "of at least 1")
        if ev.curve_steps is not None and (ev.curve_steps < 1 or ev.curve_examples < 1):
            raise PipelineConfigError("--evaluation.curve_steps and --evaluation.curve_examples must be at least 1")
        if ev.score_permutations is not None and ev.score_permutations < 1:
            raise PipelineConfigError(f"--evaluation.score_permutations must be at least 1 (or None: every order), "
                                      f"got {ev.score_permutations}")
        if "none" in ev.baselines and len(ev.baselines) > 1:
            raise PipelineConfigError(f"--evaluation.baselines none excludes the others, got {' '.join(ev.baselines)}")
        if len(set(ev.baselines)) != len(ev.baselines):
            raise PipelineConfigError(f"--evaluation.baselines names a baseline twice: {' '.join(ev.baselines)}")

    def _validate_run(self, data_given: bool = False) -> None:
        run, data, model = self.run, self.data, self.model
        if run.variants is not None:
            if not run.variants:
                raise PipelineConfigError(f"--run.variants needs at least one of {', '.join(VARIANT_NAMES)}")
            unknown = [name for name in run.variants if name not in VARIANTS_BY_NAME]
            if unknown:
                raise PipelineConfigError(
                    f"--run.variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}"
                )
            if len(set(run.variants)) != len(run.variants):
                raise PipelineConfigError(f"--run.variants names a variant twice: {' '.join(run.variants)}")
            clashing = [f"--run.method {run.method}"] if run.method == "sft" else []
            clashing += [f"--run.ablation {run.ablation}"] if run.ablation != "none" else []
            if clashing:
                raise PipelineConfigError(
                    f"--run.variants {' '.join(run.variants)} replaces method/ablation; drop {' '.join(clashing)}"
                )
        if run.dpo_seeds is not None:
            if not run.dpo_seeds or len(set(run.dpo_seeds)) != len(run.dpo_seeds):
                raise PipelineConfigError(f"--run.dpo_seeds needs distinct seeds, at least one (got "
                                          f"{' '.join(map(str, run.dpo_seeds)) or 'none'})")
            if run.method == "sft" and not run.variants:
                raise PipelineConfigError("--run.dpo_seeds seeds the preference optimization; --run.method sft has "
                                          "none (use --run.method dpo/hano or --run.variants)")
        if run.method != "hano" and run.ablation != "none":
            raise PipelineConfigError(f"--run.ablation {run.ablation} needs --run.method hano (got --run.method "
                                      f"{run.method})")
        if run.resume and run.overwrite:
            raise PipelineConfigError("--run.resume and --run.overwrite exclude each other: continue the run or "
                                      "replace it")
        if (run.resume or run.overwrite) and run.run_dir is None:
            flag = "--run.resume" if run.resume else "--run.overwrite"
            raise PipelineConfigError(f"{flag} needs --run.run_dir (the run directory to continue or replace)")
        if data.dataset == "custom":
            missing = [name for name in ("interactions", "items") if not getattr(data, name)]
            if missing and not data_given:
                raise PipelineConfigError(f"data.dataset custom needs {' and '.join('data.' + m for m in missing)} "
                                          "(the interaction and item tables; docs/data.md)")
        elif data.data_dir is None and data.dataset != "movielens":
            raise PipelineConfigError(
                f"data.dataset {data.dataset} needs --data.data_dir with the dataset files (docs/data.md); only the "
                "MovieLens example has an embedded synthetic default (run examples/train_movielens.py without "
                "arguments)"
            )
        if not model.use_peft:
            raise PipelineConfigError("model.use_peft false: the pipeline trains LoRA adapters (SFT, then DPO from "
                                      "the SFT model); set model.use_peft true")
        if model.load_in_4bit and run.dpo_init == "merge":
            raise PipelineConfigError(
                "model.load_in_4bit with run.dpo_init merge: a 4-bit base model cannot take the SFT adapter merged in "
                "losslessly. Use --run.dpo_init adapter (or auto): DPO then continues the SFT adapter and the "
                "reference is a frozen copy of it."
            )
        if run.tokenizer == "tiny" and model.model_name_or_path not in ("tiny-qwen2.5-vl", "tiny-qwen2"):
            raise PipelineConfigError(
                f"--run.tokenizer tiny works with the built-in tiny models only (got --model.model_name_or_path "
                f"{model.model_name_or_path})"
            )
        if self.dpo.use_hardness and self.hardness_mode() not in HARDNESS_MODES:
            raise PipelineConfigError(
                f"dpo.hardness_column {self.dpo.hardness_column!r}: the hardness stage writes "
                f"{' and '.join(lambda_column(m) for m in HARDNESS_MODES)}; choose one of them"
            )

    def validate(self, data_given: bool = False) -> None:
        """Checks what TRL's dataclasses do not (combinations, and values that would fail only after a stage ran);
        raises :class:`PipelineConfigError`. ``data_given``: the dataset comes in memory (``run_pipeline(data=...)``),
        so ``dataset: custom`` needs no files."""
        self._validate_protocol_and_evaluation()
        self._validate_run(data_given)
        data, protocol, model, sft, dpo, hard, ev = (self.data, self.protocol, self.model, self.sft, self.dpo,
                                                     self.hardness, self.evaluation)
        positive = {
            "sft.per_device_train_batch_size": sft.per_device_train_batch_size,
            "dpo.per_device_train_batch_size": dpo.per_device_train_batch_size,
            "sft.gradient_accumulation_steps": sft.gradient_accumulation_steps,
            "dpo.gradient_accumulation_steps": dpo.gradient_accumulation_steps,
            "evaluation.eval_batch_size": ev.eval_batch_size, "model.lora_r": model.lora_r,
            "hardness.hardness_k": hard.hardness_k, "protocol.num_rejected": protocol.num_rejected,
            "sft.save_steps": sft.save_steps, "dpo.save_steps": dpo.save_steps,
            "sft.logging_steps": sft.logging_steps, "dpo.logging_steps": dpo.logging_steps,
        }
        bad = [f"--{k} {v}" for k, v in positive.items() if v < 1]
        for name in ("max_train_sequences", "max_test_sequences"):
            value = getattr(protocol, name)
            if value is not None and value < 1:
                bad.append(f"--protocol.{name} {value}")
        if data.max_users is not None and data.max_users < 1:
            bad.append(f"--data.max_users {data.max_users}")
        if bad:
            raise PipelineConfigError(f"these arguments must be at least 1: {', '.join(bad)}")
        # Every value that would otherwise fail (or train nothing) only after SFT or DPO has run (docs/reliability.md).
        numbers = {  # name: (value, test, what it must be)
            "dpo.beta": (dpo.beta, lambda v: v > 0, "> 0"),
            "dpo.lora_noise_std": (dpo.lora_noise_std, lambda v: v >= 0, ">= 0"),
            "sft.learning_rate": (sft.learning_rate, lambda v: v > 0, "> 0"),
            "dpo.learning_rate": (dpo.learning_rate, lambda v: v > 0, "> 0"),
            "sft.num_train_epochs": (sft.num_train_epochs, lambda v: v > 0 or sft.max_steps > 0,
                                     "> 0 (or --sft.max_steps)"),
            "dpo.num_train_epochs": (dpo.num_train_epochs, lambda v: v > 0 or dpo.max_steps > 0,
                                     "> 0 (or --dpo.max_steps)"),
            "hardness.hardness_temperature": (hard.hardness_temperature, lambda v: v > 0, "> 0"),
            "model.lora_dropout": (model.lora_dropout, lambda v: 0 <= v < 1, "in [0, 1)"),
            "model.lora_alpha": (model.lora_alpha, lambda v: v > 0, "> 0"),
        }
        bad = [f"--{name} {value} (must be a finite number {what})" for name, (value, ok, what) in numbers.items()
               if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value))]
        integers = {  # name: (value, smallest allowed)
            "protocol.sequence_length": (protocol.sequence_length, 2),
            "protocol.num_candidates": (protocol.num_candidates, 2),
            "protocol.min_interactions": (protocol.min_interactions, max(protocol.sequence_length, 2)),
            "protocol.auc_num_unwatched": (protocol.auc_num_unwatched, 0),
            "dpo.responsiveness_warmup": (dpo.responsiveness_warmup, 0),
            "evaluation.similarity_items": (ev.similarity_items, 0),
            "data.synthetic_num_users": (data.synthetic_num_users, 1),
            "data.synthetic_num_items": (data.synthetic_num_items, 2),
            "data.image_min_pixels": (data.image_min_pixels, 1),
            "data.image_max_pixels": (data.image_max_pixels, max(data.image_min_pixels, 1)),
        }
        bad += [f"--{name} {value} (must be at least {least})" for name, (value, least) in integers.items()
                if value < least]
        for stage, args in (("sft", sft), ("dpo", dpo)):
            if args.max_steps == 0 or args.max_steps < -1:
                bad.append(f"--{stage}.max_steps {args.max_steps} (must be -1, i.e. use the epochs, or at least 1)")
            if args.max_length is not None and args.max_length < 1:
                bad.append(f"--{stage}.max_length {args.max_length} (must be at least 1, or None)")
        if ev.eval_ks is not None:
            wrong = [k for k in ev.eval_ks if not 1 <= k <= protocol.num_candidates]
            if not ev.eval_ks or wrong:
                bad.append(f"--evaluation.eval_ks {' '.join(map(str, ev.eval_ks)) or '(none)'} (each K must be "
                           f"between 1 and --protocol.num_candidates {protocol.num_candidates})")
        synthetic = data.data_dir is None and data.dataset != "custom" and not data_given
        uses_hardness = any(v.use_hardness for v in self.variants_to_train()) or protocol.rejected == "hard"
        if synthetic and uses_hardness and hard.hardness_k >= data.synthetic_num_items:
            bad.append(f"--hardness.hardness_k {hard.hardness_k} (the synthetic catalogue has "
                       f"--data.synthetic_num_items {data.synthetic_num_items} items, so K can be at most "
                       f"{data.synthetic_num_items - 1})")
        if synthetic and protocol.num_candidates + protocol.auc_num_unwatched >= data.synthetic_num_items:
            bad.append(f"--protocol.num_candidates {protocol.num_candidates} with --protocol.auc_num_unwatched "
                       f"{protocol.auc_num_unwatched} (the synthetic catalogue has only {data.synthetic_num_items} "
                       "items)")
        if bad:
            raise PipelineConfigError("invalid arguments: " + "; ".join(bad))


__all__ = ["PipelineConfig", "make_config"]
