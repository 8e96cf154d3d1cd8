"""The pipeline's configuration sections, in TRL's own configuration language.

A recipe is a YAML file of nested sections; the three training sections are TRL's (and this library's) own
dataclasses, so every field they define is settable and is validated by them:

* ``model:`` -> ``trl.ModelConfig`` (model name or path, dtype, attention kernel, LoRA, 4-bit loading; the
  pipeline builds its adapter with ``trl.get_peft_config`` and its quantization with ``trl.get_quantization_config``);
* ``sft:`` -> ``trl.SFTConfig`` (the SFT stage);
* ``dpo:`` -> :class:`~hanorec_trl.HaNoDPOConfig` (the preference-optimization stage and HaNoRec's switches);

plus the pipeline's own sections, one dataclass each (this module), none of which repeats a field of those three:

* ``run:`` :class:`RunArguments` -- method, variants, run directory, resume, how DPO starts from SFT;
* ``data:`` :class:`DataArguments` -- dataset, files (also ``dataset: custom``: any interaction table), images;
* ``protocol:`` :class:`ProtocolArguments` -- the recommendation protocol (paper Sec. 4.1, App. B-C), prompts, pairs;
* ``hardness:`` :class:`HardnessArguments` -- the offline lambda (Top-K similarity sets);
* ``evaluation:`` :class:`EvalArguments` -- HR@K / NDCG@K / AUC, baselines, learning curve, similarity probe.

The pipeline's defaults are the embedded CPU demo (synthetic MovieLens-format data, tiny random Qwen2.5-VL, real
Qwen2.5 tokenizer); where they differ from TRL's class defaults they are listed in :data:`TRL_SECTION_DEFAULTS`.

The rest of the configuration lives beside this module: :mod:`.pipeline_config` (:class:`PipelineConfig`, all
sections of one run, and its checks), :mod:`.command_line` (``--config recipe.yaml`` and ``--<section>.<field>
value``), :mod:`.section_values` (values typed and built into the dataclasses), :mod:`.flat_names` (the flat recipes
and flags of earlier versions), :mod:`.variants` and :mod:`.cli_reference` (the generated CLI reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .variants import ABLATIONS, VARIANT_NAMES, lambda_column

DATASETS = ("movielens", "microlens", "netflix", "custom")
METHODS = ("sft", "dpo", "hano")
DPO_INITS = ("auto", "merge", "adapter")


class PipelineConfigError(ValueError):
    """An invalid combination of pipeline arguments; the message names the fields and what to change."""



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
    reuse_from: str | None = field(
        default=None,
        metadata={
            "help": "Another run directory of this pipeline whose finished stages this run reuses where they were "
            "produced with the same arguments (copied as hard links; that run is only read): e.g. train SFT once, "
            "then sweep '--hardness.hardness_temperature' or '--protocol.rejected' in new run directories, each "
            "reusing the data, the SFT model, the baselines and every training the change does not affect."
        },
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
    max_dpo_pairs: int | None = field(
        default=None,
        metadata={"help": "Train every DPO variant on a seeded sample of N of the saved pairs (the same N for all "
                  "variants and seeds, lambda keeps the normalisation over all pairs), so that the reference "
                  "log-probs are computed for the pairs a short DPO run sees, not for all; None: all pairs."},
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


__all__ = [
    "ARGUMENT_CLASSES",
    "DataArguments",
    "EvalArguments",
    "HardnessArguments",
    "PIPELINE_SECTIONS",
    "PIPELINE_SET",
    "PipelineConfigError",
    "ProtocolArguments",
    "RunArguments",
    "SECTIONS",
    "TRL_SECTION_DEFAULTS",
    "trl_section_classes",
]
