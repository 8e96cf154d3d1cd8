"""Offline model artefacts: the Qwen2.5 tokenizer conversion, the processor, the tiny models."""

import json
from pathlib import Path

import pytest
from conftest import shared_path, solid_image

from hanorec_trl import processing
from hanorec_trl.data.prompts import assistant_message, ranking_prompt
from hanorec_trl.model_utils import language_model_lora_regex
from hanorec_trl.processing import QWEN_SPECIAL_TOKENS, qwen2_5_tokenizer, qwen2_5_vl_processor
from hanorec_trl.testing import tiny_qwen2, tiny_qwen2_5_vl

SAMPLES = [
    "The user has watched the following movies:\n \"Matrix, The (1999)\"\n",
    "Amélie (Le Fabuleux Destin d'Amélie Poulain) (2001)   tabs\tand  spaces 12345 数字 ✓",
    "<|im_start|>user\nhi<|im_end|>\n<|vision_start|><|image_pad|><|vision_end|>",
]


@pytest.fixture(scope="module")
def qwen_tok(tmp_path_factory):
    return qwen2_5_tokenizer(cache=tmp_path_factory.mktemp("tok") / "qwen2.5-tokenizer")


def test_qwen_tokenizer_matches_the_reference_conversion(qwen_tok):
    from transformers import AutoTokenizer

    reference_dir = shared_path("models", "qwen2.5-tokenizer")
    reference = AutoTokenizer.from_pretrained(str(reference_dir))
    assert len(qwen_tok) == len(reference) == 151665
    ours = json.loads(qwen_tok.backend_tokenizer.to_str())["model"]
    theirs = json.loads((reference_dir / "tokenizer.json").read_text())["model"]
    assert ours["vocab"] == theirs["vocab"]
    as_pairs = lambda merges: [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]  # noqa: E731
    assert as_pairs(ours["merges"]) == as_pairs(theirs["merges"])
    for text in SAMPLES:
        assert qwen_tok(text)["input_ids"] == reference(text)["input_ids"], text
    messages, _ = ranking_prompt(["A (1999)"], ["B", "C"], [solid_image(0)], [solid_image(1), solid_image(2)])
    for convo, generation in ((messages, True), (messages + assistant_message('"B"'), False)):
        assert qwen_tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=generation) == (
            reference.apply_chat_template(convo, tokenize=False, add_generation_prompt=generation)
        )


def test_qwen_tokenizer_special_ids_and_cache(qwen_tok, monkeypatch):
    # the second call loads the converted tokenizer from its cache folder instead of converting again
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of loading the cache")

    monkeypatch.setattr(processing, "assemble_qwen_tokenizer", no_conversion)
    cached = qwen2_5_tokenizer(cache=Path(qwen_tok.name_or_path))
    assert cached("Heat (1995)")["input_ids"] == qwen_tok("Heat (1995)")["input_ids"]
    ids = [qwen_tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert ids == list(range(151643, 151665))
    assert qwen_tok.pad_token == "<|endoftext|>" and qwen_tok.eos_token == "<|im_end|>"
    assert qwen_tok.padding_side == "left"
    assert qwen_tok.decode(qwen_tok("Heat (1995)")["input_ids"]) == "Heat (1995)"


def test_processor_expands_one_block_per_image(tiny_tok):
    processor = qwen2_5_vl_processor(tiny_tok, min_pixels=28 * 28, max_pixels=56 * 56)
    messages, images = ranking_prompt(["A"], ["B", "C"], [solid_image(0)], [solid_image(1), solid_image(2)])
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = processor(images=images, text=[text], return_tensors="pt")
    pad = tiny_tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((out["input_ids"] == pad).sum()) == 3 * 4  # 56x56 -> 4x4 patches -> 2x2 merged tokens each
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]] * 3


def test_tiny_models_and_lora_regex(tiny_tok):
    import re

    vlm, lm = tiny_qwen2_5_vl(tiny_tok), tiny_qwen2(tiny_tok)
    assert vlm.config.get_text_config().vocab_size == len(tiny_tok) == lm.config.vocab_size
    names = [n for n, _ in vlm.named_modules()]
    matched = [n for n in names if re.fullmatch(language_model_lora_regex(vlm), n)]
    assert matched and all("language_model" in n for n in matched)
    assert not any(re.fullmatch(language_model_lora_regex(vlm), n) for n in names if ".visual." in n)
    # same seed, same weights
    first, second = tiny_qwen2(tiny_tok, seed=3), tiny_qwen2(tiny_tok, seed=3)
    assert all((a == b).all() for a, b in zip(first.parameters(), second.parameters(), strict=True))
