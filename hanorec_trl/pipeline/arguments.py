"""The pipeline's configuration, in TRL's own configuration language.

A recipe is a YAML file of nested sections; the three training sections are TRL's (and this library's) own
dataclasses, so every field they define is settable and is validated by them:

* ``model:`` -> ``trl.ModelConfig`` (model name or path, dtype, attention kernel, LoRA, 4-bit loading; the
  pipeline builds its adapter with ``trl.get_peft_config`` and its quantization with ``trl.get_quantization_config``);
* ``sft:`` -> ``trl.SFTConfig`` (the SFT stage);
* ``dpo:`` -> :class:`~hanorec_trl.HaNoDPOConfig` (the preference-optimization stage and HaNoRec's switches);

plus the pipeline's own sections, one dataclass each, none of which repeats a field of those three:

* ``run:`` :class:`RunArguments` -- method, variants, run directory, resume, how DPO starts from SFT;
* ``data:`` :class:`DataArguments` -- dataset, files (also ``dataset: custom``: any interaction table), images;
* ``protocol:`` :class:`ProtocolArguments` -- the recommendation protocol (paper Sec. 4.1, App. B-C), prompts, pairs;
* ``hardness:`` :class:`HardnessArguments` -- the offline lambda (Top-K similarity sets);
* ``evaluation:`` :class:`EvalArguments` -- HR@K / NDCG@K / AUC, baselines, learning curve, similarity probe.

Command line: ``--config recipe.yaml`` and ``--<section>.<field> value`` for any field of any section
(``--sft.learning_rate 3e-4``, ``--dpo.beta 0.2``, ``--model.lora_r 16``, ``--dpo.no_use_hardness``). The flat
recipes and flags of earlier versions (``--sft_learning_rate``, ``--output_dir``...) are translated by
:func:`translate_flat` (table in ``docs/pipeline.md``). The pipeline's defaults are the embedded CPU demo (synthetic
MovieLens-format data, tiny random Qwen2.5-VL, real Qwen2.5 tokenizer); where they differ from TRL's class defaults
they are listed in :data:`TRL_SECTION_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("movielens", "microlens", "netflix", "custom")
METHODS = ("sft", "dpo", "hano")
HARDNESS_MODES = ("topk", "pairwise")
DPO_INITS = ("auto", "merge", "adapter")
LAMBDA_PREFIX = "hano_lambda_"  # the hardness stage's columns: hano_lambda_topk, hano_lambda_pairwise


def lambda_column(mode: str) -> str:
    """The DPO pairs' lambda column of a hardness mode (``topk`` / ``pairwise``)."""
    return LAMBDA_PREFIX + mode


class PipelineConfigError(ValueError):
    """An invalid combination of pipeline arguments; the message names the fields and what to change."""


@dataclass(frozen=True)
class Variant:
    """One preference-optimization variant of paper Sec. 4.3 (a DPO stage + its evaluation).

    ``lora_noise_std=None`` keeps the run's ``dpo.lora_noise_std``; ``hardness_mode`` picks the lambda column
    ``hano_lambda_<mode>`` (``dpo.hardness_column``).
    """

    name: str
    label: str
    use_hardness: bool
    use_responsiveness: bool
    hardness_mode: str = "topk"
    lora_noise_std: float | None = None
    seed: int | None = None  # the DPO seed of this training (run.dpo_seeds); None: dpo.seed

    @property
    def base_name(self) -> str:
        """The variant's name without its seed suffix (``hano-seed2`` -> ``hano``)."""
        return self.name if self.seed is None else self.name[: -len(f"-seed{self.seed}")]

    def with_seed(self, seed: int) -> Variant:
        """This variant trained with DPO seed ``seed``: named ``<name>-seed<seed>``."""
        return dataclasses.replace(self, name=f"{self.name}-seed{seed}", label=f"{self.label} (seed {seed})",
                                   seed=seed)

    def switches(self, dpo: Any) -> dict[str, Any]:
        """The HaNoDPOConfig switches of this variant for the run's ``dpo`` section (a ``HaNoDPOConfig``)."""
        return {
            "use_hardness": self.use_hardness,
            "use_responsiveness": self.use_responsiveness,
            "hardness_mode": self.hardness_mode,
            "lora_noise_std": dpo.lora_noise_std if self.lora_noise_std is None else self.lora_noise_std,
        }


