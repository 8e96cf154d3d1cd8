r"""Stage 1, data: the dataset, the paper's protocol split (Sec. 4.1), and the SFT / DPO / evaluation datasets.

    python -m hanorec_trl.scripts.data --config examples/recipes/movielens/smollm2/data.yaml \
        --data_dir ../shared/data/ml-1m --output_dir runs/ml1m/data

Writes ``dataset.json`` (``RecData.save``), ``split/`` (frozen) and ``datasets.load_from_disk`` folders ``sft/``,
``dpo/``, ``eval_ranking/``, ``eval_auc/``, ``curve_ranking/``, and ``item_cf.npz`` (CF item vectors of the training
interactions: item tokens, CF hardness). Without ``data_dir``: the synthetic MovieLens format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import PromptTemplates, ProtocolConfig, RecData, RecSplit
from ..data.loaders import DATASETS
from ..data.prompts import item_templates
from ..files import content_hash
from ..pipeline.parsing import ConfigError, parse_stage_args
from ..pipeline.running import run_stage, say, script_main
from ..pipeline.stage import Stage, describe, read_json

OUTPUTS = ("dataset.json", "split", "sft", "dpo", "eval_ranking", "eval_auc", "curve_ranking", "item_cf.npz")
NAMINGS = ["title", "token", "both"]


@dataclass
class DataArguments:
    """Where the data comes from and which datasets the stage writes."""

    output_dir: str | None = field(default=None, metadata={"help": "The stage folder to write (must be new)."})
    dataset: str = field(default="movielens", metadata={
        "help": "'movielens' (MovieLens-1M), 'microlens', 'netflix' (LLMRec release) or 'custom' (any interaction "
        "and item table: interactions / items / *_col; docs/data.md).", "choices": list(DATASETS)})
    data_dir: str | None = field(default=None, metadata={
        "help": "Folder with the dataset files; dataset custom: where relative table paths are read. None "
        "(movielens only): generate the synthetic MovieLens-format dataset."})
    synthetic_num_users: int = field(default=80, metadata={"help": "Synthetic data: number of users."})
    synthetic_num_items: int = field(default=400, metadata={"help": "Synthetic data: number of items."})
    max_users: int | None = field(default=None, metadata={"help": "Keep a seeded sample of this many users."})
    tables: dict[str, Any] | None = field(default=None, metadata={
        "help": "dataset custom: the keyword arguments of hanorec_trl.data.load_interactions (interactions, items, "
        "user_col, item_col, time_col, time_unit, time_zone, title_col, items_item_col, sep, encoding, image_dir, "
        "image_pattern; docs/data.md); relative paths are read from data_dir."})
    images: bool = field(default=True, metadata={
        "help": "Put the posters into the prompts (a vision-language model); false: titles only (a text LLM)."})
    sft_task: str = field(default="both", metadata={
        "help": "SFT prompts: 'ranking' (Fig. 6b), 'next_item' (history only), 'auc' (Fig. 6a), several joined by "
        "'+', or 'both' (= ranking+auc)."})
    dpo_task: str = field(default="both", metadata={"help": "DPO pairs (App. C.2): the task names of sft_task."})
    rejected: str = field(default="random", metadata={
        "help": "Rejected items of ranking / next-item pairs: 'random' (num_rejected negatives, seeded) or 'all'. "
        "The hardness stage can replace them by the hardest ones (its hard_negatives).",
        "choices": ["random", "all"]})
    num_rejected: int = field(default=1, metadata={"help": "Rejected negatives per ranking / next-item example."})
    system_prompt: str | None = field(default=None, metadata={
        "help": "A system message before every prompt; None: none (the chat template may add its own), '': empty."})
    max_train_sequences: int | None = field(default=None, metadata={"help": "Use the first N training sequences."})
    max_test_sequences: int | None = field(default=None, metadata={"help": "Evaluate the first N test sequences."})
    max_dpo_pairs: int | None = field(default=None, metadata={"help": "A seeded sample of N DPO pairs (all: None)."})
    eval_prompt: str = field(default="auto", metadata={
        "help": "Ranking prompt of the evaluation: 'list', 'next_item', or 'auto' (next_item when sft_task has it).",
        "choices": ["auto", "list", "next_item"]})
    score_permutations: int | None = field(default=None, metadata={
        "help": "'list' prompt: candidate orders per test row (None: every cyclic shift, exactly position-free)."})
    curve_examples: int = field(default=100, metadata={"help": "Validation rows kept for the SFT learning curve."})
    item_naming: str = field(default="title", metadata={
        "help": "Items in prompts: by 'title', by item 'token' (<item_ID>; the SFT stage's item_tokens give it its "
        "meaning) or 'both' ('\"Title\" <item_ID>'); docs/item_tokens.md.", "choices": NAMINGS})
    answer_naming: str = field(default="title", metadata={
        "help": "SFT targets, DPO completions, candidates: 'title', 'token' (one token, scored by its log-prob) or "
        "'both'.", "choices": NAMINGS})
    cf_method: str | None = field(default=None, metadata={
        "help": "Write item_cf.npz, CF item vectors of the training interactions (item tokens, CF hardness need "
        "them): 'svd' (matrix factors) or 'sasrec'; None: none.", "choices": [None, "svd", "sasrec"]})
    cf_dim: int = field(default=64, metadata={"help": "Dimension of the CF item vectors."})

    def __post_init__(self) -> None:
        from ..data.builders import parse_tasks

        if not self.output_dir:
            raise ValueError("the data stage needs --output_dir (the folder it writes)")
        for name in ("sft_task", "dpo_task"):
            try:
                parse_tasks(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        small = {"synthetic_num_users": 1, "synthetic_num_items": 2, "num_rejected": 1, "curve_examples": 0,
                 "max_users": 1, "max_train_sequences": 1, "max_test_sequences": 1, "max_dpo_pairs": 1,
                 "score_permutations": 1, "cf_dim": 1}
        for name, least in small.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        if self.names_by_token and not self.cf_method:
            raise ValueError("items named by token need CF vectors for their tokens: set cf_method (svd or sasrec)")
        if self.dataset not in ("movielens", "custom") and self.data_dir is None:
            raise ValueError(f"dataset {self.dataset} needs data_dir (only movielens has a synthetic default)")

    @property
    def synthetic(self) -> bool:
        return self.data_dir is None and self.dataset == "movielens"

    @property
    def templates(self) -> PromptTemplates:
        return item_templates(self.item_naming, self.answer_naming, PromptTemplates(system=self.system_prompt))

    @property
    def names_by_token(self) -> bool:
        return self.item_naming != "title" or self.answer_naming != "title"

    def naming(self, data: RecData) -> dict[str, Any]:
        """How the dataset builders name items: images, templates, item tokens."""
        from ..item_tokens import ItemVocabulary

        return {"with_images": self.images, "templates": self.templates,
                "item_tokens": ItemVocabulary(data.item_ids) if self.names_by_token else None}

    def ranking_prompt(self) -> str:
        from ..data.builders import parse_tasks

        if self.eval_prompt != "auto":
            return self.eval_prompt
        return "next_item" if "next_item" in parse_tasks(self.sft_task) else "list"


def data_fingerprint(data: RecData) -> str:
    """The loaded interactions and item table, and the bytes of every image file: what the stage read."""
    images = sorted(str(p) for p in (data.image_paths or {}).values() if p is not None)
    return data.fingerprint() + ("+images:" + content_hash([Path(p) for p in images]) if images else "")


@dataclass
class Prepared:
    """What the data stage wrote, as the later stages read it (:func:`load_prepared`)."""

    folder: Path
    args: DataArguments
    protocol: ProtocolConfig
    data: RecData
    split: RecSplit

    def dataset(self, name: str):
        from datasets import load_from_disk

        return load_from_disk(str(self.folder / name))

    @property
    def train_examples(self):
        return self.split.train[: self.args.max_train_sequences]

    @property
    def test_examples(self):
        return self.split.test[: self.args.max_test_sequences]

    @property
    def cf(self):
        from ..item_tokens import CFEmbeddings

        if not self.args.cf_method:
            raise ConfigError(f"the data stage ({self.folder}) wrote no CF item vectors: set cf_method in data.yaml")
        return CFEmbeddings.load(self.folder / "item_cf.npz")


def load_prepared(folder: str | Path) -> Prepared:
    """The data stage's output folder: its arguments, the dataset and the frozen split (checked against it)."""
    from ..data import load_split

    folder = Path(folder)
    record = read_json(folder / "stage.json", "stage record")
    if record.get("stage") != "data":
        raise FileNotFoundError(f"{folder} is not the output of the data stage (its stage.json names "
                                f"{record.get('stage')!r})")
    config = record["config"]

    def rebuild(cls):
        prefix = cls.__name__ + "."
        return cls(**{k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)})

    args, protocol = rebuild(DataArguments), rebuild(ProtocolConfig)
    data = RecData.load(folder / "dataset.json")
    return Prepared(folder, args, protocol, data, load_split(folder / "split", data))


