"""The data layer: raw dataset files -> one in-memory form -> the paper's protocol -> TRL-ready datasets.

See ``docs/data.md``. Typical use::

    from hanorec_trl.data import (load_movielens_1m, write_synthetic_movielens, build_split, freeze_split,
                                  build_sft_dataset, build_dpo_dataset)

    data = load_movielens_1m(write_synthetic_movielens("runs/synthetic"))   # or a real MovieLens-1M folder
    split = build_split(data)                                               # 8:1:1, candidates, AUC labels
    freeze_split(split, "runs/split")                                       # JSONL + manifest
    train = build_dpo_dataset(split.train, data, num_rejected=1)
"""

from .builders import build_auc_eval_dataset, build_dpo_dataset, build_ranking_eval_dataset, build_sft_dataset
from .custom import load_interactions
from .loaders import DATASETS, load_dataset
from .microlens import load_microlens
from .movielens import load_movielens_1m, read_movielens_movies
from .netflix import load_netflix_llmrec
from .prompts import DEFAULT_TEMPLATES, NO, YES, PromptTemplates, assistant_message, auc_prompt, ranking_prompt
from .protocol import (
    ProtocolConfig,
    RecSplit,
    SequenceExample,
    SplitMismatchError,
    build_split,
    freeze_split,
    load_split,
)
from .recbole import export_recbole
from .recdata import DataFormatError, MissingImageWarning, RecData, UnknownItemError
from .synthetic import SyntheticConfig, cached_synthetic_movielens, write_synthetic_movielens

__all__ = [
    "DATASETS",
    "DEFAULT_TEMPLATES",
    "NO",
    "YES",
    "DataFormatError",
    "MissingImageWarning",
    "PromptTemplates",
    "ProtocolConfig",
    "RecData",
    "RecSplit",
    "SequenceExample",
    "SplitMismatchError",
    "SyntheticConfig",
    "UnknownItemError",
    "assistant_message",
    "auc_prompt",
    "build_auc_eval_dataset",
    "build_dpo_dataset",
    "build_ranking_eval_dataset",
    "build_sft_dataset",
    "build_split",
    "export_recbole",
    "freeze_split",
    "load_microlens",
    "load_movielens_1m",
    "read_movielens_movies",
    "load_dataset",
    "load_interactions",
    "load_netflix_llmrec",
    "load_split",
    "ranking_prompt",
    "cached_synthetic_movielens",
    "write_synthetic_movielens",
]