# The ablation table of paper Sec. 4.3 (Table 4), in its order.
HANO = Variant("hano", "HaNoRec", True, True)
WO_HARS = Variant("wo_hars", "w/o HaRS", False, False)
WO_SAM = Variant("wo_sam", "w/o SAM", True, True, hardness_mode="pairwise")
WO_NODO = Variant("wo_nodo", "w/o NoDO", True, True, lora_noise_std=0.0)
WO_ALL = Variant("wo_all", "w/o ALL (DPO)", False, False, lora_noise_std=0.0)
ABLATION_VARIANTS: tuple[Variant, ...] = (HANO, WO_HARS, WO_SAM, WO_NODO, WO_ALL)
PLAIN_DPO = Variant("dpo", "DPO", False, False, lora_noise_std=0.0)
ABLATIONS = ("none",) + tuple(v.name for v in ABLATION_VARIANTS if v is not HANO)
VARIANTS_BY_NAME: dict[str, Variant] = {v.name: v for v in (PLAIN_DPO,) + ABLATION_VARIANTS}
VARIANT_NAMES = tuple(VARIANTS_BY_NAME)


@dataclass
class RunArguments:
    """What to run, where, and how the stages hand models to each other."""

    method: str = field(
        default="hano",
        metadata={
            "help": "'sft' (SFT only), 'dpo' (SFT then plain DPO, i.e. HaNoRec with every switch off) or 'hano' (SFT "
            "then HaNoRec preference optimization).",
            "choices": list(METHODS),
        },
    )
    ablation: str = field(
        default="none",
        metadata={
            "help": "With method hano: run one ablation of paper Sec. 4.3 instead of the full method: 'wo_hars' "
            "(use_hardness and use_responsiveness off), 'wo_sam' (pairwise hardness), 'wo_nodo' (lora_noise_std=0), "
            "'wo_all' (plain DPO). examples/ablations.py runs all of them on one SFT model.",
            "choices": list(ABLATIONS),
        },
    )
    variants: list[str] | None = field(
        default=None,
        metadata={
            "help": "Train several preference-optimization variants from the one SFT model and compare them in one "
            "table, instead of the one that method/ablation describe; e.g. '--run.variants dpo hano' for SFT vs DPO "
            "vs HaNoRec. Default: method/ablation (examples/ablations.py: every ablation of paper Sec. 4.3).",
            "choices": list(VARIANT_NAMES),
        },
    )
    dpo_seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "Train every variant once per DPO seed (the trainer's seed: LoRA initialisation, batch order, "
            "noise draws), all from the one SFT model and the same pairs, sharing one pass of reference log-probs; "
            "the trainings are named <variant>-seed<N> and the report pairs each variant's per-row mean over the "
            "seeds with SFT, popularity and DPO on every test row, e.g. '--run.dpo_seeds 0 1 2'. Default: one "
            "training per variant with dpo.seed."
        },
    )
    run_dir: str | None = field(
        default=None,
        metadata={"help": "Run directory (must be new or empty). Default: runs/<dataset>-<YYYYmmdd-HHMMSS>. Each "
                  "trainer writes into its stage's folder of it (sft.output_dir / dpo.output_dir are set from it)."},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue the run in run_dir: finished stages are skipped, SFT/DPO resume from their last "
            "checkpoint. The arguments of finished stages must not change."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Delete run_dir first (only a run directory written by this pipeline)."},
    )
    tokenizer: str = field(
        default="auto",
        metadata={
            "help": "'auto': the model's own tokenizer (the real Qwen2.5 tokenizer for the built-in Qwen models). "
            "'tiny': a 512-token tokenizer with Qwen's special tokens, for fast tests of the built-in tiny models.",
            "choices": ["auto", "tiny"],
        },
    )
    dpo_init: str = field(
        default="auto",
        metadata={
            "help": "How DPO starts from the SFT model. 'merge': merge the SFT adapter into the base weights and train "
            "a fresh LoRA on the merged model, so that the reference (adapters disabled) is exactly the SFT model. "
            "'adapter': keep training the SFT adapter; the reference is a frozen copy of it (TRL's 'ref' adapter). "
            "'auto': 'adapter' with model.load_in_4bit, else 'merge'.",
            "choices": list(DPO_INITS),
        },
    )


