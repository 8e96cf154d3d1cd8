"""Item naming in prompts and answers (title / token / both), and the rows without item tokens pinned byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hanorec_trl.data import (
    DEFAULT_TEMPLATES,
    build_auc_eval_dataset,
    build_dpo_dataset,
    build_ranking_eval_dataset,
    build_sft_dataset,
    build_split,
    load_movielens_1m,
    write_synthetic_movielens,
)
from hanorec_trl.data.prompts import ITEM_NAMINGS, item_templates
from hanorec_trl.item_tokens import ItemVocabulary


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = load_movielens_1m(write_synthetic_movielens(tmp_path_factory.mktemp("syn") / "data"))
    return data, build_split(data), ItemVocabulary(data.item_ids)


def _digest(ds) -> str:
    rows = ds.to_list() if "images" not in ds.column_names else None
    if rows is None:
        stored = ds.data.column("images").to_pylist()
        rows = ds.remove_columns("images").to_list()
        for row, images in zip(rows, stored):
            row["images"] = [Path(v["path"]).name if v["path"] else "placeholder" for v in images]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=True).encode()).hexdigest()[:16]


# Measured on the code before item tokens existed (the real-data results were built with these rows).
PINNED = {
    "sft_True": "f2dd453e840cc4ce", "dpo_True": "7d661cb3b26d31ee", "eval_list_True": "359354a3a1db4de4",
    "eval_next_True": "ac3df9297e5a0973", "auc_True": "672dc74fdd76d31b",
    "sft_False": "e8e6fdb415fb064a", "dpo_False": "c6b354dc7f5f0ce5", "eval_list_False": "bf68801d82a0e287",
    "eval_next_False": "8b3fc8a56faeb1b5", "auc_False": "bd6ef8d36216f0aa",
}


def _all_rows(data, split, with_images, **kw):
    ex = split.train[:6]
    return {
        f"sft_{with_images}": build_sft_dataset(ex, data, task="ranking+next_item+auc", with_images=with_images, **kw),
        f"dpo_{with_images}": build_dpo_dataset(ex, data, task="ranking+next_item+auc", num_rejected=2,
                                                with_images=with_images, **kw),
        f"eval_list_{with_images}": build_ranking_eval_dataset(ex, data, with_images=with_images, permutations=2,
                                                               **kw),
        f"eval_next_{with_images}": build_ranking_eval_dataset(ex, data, with_images=with_images, prompt="next_item",
                                                               **kw),
        f"auc_{with_images}": build_auc_eval_dataset(ex, data, with_images=with_images, **kw),
    }


@pytest.mark.parametrize("with_images", [True, False])
@pytest.mark.parametrize("give_vocabulary", [False, True])
def test_rows_without_item_tokens_are_byte_identical_to_before(world, with_images, give_vocabulary):
    data, split, vocab = world
    # the default (title) templates ignore a vocabulary that is passed: the rows stay the pinned ones
    kw = {"item_tokens": vocab} if give_vocabulary else {}
    for name, ds in _all_rows(data, split, with_images, **kw).items():
        assert _digest(ds) == PINNED[name], name
    assert item_templates("title", "title") == DEFAULT_TEMPLATES


def _prompt_text(row) -> str:
    content = row["prompt"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content)


def test_title_token_and_both_prompts_name_items_as_asked(world):
    data, split, vocab = world
    ex = split.train[0]
    texts = {}
    for naming in ITEM_NAMINGS:
        ds = build_sft_dataset([ex], data, with_images=False, item_tokens=vocab, templates=item_templates(naming))
        texts[naming] = _prompt_text(ds[0])
    assert len(set(texts.values())) == 3, "two namings render the same prompt"
    for item in (*ex.history, *ex.candidates):
        title, token = f'"{data.title(item)}"', vocab[item]
        assert title in texts["title"] and token not in texts["title"]
        assert token in texts["token"] and title not in texts["token"]
        assert f"{title} {token}" in texts["both"]


def test_token_answers_everywhere(world):
    data, split, vocab = world
    examples = split.train[:3]
    templates = item_templates("both", answer="token")
    sft = build_sft_dataset(examples, data, with_images=False, item_tokens=vocab, templates=templates)
    assert [r["completion"][0]["content"] for r in sft] == [vocab[e.target] for e in examples]
    dpo = build_dpo_dataset(examples, data, with_images=False, item_tokens=vocab, templates=templates)
    for row in dpo:
        assert row["chosen"][0]["content"] == vocab[row["chosen_item"]]
        assert row["rejected"][0]["content"] == vocab[row["rejected_item"]]
    ev = build_ranking_eval_dataset(examples, data, with_images=True, item_tokens=vocab, templates=templates,
                                    permutations=1)
    for row in ev:
        assert row["candidates"] == [vocab[i] for i in row["candidate_items"]]
    auc = build_auc_eval_dataset(examples, data, with_images=False, item_tokens=vocab, templates=templates)
    assert all(vocab[e.auc_item] in _prompt_text(r) for e, r in zip(examples, auc))


def test_missing_tokens_are_clear_errors(world):
    data, split, vocab = world
    with pytest.raises(ValueError, match="item_tokens="):
        build_sft_dataset(split.train[:1], data, with_images=False, templates=item_templates("token"))
    partial = {i: t for i, t in vocab.items() if i != split.train[0].target}
    with pytest.raises(ValueError, match=f"item {split.train[0].target!r} .* has no item token"):
        build_sft_dataset(split.train[:1], data, with_images=False, item_tokens=partial,
                          templates=item_templates("both", answer="token"))
    with pytest.raises(ValueError, match="prompt must be one of"):
        item_templates("tokens")
