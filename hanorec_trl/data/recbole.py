"""The frozen split as RecBole atomic files, so that RecBole's baselines train and test on exactly these sequences."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_folder
from .protocol import SPLIT_NAMES, RecSplit, check_output_folder
from .recdata import RecData

__all__ = ["export_recbole"]

_RECBOLE_MARKER = "hanorec_recbole.json"


def _token(value: str) -> str:
    """A RecBole token: no tabs or newlines (the field separator and row separator)."""
    return " ".join(value.split())


def export_recbole(
    split: RecSplit, data: RecData, out_dir: str | Path, *, dataset_name: str | None = None, overwrite: bool = False
) -> Path:
    """Write ``split`` as RecBole atomic files so SASRec/GRU4Rec train and test on the same sequences.

    Files in ``out_dir`` (named after ``dataset_name``, default the split's dataset name):

    * ``<name>.train.inter``, ``<name>.valid.inter``, ``<name>.test.inter``: one row per example,
      ``user_id:token  item_id_list:token_seq  item_id:token`` (history, space-separated, oldest first; target);
      RecBole reads them with ``benchmark_filename: [train, valid, test]`` and then uses exactly these sequences.
    * ``<name>.item``: ``item_id:token  title:token_seq`` for every item.
    * ``<name>.yaml``: the RecBole settings for these files.

    RecBole samples its own negatives (``eval_args.mode``); the stored candidates are in the frozen JSONL.
    """
    name = dataset_name or split.dataset_name
    out = Path(out_dir)
    check_output_folder(out, overwrite, _RECBOLE_MARKER)
    with atomic_folder(out, replace=True) as tmp:
        for part, suffix in zip(SPLIT_NAMES, ("train", "valid", "test")):
            examples = dict(split.parts())[part]
            lines = ["user_id:token\titem_id_list:token_seq\titem_id:token\n"]
            lines += [
                f"{_token(ex.user)}\t{' '.join(_token(i) for i in ex.history)}\t{_token(ex.target)}\n"
                for ex in examples
            ]
            (tmp / f"{name}.{suffix}.inter").write_text("".join(lines), encoding="utf-8")
        lines = ["item_id:token\ttitle:token_seq\n"]
        lines += [f"{_token(item)}\t{_token(data.titles[item])}\n" for item in data.item_ids]
        (tmp / f"{name}.item").write_text("".join(lines), encoding="utf-8")
        settings = (
            f"# RecBole settings for the hanorec_trl split of {split.dataset_name} "
            f"(fingerprint {split.fingerprint[:16]})\n"
            "USER_ID_FIELD: user_id\n"
            "ITEM_ID_FIELD: item_id\n"
            "LIST_SUFFIX: _list\n"
            f"MAX_ITEM_LIST_LENGTH: {split.config.sequence_length - 1}\n"
            "benchmark_filename: [train, valid, test]\n"
            "load_col:\n"
            "  inter: [user_id, item_id_list, item_id]\n"
            "  item: [item_id, title]\n"
            "eval_args:\n"
            "  order: TO\n"
            "  mode: full\n"
        )
        (tmp / f"{name}.yaml").write_text(settings, encoding="utf-8")
        marker = {"dataset": split.dataset_name, "fingerprint": split.fingerprint, "counts": split.counts()}
        (tmp / _RECBOLE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