@dataclass
class DataArguments:
    """The dataset: a built-in format, synthetic data, or any interaction table (``dataset: custom``)."""

    dataset: str = field(
        default="movielens",
        metadata={"help": "Dataset format: 'movielens' (MovieLens-1M), 'microlens' or 'netflix' (LLMRec release), or "
                  "'custom' (any interaction table and item table, read by hanorec_trl.data.load_interactions with "
                  "the interactions / items / *_col fields below; docs/data.md).",
                  "choices": list(DATASETS)},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with the dataset files (see docs/data.md); with dataset custom, the folder that relative "
            "interactions / items / image_dir paths are read from. Default (MovieLens only): generate the synthetic "
            "MovieLens-format dataset inside the run directory."
        },
    )
    synthetic_num_users: int = field(default=80, metadata={"help": "Synthetic data (no data_dir): number of users."})
    synthetic_num_items: int = field(default=400, metadata={"help": "Synthetic data (no data_dir): number of items."})
    max_users: int | None = field(
        default=None,
        metadata={"help": "Keep a seeded random sample of this many users (all their interactions); None keeps all."},
    )
    interactions: str | None = field(
        default=None,
        metadata={"help": "dataset custom: the interaction table (CSV, TSV, Parquet or JSON Lines, by suffix; .gz "
                  "for the text formats), one row per (user, item) interaction."},
    )
    items: str | None = field(
        default=None,
        metadata={"help": "dataset custom: the item table (same formats), one row per item with its title."},
    )
    user_col: str = field(default="user_id", metadata={"help": "dataset custom: the user column of interactions."})
    item_col: str = field(default="item_id", metadata={"help": "dataset custom: the item column of interactions."})
    time_col: str | None = field(
        default=None,
        metadata={"help": "dataset custom: the time column of interactions (numbers or ISO dates); None: the rows "
                  "are in time order per user."},
    )
    title_col: str = field(default="title", metadata={"help": "dataset custom: the title column of items."})
    items_item_col: str | None = field(
        default=None, metadata={"help": "dataset custom: the item column of items; None: the same name as item_col."}
    )
    sep: str | None = field(
        default=None,
        metadata={"help": "dataset custom: field separator of CSV/TSV files; None: ',' for .csv, tab for .tsv/.txt."},
    )
    image_dir: str | None = field(
        default=None,
        metadata={"help": "dataset custom: folder of item images (vision models); None: no images (placeholders)."},
    )
    image_pattern: str = field(
        default="{item_id}.jpg",
        metadata={"help": "dataset custom: image file of an item inside image_dir, with {item_id} replaced."},
    )
    image_min_pixels: int = field(
        default=28 * 28, metadata={"help": "Vision models: smallest image area after resizing (pixels)."}
    )
    image_max_pixels: int = field(
        default=56 * 56,
        metadata={
            "help": "Vision models: largest image area after resizing; max_pixels / 784 image tokens per image "
            "(56*56 = 4 tokens for the CPU demo; e.g. 200704 = 256 tokens for real runs)."
        },
    )