def write_datasets(folder: Path, data: RecData, split: RecSplit, args: DataArguments, seed: int) -> dict[str, int]:
    """The SFT, DPO and evaluation datasets of the split, saved with ``save_to_disk``; returns their row counts."""
    from ..data import build_auc_eval_dataset, build_dpo_dataset, build_ranking_eval_dataset, build_sft_dataset
    from ..data.builders import sample_pairs

    train = split.train[: args.max_train_sequences]
    test = split.test[: args.max_test_sequences]
    common = args.naming(data)
    ranking = {"prompt": args.ranking_prompt(), "permutations": args.score_permutations, "seed": seed}
    pairs = build_dpo_dataset(train, data, task=args.dpo_task, rejected=args.rejected,
                              num_rejected=args.num_rejected, seed=seed, **common)
    pairs = sample_pairs(pairs, args.max_dpo_pairs, seed)
    built = {
        "sft": build_sft_dataset(train, data, task=args.sft_task, **common),
        "dpo": pairs,
        "eval_ranking": build_ranking_eval_dataset(test, data, **common, **ranking),
        "eval_auc": build_auc_eval_dataset(test, data, **common),
    }
    if args.curve_examples and split.validation:
        built["curve_ranking"] = build_ranking_eval_dataset(split.validation[: args.curve_examples], data, **common,
                                                            **ranking)
    for name, dataset in built.items():
        dataset.save_to_disk(str(folder / name))
    return {name: len(dataset) for name, dataset in built.items()}


