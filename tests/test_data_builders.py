"""SFT / DPO / evaluation datasets: answers, item ids, images stored as paths, and rendering by the processor."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from hanorec_trl.data import (
    DEFAULT_TEMPLATES,
    NO,
    YES,
    PromptTemplates,
    build_auc_eval_dataset,
    build_dpo_dataset,
    build_ranking_eval_dataset,
    build_sft_dataset,
    build_split,
    load_movielens_1m,
    write_synthetic_movielens,
)
from hanorec_trl.data.recdata import PLACEHOLDER_COLOR


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_synthetic_movielens(tmp_path_factory.mktemp("syn") / "data")


@pytest.fixture(scope="module")
def data(folder):
    return load_movielens_1m(folder)


@pytest.fixture(scope="module")
def split(data):
    return build_split(data)


def _image_parts(messages) -> int:
    return sum(1 for m in messages for p in m["content"] if isinstance(p, dict) and p["type"] == "image")


def test_sft_ranking_rows(data, split):
    examples = split.train[:12]
    ds = build_sft_dataset(examples, data)
    assert len(ds) == 12 and set(ds.column_names) >= {"prompt", "completion", "images", "sequence_id", "task"}
    for ex, row in zip(examples, ds):
        assert row["completion"][0]["content"][0]["text"] == DEFAULT_TEMPLATES.answer_text(data.title(ex.target))
        assert _image_parts(row["prompt"]) == len(row["images"]) == 5 + 10
        text = "".join(p["text"] or "" for p in row["prompt"][0]["content"])
        assert all(f'"{data.title(i)}"' in text for i in (*ex.history, *ex.candidates))
        assert isinstance(row["images"][0], Image.Image)
    # files on disk are stored as paths, not re-encoded bytes
    stored = ds.data.column("images")[0].as_py()
    assert all(v["bytes"] is None and v["path"].endswith(".jpg") for v in stored)
    assert stored[0]["path"] == str(data.image_path(examples[0].history[0]).resolve())


def test_sft_auc_balanced_and_both(data, split):
    ds = build_sft_dataset(split.train, data, task="auc")
    answers = [row["completion"][0]["content"][0]["text"] for row in ds]
    assert set(answers) == {YES, NO} and abs(answers.count(YES) - answers.count(NO)) <= 1
    assert all(_image_parts(r["prompt"]) == len(r["images"]) == 5 + 3 + 1 for r in ds.select(range(4)))
    both = build_sft_dataset(split.train[:3], data, task="both")
    assert both["task"] == ["ranking", "auc"] * 3


def test_dpo_ranking_rows_carry_item_ids(data, split):
    examples = split.train[:8]
    ds = build_dpo_dataset(examples, data, num_rejected=3)
    assert len(ds) == 24
    for k, row in enumerate(ds):
        ex = examples[k // 3]
        assert row["chosen_item"] == ex.target and row["rejected_item"] in ex.candidates
        assert row["rejected_item"] != ex.target
        assert row["chosen"][0]["content"][0]["text"] == f'"{data.title(ex.target)}"'
        assert row["rejected"][0]["content"][0]["text"] == f'"{data.title(row["rejected_item"])}"'
    for k in range(8):  # three distinct negatives per example
        assert len({r["rejected_item"] for r in ds.select(range(3 * k, 3 * k + 3))}) == 3
    with pytest.raises(ValueError, match="num_rejected=10"):
        build_dpo_dataset(examples, data, num_rejected=10)


def _first_negative(ex):
    return next(c for c in ex.candidates if c != ex.target)


def _listed_titles(row):
    """The candidate titles in the order the ranking prompt lists them (text-only rows)."""
    text = row["prompt"][0]["content"]
    block = text.split("Below are the candidate movies:\n", 1)[1]
    return [line.strip('"') for line in block.strip().splitlines()]


def test_random_rejected_is_independent_of_list_order(data, split):
    """The paper's rejected item is a random unobserved item (Sec. 2): not the first-listed negative (which the old
    builder took in every row, tying DPO pairs to list position), never the target, reproducible per seed."""
    examples = split.train + split.validation + split.test  # ~250 examples
    ds = build_dpo_dataset(examples, data, with_images=False, seed=3)
    rejected = ds["rejected_item"]
    assert all(r != ex.target and r in ex.candidates for r, ex in zip(rejected, examples))
    first = np.mean([r == _first_negative(ex) for r, ex in zip(rejected, examples)])
    assert 0.04 < first < 0.2  # 1/9 expected; the old builder: 1.0
    # the slot of the rejected item in the prompt's list is uniform too (the list is shuffled per example)
    slots = [_listed_titles(row).index(data.title(r)) for row, r in zip(ds, rejected)]
    assert 0.04 < np.mean(np.asarray(slots) == 0) < 0.2
    assert all(sorted(_listed_titles(row)) == sorted(data.title(c) for c in ex.candidates)
               for row, ex in zip(ds.select(range(10)), examples))
    again = build_dpo_dataset(examples, data, with_images=False, seed=3)
    assert again["rejected_item"] == rejected and again["prompt"] == ds["prompt"]
    other = build_dpo_dataset(examples, data, with_images=False, seed=4)["rejected_item"]
    assert np.mean([a != b for a, b in zip(other, rejected)]) > 0.7
    # the draw of one example does not depend on which other examples are built with it
    assert build_dpo_dataset(examples[5:6], data, with_images=False, seed=3)["rejected_item"] == [rejected[5]]


def test_all_and_hard_rejected(data, split):
    examples = split.train[:6]
    every = build_dpo_dataset(examples, data, rejected="all", with_images=False)
    assert len(every) == 6 * 9
    for k, ex in enumerate(examples):
        rows = every.select(range(9 * k, 9 * k + 9))
        assert sorted(rows["rejected_item"]) == sorted(c for c in ex.candidates if c != ex.target)
        assert len(set(map(str, rows["prompt"]))) == 1  # one shuffled prompt per example, whatever is rejected

    # hard: the negatives most similar to the target under the given similarity (here: closest numeric id)
    def similarity(target, negatives):
        return [-abs(int(n) - int(target)) for n in negatives]

    hard = build_dpo_dataset(examples, data, rejected="hard", num_rejected=2, similarity=similarity, with_images=False)
    for k, ex in enumerate(examples):
        negatives = sorted((c for c in ex.candidates if c != ex.target), key=lambda n: abs(int(n) - int(ex.target)))
        assert hard["rejected_item"][2 * k : 2 * k + 2] == negatives[:2]
    with pytest.raises(ValueError, match="needs similarity"):
        build_dpo_dataset(examples, data, rejected="hard")
    with pytest.raises(ValueError, match="rejected must be one of"):
        build_dpo_dataset(examples, data, rejected="first")
    with pytest.raises(ValueError, match="must return 9 finite numbers"):
        build_dpo_dataset(examples, data, rejected="hard", similarity=lambda t, n: [0.0])


def test_next_item_rows_have_no_candidate_list(data, split):
    ex = split.train[0]
    sft = build_sft_dataset([ex], data, task="next_item+auc", with_images=False)
    assert sft["task"] == ["next_item", "auc"]
    text = sft[0]["prompt"][0]["content"]
    assert all(data.title(i) in text for i in ex.history)
    assert not any(data.title(c) in text for c in ex.candidates if c != ex.target)
    assert sft[0]["completion"][0]["content"] == f'"{data.title(ex.target)}"'
    vision = build_sft_dataset([ex], data, task="next_item")
    assert _image_parts(vision[0]["prompt"]) == len(vision[0]["images"]) == 5
    dpo = build_dpo_dataset([ex], data, task="next_item", rejected="all", with_images=False)
    assert len(dpo) == 9 and len(set(map(str, dpo["prompt"]))) == 1
    ranking = build_ranking_eval_dataset([ex], data, prompt="next_item", with_images=False)
    assert len(ranking) == 1 and ranking[0]["prompt_format"] == "next_item"
    assert ranking[0]["candidate_items"] == list(ex.candidates) and ranking[0]["target_index"] == ex.target_index
    with pytest.raises(ValueError, match="task must be one of"):
        build_sft_dataset([ex], data, task="next_item+next_item")


def test_evaluation_rows_in_every_cyclic_order(data, split):
    ex = split.test[0]
    rows = build_ranking_eval_dataset([ex], data, with_images=False)  # default: every cyclic shift
    assert len(rows) == 10 and set(rows["sequence_id"]) == {ex.sequence_id}
    # every candidate sits in every slot exactly once, and the prompt lists them in the row's order
    for slot in range(10):
        assert sorted(r["candidate_items"][slot] for r in rows) == sorted(ex.candidates)
    for r in rows:
        assert _listed_titles(r) == [data.title(c) for c in r["candidate_items"]]
        assert r["candidate_items"][r["target_index"]] == ex.target
    assert rows[0]["candidate_items"] == list(ex.candidates)  # shift 0 = the stored order
    some = build_ranking_eval_dataset([ex], data, with_images=False, permutations=3, seed=1)
    assert len(some) == 3 and len({tuple(r) for r in some["candidate_items"]}) == 3
    assert len(build_ranking_eval_dataset([ex], data, with_images=False, permutations=1)) == 1


def test_dpo_auc_rows_opposite_answer_and_documented_items(data, split):
    examples = split.train[:20]
    ds = build_dpo_dataset(examples, data, task="auc")
    for ex, row in zip(examples, ds):
        chosen, rejected = row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"]
        assert {chosen, rejected} == {YES, NO}
        if ex.auc_label == 1:
            assert chosen == YES and (row["chosen_item"], row["rejected_item"]) == (ex.target, ex.auc_unwatched[0])
        else:
            assert chosen == NO and (row["chosen_item"], row["rejected_item"]) == (ex.history[-1], ex.auc_item)


def test_text_only_variant(data, split):
    ds = build_dpo_dataset(split.train[:4], data, with_images=False)
    assert "images" not in ds.column_names
    row = ds[0]
    assert isinstance(row["prompt"][0]["content"], str) and isinstance(row["chosen"][0]["content"], str)
    assert data.title(split.train[0].history[0]) in row["prompt"][0]["content"]
    text_data = load_movielens_1m(data.sources["ratings"].rsplit("/", 1)[0], images=False)
    with pytest.raises(ValueError, match="loaded with images=False"):
        build_sft_dataset(split.train[:2], text_data)
    assert len(build_sft_dataset(split.train[:2], text_data, with_images=False)) == 2


def test_evaluation_rows(data, split):
    ranking = build_ranking_eval_dataset(split.test, data, permutations=1)
    row, ex = ranking[0], split.test[0]
    assert row["candidate_items"] == list(ex.candidates) and row["target_index"] == ex.target_index
    assert row["candidates"][row["target_index"]] == f'"{data.title(ex.target)}"'
    assert len(row["images"]) == 15
    auc = build_auc_eval_dataset(split.test, data, with_images=False)
    assert auc["label"] == [e.auc_label for e in split.test] and auc["item"] == [e.auc_item for e in split.test]


def test_missing_poster_is_a_stored_placeholder(tmp_path, folder, split):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("ratings.dat", "movies.dat"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "posters").mkdir()
    ex = split.train[0]
    for item in ex.history[1:]:  # every poster of this example but the first history item's
        (broken / "posters" / f"{item}.jpg").write_bytes((folder / "posters" / f"{item}.jpg").read_bytes())
    with pytest.warns(UserWarning, match="items have no image file"):
        partial = load_movielens_1m(broken)
    ds = build_sft_dataset([ex], partial)
    stored = ds.data.column("images")[0].as_py()
    assert stored[0]["path"] is None and stored[0]["bytes"].startswith(b"\x89PNG")
    assert stored[1]["path"] is not None
    assert ds[0]["images"][0].getpixel((5, 5)) == PLACEHOLDER_COLOR


def test_system_prompt_replaces_the_templates_default(data, split, tiny_tok):
    ex = split.train[0]
    plain = build_sft_dataset([ex], data, task="next_item", with_images=False)[0]["prompt"]
    empty = build_sft_dataset([ex], data, task="next_item", with_images=False,
                              templates=PromptTemplates(system=""))[0]["prompt"]
    assert [m["role"] for m in plain] == ["user"] and empty[0] == {"role": "system", "content": ""}
    default = tiny_tok.apply_chat_template(plain, tokenize=False)
    suppressed = tiny_tok.apply_chat_template(empty, tokenize=False)
    assert "You are a helpful assistant" in default and "You are a helpful assistant" not in suppressed
    vision = build_sft_dataset([ex], data, task="next_item", templates=PromptTemplates(system="Be brief."))[0]
    assert vision["prompt"][0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}


def test_templates_can_be_overridden(data, split):
    templates = PromptTemplates(noun="video", answer="Answer: {title}")
    ds = build_sft_dataset(split.train[:1], data, with_images=False, templates=templates)
    assert "following videos" in ds[0]["prompt"][0]["content"]
    assert ds[0]["completion"][0]["content"] == f"Answer: {data.title(split.train[0].target)}"


def test_prompts_render_through_the_tiny_processor(tiny_tok, tiny_processor, data, split):
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    pad = tiny_tok.convert_tokens_to_ids("<|image_pad|>")
    dpo = build_dpo_dataset(split.train[:2], data)
    row = dpo[0]
    text = tiny_processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 15
    encoded = tiny_processor(text=[text], images=row["images"], return_tensors="pt")
    assert int((encoded["input_ids"] == pad).sum()) == 15 * 4  # 56x56 posters -> 4 image tokens each
    assert encoded["image_grid_thw"].shape[0] == 15

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = DataCollatorForVisionPreference(processor=tiny_processor)([dpo[0], dpo[1]])
    # prompt (and images) repeated for chosen and rejected: 2 rows x 2 halves x 15 images x 4 tokens
    assert int((batch["input_ids"] == pad).sum()) == 2 * 2 * 15 * 4
    assert batch["image_grid_thw"].shape[0] == 2 * 2 * 15

    sft = build_sft_dataset(split.train[:2], data, task="auc")
    collator = DataCollatorForVisionLanguageModeling(processor=tiny_processor, completion_only_loss=True)
    batch = collator([sft[0], sft[1]])
    assert int((batch["input_ids"] == pad).sum()) == 2 * 9 * 4
    answers = [tiny_tok.decode(ids[labels != -100]) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    assert [a.split("<|im_end|>")[0] for a in answers] == [
        sft[0]["completion"][0]["content"][0]["text"],
        sft[1]["completion"][0]["content"][0]["text"],
    ]