@dataclass
class ProtocolArguments:
    """The recommendation protocol (paper Sec. 4.1, App. B-C): split, sequences, candidates, prompts, DPO pairs."""

    split_seed: int = field(
        default=0,
        metadata={"help": "Seed of the user subsample, the synthetic data, the split, the negatives and the rejected "
                  "items (sft.seed and dpo.seed seed training)."},
    )
    min_interactions: int = field(default=6, metadata={"help": "Drop users with fewer interactions than this."})
    sequence_length: int = field(
        default=6, metadata={"help": "Items per sequence: sequence_length - 1 history items, then the target."}
    )
    num_candidates: int = field(
        default=10, metadata={"help": "Ranking candidates per sequence: the target + num_candidates - 1 negatives."}
    )
    auc_num_unwatched: int = field(
        default=3, metadata={"help": "Never-interacted items listed as 'not watched' in the AUC prompt (Fig. 6a)."}
    )
    split_by: str = field(
        default="sequence",
        metadata={"help": "'sequence' (paper) or 'user' (every window of a user in one part: no test target appears "
                  "in a training history).", "choices": ["sequence", "user"]},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "A system message before every prompt. None: none, so the chat template may add its own "
                  "default (SmolLM2: 'You are a helpful AI assistant named SmolLM...', ~20 tokens); '': an empty one, "
                  "which suppresses that default."},
    )
    sliding_windows: bool = field(
        default=False,
        metadata={"help": "Every window of sequence_length consecutive items of a user becomes a sequence (not only "
                  "the most recent one): more training examples per user. Use with split_by user."},
    )
    evaluation_windows: str = field(
        default="last",
        metadata={"help": "With sliding_windows: 'last' evaluates each validation/test user once, on their most "
                  "recent window; 'all' evaluates every window.", "choices": ["last", "all"]},
    )
    max_windows_per_user: int | None = field(
        default=None, metadata={"help": "With sliding_windows: keep at most this many (most recent) windows per user."}
    )
    max_train_sequences: int | None = field(
        default=None, metadata={"help": "Train SFT and DPO on the first N training sequences only; None: all."}
    )
    max_test_sequences: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N test sequences only; None: all."}
    )
    sft_task: str = field(
        default="both",
        metadata={"help": "SFT prompts: 'ranking' (Fig. 6b, candidates listed), 'next_item' (history only, every "
                  "candidate scored as the continuation), 'auc' (Fig. 6a), several joined by '+' "
                  "(e.g. 'next_item+auc'), or 'both' (= 'ranking+auc')."},
    )
    dpo_task: str = field(
        default="both",
        metadata={"help": "DPO pairs (paper App. C.2): the same task names as sft_task."},
    )
    rejected: str = field(
        default="random",
        metadata={"help": "Rejected items of ranking / next-item DPO pairs: 'random' (num_rejected of the example's "
                  "negatives, uniformly, seeded: the paper's randomly sampled unobserved item), 'all' (one pair per "
                  "negative) or 'hard' (the num_rejected negatives closest to the target in the SFT model's item "
                  "embeddings).", "choices": ["random", "all", "hard"]},
    )
    num_rejected: int = field(
        default=1, metadata={"help": "Rejected negatives (DPO rows) per ranking / next-item example ('random', 'hard')."}
    )


@dataclass
class HardnessArguments:
    """The offline data hardness lambda (paper Eq. 4-6): item embeddings of the SFT model, Top-K similarity sets."""

    hardness_k: int = field(default=10, metadata={"help": "K of the Top-K similarity sets (paper: 10)."})
    hardness_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature tau of Eq. 5."})
    hardness_title_mode: str = field(
        default="input_embeddings",
        metadata={"help": "Title embedding of the item encoder (the SFT model, docs/design.md section 2): 'input_embeddings' or "
                  "'contextual'.", "choices": ["input_embeddings", "contextual"]},
    )



@dataclass
class EvalArguments:
    """Evaluation on the frozen test split (docs/design.md section 6) and the title-image similarity probe (paper Fig. 1c/4)."""

    eval_ks: list[int] | None = field(
        default=None,
        metadata={"help": "Cut-offs K of HR@K / NDCG@K; default (1, 3, 5, 10) limited to the candidate count."},
    )
    eval_batch_size: int = field(default=4, metadata={"help": "Prompts per forward during evaluation."})
    eval_ranking_mode: str = field(
        default="likelihood",
        metadata={"help": "'likelihood' (rank candidates by log-likelihood) or 'generation' (paper's protocol).",
                  "choices": ["likelihood", "generation"]},
    )
    auc_probability: str = field(
        default="sequence",
        metadata={"help": "P(Yes) from the full 'Yes'/'No' completions ('sequence') or their first token.",
                  "choices": ["sequence", "first_token"]},
    )
    eval_prompt: str = field(
        default="auto",
        metadata={"help": "Ranking prompt of the evaluation: 'list' (Fig. 6b, candidates listed), 'next_item' "
                  "(history only) or 'auto' (next_item when protocol.sft_task trains it, else list).",
                  "choices": ["auto", "list", "next_item"]},
    )
    score_permutations: int | None = field(
        default=None,
        metadata={"help": "'list' prompt: candidate orders per test example whose scores are averaged per candidate "
                  "(cyclic shifts of the stored order, so every candidate sits in every slot equally often). None: "
                  "every shift (num_candidates orders, exactly position-free); P: a seeded subset of P shifts; 1: "
                  "the stored order only (LLMs then favour the first-listed candidate)."},
    )
    baselines: list[str] = field(
        default_factory=lambda: ["random", "position", "popularity", "markov", "item_knn"],
        metadata={"help": "Classical baselines scored on the same test rows and shown in every results table "
                  "(hanorec_trl.baselines); 'none' for none. Under uniform negatives popularity is the bar to beat.",
                  "choices": ["random", "position", "popularity", "markov", "item_knn", "sasrec", "none"]},
    )
    curve_steps: int | None = field(
        default=None,
        metadata={"help": "Learning curve: evaluate the ranking (eval_prompt, score_permutations) on the first "
                  "curve_examples validation sequences before SFT, every N SFT steps and at its end, beside the "
                  "popularity and item-kNN baselines on the same rows (report/learning_curve.png). None: no curve."},
    )
    curve_examples: int = field(
        default=100, metadata={"help": "Validation sequences of the learning curve (curve_steps)."}
    )
    similarity_items: int = field(
        default=100,
        metadata={"help": "Vision models: items (test targets and candidates first) whose title-image cosine is "
                  "measured before and after DPO (paper Fig. 1c/4); 0 disables the probe."},
    )