def main(args: DataArguments, protocol: ProtocolConfig, *, data: RecData | None = None) -> dict[str, Any]:
    """Run the data stage into ``args.output_dir``; ``data``: a dataset in memory (e.g. from
    ``load_interactions`` on DataFrames) instead of files. Returns the stage record."""
    from ..data import SyntheticConfig, build_split, cached_synthetic_movielens, freeze_split
    from ..data.loaders import load_dataset
    from ..item_tokens import cf_for_split

    if data is None and args.dataset == "custom" and not (args.tables or {}).get("interactions"):
        raise ConfigError("dataset custom needs tables: {interactions: ..., items: ..., ...} (docs/data.md)")
    if data is None:
        synthetic = SyntheticConfig(num_users=args.synthetic_num_users, num_items=args.synthetic_num_items,
                                    seed=protocol.seed)
        location = cached_synthetic_movielens(synthetic) if args.synthetic else Path(args.data_dir or ".")
        try:
            data = load_dataset(args.dataset, location, images=args.images, tables=args.tables,
                                max_users=args.max_users, seed=protocol.seed)
        except TypeError as err:
            raise ConfigError(f"data.yaml {err}") from None
    root = Path(args.output_dir).resolve().parent
    stage = Stage("data", args.output_dir, describe(args, protocol, root=root), {"data": data_fingerprint(data)},
                  OUTPUTS)

    def work(folder: Path) -> dict[str, Any]:
        split = build_split(data, protocol)
        counts = split.counts()
        if not (counts["train"] and counts["test"]):
            raise ConfigError(f"the split of {data.name} has {counts['train']} training and {counts['test']} test "
                              f"sequences ({data.num_users} users): the stages need both (more users, or other "
                              "split_ratios / min_interactions)")
        freeze_split(split, folder / "split", overwrite=True)
        data.save(folder / "dataset.json")
        rows = write_datasets(folder, data, split, args, protocol.seed)
        if args.cf_method:
            try:
                cf_for_split(data, split, args.cf_method, args.cf_dim, protocol.seed).save(folder / "item_cf.npz")
            except ValueError as err:
                raise ConfigError(f"data.yaml cf_method {args.cf_method}, cf_dim {args.cf_dim}: {err}") from None
        say(f"        {data.name}: {data.num_users} users, {data.num_items} items; sequences train/validation/test "
            f"= {counts['train']}/{counts['validation']}/{counts['test']}; rows {rows}")
        return {**data.summary(), "sequences": counts, "rows": rows}

    return run_stage(stage, work)


def parse(argv=None) -> tuple:
    return parse_stage_args((DataArguments, ProtocolConfig), argv)


if __name__ == "__main__":
    raise SystemExit(script_main(parse, main))