# ----------------------------------------------------------------------------------------------------------------
# The TRL sections
# ----------------------------------------------------------------------------------------------------------------

_TRAINER_DEFAULTS: dict[str, Any] = {
    # what every pipeline trainer starts from (TRL's own defaults are for a GPU fine-tune of a chat model)
    "num_train_epochs": 1.0, "max_steps": -1, "learning_rate": 1e-4, "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1, "max_length": None, "seed": 0, "logging_steps": 1, "save_strategy": "steps",
    "save_steps": 25, "save_total_limit": 2, "report_to": "none", "bf16": False, "gradient_checkpointing": False,
    "dataloader_num_workers": 0, "disable_tqdm": False,
}

#: The pipeline's defaults for the TRL sections, where they differ from (or pin) the dataclasses' own defaults.
#: A recipe or the command line overrides any of them; every other field keeps TRL's default.
TRL_SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"model_name_or_path": "tiny-qwen2.5-vl", "attn_implementation": "sdpa", "dtype": "float32",
              "use_peft": True, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "use_bnb_nested_quant": True},
    "sft": dict(_TRAINER_DEFAULTS),
    "dpo": {**_TRAINER_DEFAULTS, "beta": 0.1, "use_hardness": True, "use_responsiveness": True,
            "hardness_column": lambda_column("topk"), "responsiveness": "ema", "responsiveness_warmup": 10,
            "lora_noise_std": 0.01, "lora_noise_mode": "absolute"},
}

#: Fields the pipeline sets itself in every stage (each trainer writes into its stage's folder of the run directory).
PIPELINE_SET = {"sft": ("output_dir",), "dpo": ("output_dir",)}


def trl_section_classes() -> dict[str, type]:
    from trl import ModelConfig, SFTConfig

    from ..config import HaNoDPOConfig

    return {"model": ModelConfig, "sft": SFTConfig, "dpo": HaNoDPOConfig}


PIPELINE_SECTIONS: dict[str, type] = {
    "run": RunArguments, "data": DataArguments, "protocol": ProtocolArguments, "hardness": HardnessArguments,
    "evaluation": EvalArguments,
}
SECTIONS = ("run", "data", "protocol", "hardness", "evaluation", "model", "sft", "dpo")
#: the pipeline's own dataclasses (the TRL sections are ``trl.ModelConfig``, ``trl.SFTConfig``, ``HaNoDPOConfig``)
ARGUMENT_CLASSES = tuple(PIPELINE_SECTIONS.values())


# ----------------------------------------------------------------------------------------------------------------
# Flat recipes and flags of earlier versions
# ----------------------------------------------------------------------------------------------------------------

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
FLAT_NAMES: dict[str, list[str]] = {}


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
# Parsing: defaults -> recipe -> command line, each section into its dataclass
# ----------------------------------------------------------------------------------------------------------------

_PARSERS: dict[type, Any] = {}


def _parser(cls: type):
    from transformers import HfArgumentParser

    if cls not in _PARSERS:
        _PARSERS[cls] = HfArgumentParser(cls, exit_on_error=False)
    return _PARSERS[cls]


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _unknown(section: str, cls: type, names: Sequence[str]) -> PipelineConfigError:
    known = sorted(_field_names(cls))
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=3)
        parts.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return PipelineConfigError(f"{section}: {', '.join(parts)} is not a field of {cls.__name__} (section "
                               f"'{section}:'; every field of {cls.__module__}.{cls.__name__} is accepted)")


def _typed(section: str, cls: type, name: str, value: Any) -> Any:
    """A YAML scalar given as text (YAML reads ``1e-4`` as a string) converted by the field's argparse type."""
    if not isinstance(value, str):
        return value
    action = _parser(cls)._option_string_actions.get(f"--{name}")
    kind = getattr(action, "type", None)
    if action is None or kind in (None, str) or action.nargs not in (None, "?"):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise PipelineConfigError(f"{section}.{name}: {value!r} is not valid ({e})") from None


def _cli_values(section: str, cls: type, tokens: list[str]) -> dict[str, Any]:
    """``--field value...`` tokens of one section, typed by ``HfArgumentParser`` (choices checked there)."""
    parser = _parser(cls)
    given = []
    for token in tokens:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            if name not in _field_names(cls) and name.startswith("no_") and name[3:] in _field_names(cls):
                name = name[3:]
            if name not in _field_names(cls):
                raise _unknown(section, cls, [name])
            given.append(name)
    import argparse
    import contextlib

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace, rest = parser.parse_known_args(tokens)
    except argparse.ArgumentError as e:
        name = (e.argument_name or "").split("/")[0].removeprefix("--")
        raise PipelineConfigError(f"--{section}.{name}: {e.message}") from None
    except SystemExit:
        detail = errors.getvalue().strip().splitlines()
        raise PipelineConfigError(f"{section}: {detail[-1] if detail else 'cannot read ' + ' '.join(tokens)}") \
            from None
    if rest:
        raise PipelineConfigError(f"{section}: cannot read {' '.join(rest)}")
    return {name: getattr(namespace, name) for name in given}


def _split_command_line(argv: Sequence[str]) -> tuple[str | None, dict[str, list[str]], dict[str, Any]]:
    """``--config``, the ``--section.field`` tokens by section, and the flat flags of earlier versions."""
    recipe, sections, flat = None, {}, {}
    k, args = 0, list(argv)
    while k < len(args):
        token = args[k]
        if not token.startswith("--"):
            raise PipelineConfigError(f"unexpected argument {token!r}: write '--<section>.<field> value'")
        name, _, inline = token[2:].partition("=")
        values = [inline] if "=" in token else []
        k += 1
        while k < len(args) and not args[k].startswith("--") and "=" not in token:
            values.append(args[k])
            k += 1
        if name == "config":
            if len(values) != 1:
                raise PipelineConfigError("--config takes one recipe file")
            recipe = values[0]
        elif "." in name:
            section, field_name = name.split(".", 1)
            if section not in SECTIONS:
                close = difflib.get_close_matches(section, SECTIONS, n=2)
                raise PipelineConfigError(f"--{name}: no section {section!r}; the sections are {', '.join(SECTIONS)}"
                                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
            sections.setdefault(section, []).extend([f"--{field_name}", *values])
        else:  # a flag of earlier versions: --sft_learning_rate 1e-4, --no_use_hardness, --eval_ks 1 3
            key = name.replace("-", "_")
            if key.startswith("no_") and key[3:] in FLAT_NAMES and not values:
                flat[key[3:]] = False
            elif not values:
                flat[key] = True
            else:
                flat[key] = values if len(values) > 1 or key in _FLAT_LISTS else values[0]
    return recipe, sections, flat


_FLAT_LISTS = {"variants", "eval_ks", "baselines"}


def _load_recipe(path: str) -> dict[str, dict[str, Any]]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PipelineConfigError(f"--config {path}: cannot read it ({e})") from None
    try:
        recipe = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise PipelineConfigError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(recipe, dict):
        raise PipelineConfigError(f"--config {path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    if is_flat_recipe(recipe):
        if any(key in SECTIONS and isinstance(value, dict) for key, value in recipe.items()):
            raise PipelineConfigError(f"--config {path} mixes sections and top-level fields; write every field "
                                      f"inside its section ({', '.join(SECTIONS)})")
        return translate_flat(recipe)
    for key, value in recipe.items():
        if value is not None and not isinstance(value, dict):
            raise PipelineConfigError(f"--config {path}: section {key!r} must be a mapping of fields")
    return {key: dict(value or {}) for key, value in recipe.items()}


def _from_flat_command_line(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat flags of earlier versions -> typed section values (strings typed as the new field's type)."""
    nested = translate_flat(flat)
    classes = {**PIPELINE_SECTIONS, **trl_section_classes()}
    out: dict[str, dict[str, Any]] = {}
    for section, values in nested.items():
        cls = classes[section]
        typed = {}
        for name, value in values.items():
            if name not in _field_names(cls):
                raise _unknown(section, cls, [name])
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                typed[name] = _cli_values(section, cls, [f"--{name}", *value])[name]
            elif isinstance(value, bool):
                typed[name] = value
            else:
                typed[name] = _typed(section, cls, name, value)
        out[section] = typed
    return out


def _build(section: str, cls: type, values: dict[str, Any]):
    """The section's dataclass from its values; TRL's ``__post_init__`` validates them."""
    unknown = [name for name in values if name not in _field_names(cls)]
    if unknown:
        raise _unknown(section, cls, unknown)
    values = {name: _typed(section, cls, name, value) for name, value in values.items()}
    if section in ("sft", "dpo"):
        values.setdefault("output_dir", "trainer_output")
        values["use_cpu"] = True  # device checks are the pipeline's (at the start of a run), not the parser's
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return cls(**values)
    except (TypeError, ValueError) as e:
        raise PipelineConfigError(f"{section}: {cls.__name__} refuses these values: {e}") from None


def make_config(sections: dict[str, dict[str, Any]]) -> PipelineConfig:
    """A :class:`PipelineConfig` from section values (missing fields: the pipeline's defaults)."""
    explicit = {name: {**TRL_SECTION_DEFAULTS.get(name, {}), **sections.get(name, {})} for name in SECTIONS}
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise PipelineConfigError(f"unknown section(s) {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}")
    for name in ("sft", "dpo"):
        for pinned in PIPELINE_SET[name]:
            if pinned in sections.get(name, {}):
                raise PipelineConfigError(f"{name}.{pinned} is set by the pipeline (the stage's folder of the run "
                                          "directory); choose the run directory with run.run_dir")
    classes = {**PIPELINE_SECTIONS, **trl_section_classes()}
    built = {name: _build(name, classes[name], explicit[name]) for name in SECTIONS}
    return PipelineConfig(**built, explicit=explicit)


def parse_sections(argv: Sequence[str], defaults: dict[str, dict[str, Any]] | None = None
                   ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """``argv`` -> section values (recipe, then command line; the flat forms of earlier versions translated) and the
    recipe path."""
    recipe, tokens, flat = _split_command_line(argv)
    values: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (defaults or {}).items()}

    def merge(update: dict[str, dict[str, Any]]) -> None:
        for section, fields_ in update.items():
            values.setdefault(section, {}).update(fields_)

    if recipe is not None:
        merge(_load_recipe(recipe))
    merge(_from_flat_command_line(flat))
    classes = {**PIPELINE_SECTIONS, **trl_section_classes()}
    merge({section: _cli_values(section, classes[section], section_tokens)
           for section, section_tokens in tokens.items()})
    return values, recipe


def parse_args(argv: Sequence[str] | None = None, *, dataset: str | None = None) -> PipelineConfig:
    """Parse ``--config recipe.yaml`` and ``--section.field value`` overrides into a validated
    :class:`PipelineConfig` (the flat forms of earlier versions are translated by :func:`translate_flat`).

    ``dataset`` is the example script's dataset (its default for ``data.dataset``); a recipe or the command line may
    not name another one.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage())
        raise SystemExit(0)
    defaults = {"data": {"dataset": dataset}} if dataset is not None else None
    values, _ = parse_sections(args, defaults)
    config = make_config(values)
    if dataset is not None and config.data.dataset != dataset and not (dataset == "movielens" and
                                                                       config.data.dataset == "custom"):
        raise PipelineConfigError(
            f"this script trains on {dataset!r} but the arguments say data.dataset {config.data.dataset!r}; use "
            f"examples/train_{config.data.dataset}.py or a {dataset} recipe"
        )
    config.validate()
    return config


def usage() -> str:
    return (
        "usage: python examples/train_<dataset>.py [--config recipe.yaml] [--<section>.<field> value ...]\n\n"
        f"sections: {', '.join(SECTIONS)}; model -> trl.ModelConfig, sft -> trl.SFTConfig, dpo -> "
        "hanorec_trl.HaNoDPOConfig (every field of each), the others the pipeline's own.\n"
        "e.g. --sft.learning_rate 3e-4 --dpo.beta 0.2 --model.lora_r 16 --protocol.max_train_sequences 64 "
        "--run.run_dir runs/x --run.resume\n"
        "Every field with its default: docs/pipeline.md (CLI reference)."
    )


def make_parser():
    """Kept for scripts that print the parser's help: the pipeline's sections as one ``HfArgumentParser``."""
    from transformers import HfArgumentParser

    return HfArgumentParser(ARGUMENT_CLASSES)


# ----------------------------------------------------------------------------------------------------------------
# The whole configuration
# ----------------------------------------------------------------------------------------------------------------

#: fields of the trainer sections that the stages' resume records never held (they do not change what is trained,
#: or they are recorded under another name)
_RUN_LEVEL = {"seed", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "report_to", "bf16",
              "gradient_checkpointing", "dataloader_num_workers", "disable_tqdm", "output_dir", "use_cpu",
              "trust_remote_code"}
_STAGE_NAMED = {"num_train_epochs": "epochs", "max_steps": "max_steps", "learning_rate": "learning_rate",
                "per_device_train_batch_size": "batch_size",
                "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_length"}
_DPO_NAMED = {"beta", "use_hardness", "use_responsiveness", "hardness_column", "responsiveness",
              "responsiveness_warmup", "lora_noise_std", "lora_noise_mode"}


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
        named = set(_STAGE_NAMED) | _RUN_LEVEL | (_DPO_NAMED if stage == "dpo" else set())
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
            for name, old in _STAGE_NAMED.items():
                flat[f"{stage}_{old}"] = getattr(args, name)
            flat[f"{stage}_extra_args"] = self.stage_extra(stage)
        for name in _DPO_NAMED - {"hardness_column"}:
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


# ----------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------


def _default_text(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def help_table() -> str:
    """The CLI reference in Markdown (``docs/pipeline.md``), generated from the dataclasses: the pipeline's sections
    field by field, and for TRL's sections the pipeline's defaults (every other field keeps TRL's default)."""
    lines = []
    for section, cls in PIPELINE_SECTIONS.items():
        lines += [f"\n### `{section}:` ({cls.__name__})\n", cls.__doc__.strip().splitlines()[0] + "\n",
                  "| argument | default | help |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            text = f.metadata.get("help", "").replace("|", "\\|")
            choices = f.metadata.get("choices")
            if choices:
                text += f" Choices: {', '.join(map(str, choices))}."
            lines.append(f"| `--{section}.{f.name}` | `{_default_text(f)}` | {text} |")
    owners = {"model": "trl.ModelConfig", "sft": "trl.SFTConfig", "dpo": "hanorec_trl.HaNoDPOConfig"}
    for section, owner in owners.items():
        lines += [f"\n### `{section}:` ({owner})\n",
                  f"Every field of `{owner}`, validated by it (`--{section}.<field> value`). The pipeline's defaults "
                  "where they differ from the class's own:\n", "| argument | pipeline default |", "|---|---|"]
        for name, value in TRL_SECTION_DEFAULTS[section].items():
            lines.append(f"| `--{section}.{name}` | `{value}` |")
        for name in PIPELINE_SET.get(section, ()):
            lines.append(f"| `--{section}.{name}` | set by the pipeline: `<run_dir>/{section}/.../trainer` |")
    lines += ["\n### Flat names of earlier versions\n",
              "Translated by `hanorec_trl.pipeline.translate_flat` (in recipes and on the command line):\n",
              "| earlier | now |", "|---|---|"]
    for old, new in FLAT_NAMES.items():
        lines.append(f"| `{old}` | {', '.join(f'`{t}`' for t in new)} |")
    return "\n".join(lines) + "\n"


FLAT_NAMES.update(_flat_table())


__all__ = [
    "ABLATION_VARIANTS",
    "ARGUMENT_CLASSES",
    "DataArguments",
    "EvalArguments",
    "FLAT_NAMES",
    "HardnessArguments",
    "PipelineConfig",
    "PipelineConfigError",
    "ProtocolArguments",
    "RunArguments",
    "SECTIONS",
    "TRL_SECTION_DEFAULTS",
    "VARIANT_NAMES",
    "Variant",
    "help_table",
    "lambda_column",
    "make_config",
    "make_parser",
    "parse_args",
    "translate_flat",
]
