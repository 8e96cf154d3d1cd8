"""Prompt-once likelihood scoring equals naive per-candidate scoring and scores exactly TRL's completion tokens."""

import numpy as np
import pytest
import torch
from conftest import solid_image

from hanorec_trl.data.prompts import NO, YES, assistant_message, auc_prompt, ranking_prompt
from hanorec_trl.evaluation import scoring
from hanorec_trl.evaluation.scoring import score_candidates, tokenize_candidates

TOL = 1e-4  # fp32


def _vision_rows(n_rows=3, n_cands=4):
    """Rows with different history lengths (so prompts pad differently and rope deltas differ)."""
    rows = []
    for r in range(n_rows):
        history = [f"Story {r} {i} (199{i})" for i in range(1 + r)]
        cands = [f"Night {r}{j}" + " dark" * j for j in range(n_cands)]
        msgs, imgs = ranking_prompt(
            history,
            cands,
            [solid_image(10 * r + i) for i in range(len(history))],
            [solid_image(50 + j) for j in range(n_cands)],
        )
        rows.append((msgs, imgs, [f'"{c}"' for c in cands]))
    return rows


def _text_rows(n_rows=3):
    rows = []
    for r in range(n_rows):
        msgs, _ = ranking_prompt([f"Love story {r} {i}" for i in range(1 + 2 * r)], ["Alien", "Big city life", "Heat"])
        rows.append((msgs, None, ['"Alien"', '"Big city life"', '"Heat"']))
    return rows


def _reference_scores(model, processing_class, msgs, imgs, cands):
    """Independent reference: each candidate alone, unpadded, the model computing its own positions."""
    item = tokenize_candidates(processing_class, msgs, cands, imgs)
    enc = scoring.encode_prompts(processing_class, [item])
    out = []
    with torch.no_grad():
        for ids in item.completion_ids:
            comp = torch.tensor([ids])
            inputs = {k: v for k, v in enc.items()}
            inputs["input_ids"] = torch.cat([enc["input_ids"], comp], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            if "mm_token_type_ids" in enc:
                inputs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(comp)], dim=1)
            logits = model(**inputs).logits[0].float()
            p = enc["input_ids"].shape[1]
            logp = torch.log_softmax(logits[p - 1 : -1], -1).gather(-1, comp[0].unsqueeze(-1)).squeeze(-1)
            out.append(logp.numpy())
    return out


def _score(model, processing_class, rows, **kw):
    return score_candidates(
        model, processing_class, [r[0] for r in rows], [r[2] for r in rows], [r[1] for r in rows], progress=False, **kw
    )


def _assert_close(a, b, tol=TOL):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert len(row_a) == len(row_b)
        for x, y in zip(row_a, row_b):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, atol=tol, rtol=0)


@pytest.mark.parametrize("kind", ["vision", "text"])
def test_prompt_once_equals_naive_and_reference(kind, tiny_vlm, tiny_lm, tiny_processor, tiny_tok):
    model, proc, rows = (
        (tiny_vlm, tiny_processor, _vision_rows()) if kind == "vision" else (tiny_lm, tiny_tok, _text_rows())
    )
    once = _score(model, proc, rows, batch_size=3)  # one batch: prompts of different lengths, left-padded together
    naive = _score(model, proc, rows, method="naive")
    _assert_close(once, naive)
    reference = [_reference_scores(model, proc, *r) for r in rows]
    _assert_close(once, reference)
    # batch size does not change the scores
    _assert_close(_score(model, proc, rows, batch_size=2), once)
    # the candidates really differ, so equality above is not trivial
    assert len({round(float(s.sum()), 3) for s in once[0]}) > 1


def test_wrong_candidate_positions_would_be_caught(tiny_vlm, tiny_processor, monkeypatch):
    """The equality tests above are sensitive to M-RoPE bugs: two plausible mistakes exceed their tolerance."""
    rows = _vision_rows(n_rows=2)
    good = _score(tiny_vlm, tiny_processor, rows, batch_size=2)
    original = scoring.continuation_position_ids
    bugs = {
        "rope delta ignored": lambda n, d, length: original(n, None, length),
        "positions restart at 0": lambda n, d, length: original(torch.zeros_like(n), d, length),
    }
    for bug, fn in bugs.items():
        monkeypatch.setattr(scoring, "continuation_position_ids", fn)
        wrong = _score(tiny_vlm, tiny_processor, rows, batch_size=2)
        diff = max(np.abs(a - b).max() for ra, rb in zip(good, wrong) for a, b in zip(ra, rb))
        assert diff > 3 * TOL, bug


def test_completion_tokens_match_trl_vision_collator(tiny_processor):
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    msgs, imgs, cands = _vision_rows(n_rows=1)[0]
    item = tokenize_candidates(tiny_processor, msgs, cands, imgs)
    example = {
        "prompt": msgs,
        "images": imgs,
        "chosen": assistant_message(cands[0]),
        "rejected": assistant_message(cands[2]),
    }
    batch = DataCollatorForVisionPreference(tiny_processor)([example])
    for row, j in ((0, 0), (1, 2)):
        trl_completion = batch["input_ids"][row][batch["completion_mask"][row].bool()].tolist()
        assert trl_completion == item.completion_ids[j]
    tok = tiny_processor.tokenizer
    assert tok.decode(item.completion_ids[0]) == cands[0] + "<|im_end|>\n"


def test_completion_tokens_text_tokenizer(tiny_tok):
    msgs, _, cands = _text_rows(1)[0]
    item = tokenize_candidates(tiny_tok, msgs, cands)
    assert [tiny_tok.decode(ids) for ids in item.completion_ids] == [c + "<|im_end|>\n" for c in cands]
    assert tiny_tok.decode(item.prompt_ids).endswith("<|im_start|>assistant\n")
    # plain-string prompts: the completion gets the EOS token, as TRL appends it
    item = tokenize_candidates(tiny_tok, "Which movie?", [" Heat"])
    assert tiny_tok.decode(item.completion_ids[0]) == " Heat<|im_end|>"


def test_peft_adapter_loaded_and_merged(tiny_vlm, tiny_processor):
    from peft import LoraConfig, get_peft_model

    from hanorec_trl.model_utils import language_model_lora_regex

    rows = _vision_rows(n_rows=2)
    base = _score(tiny_vlm, tiny_processor, rows, batch_size=2)
    peft_model = get_peft_model(
        tiny_vlm, LoraConfig(r=4, lora_alpha=8, target_modules=language_model_lora_regex(tiny_vlm))
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.train()
    loaded = _score(peft_model, tiny_processor, rows, batch_size=2)
    assert peft_model.training, "training mode must be restored"
    _assert_close(loaded, _score(peft_model, tiny_processor, rows, method="naive"))
    assert max(np.abs(a - b).max() for ra, rb in zip(loaded, base) for a, b in zip(ra, rb)) > 1e-3
    merged = peft_model.merge_and_unload()
    _assert_close(_score(merged, tiny_processor, rows, batch_size=2), loaded, tol=1e-3)


def test_auc_prompt_yes_no_and_errors(tiny_lm, tiny_tok):
    msgs, _ = auc_prompt(["Heat"], ["Alien"], "Big city life")
    once = score_candidates(tiny_lm, tiny_tok, [msgs], [[YES, NO]], progress=False)
    naive = score_candidates(tiny_lm, tiny_tok, [msgs], [[YES, NO]], progress=False, method="naive")
    _assert_close(once, naive)
    with pytest.raises(ValueError, match="method must be one of"):
        score_candidates(tiny_lm, tiny_tok, [msgs], [[YES]], method="fast")
    with pytest.raises(ValueError, match="images were given but the processing class is a tokenizer"):
        score_candidates(tiny_lm, tiny_tok, [msgs], [[YES]], [[solid_image(0)]])
    with pytest.raises(ValueError, match="row 1: a scoring row needs at least one candidate"):
        score_candidates(tiny_lm, tiny_tok, [msgs, msgs], [[YES], []])


def test_image_count_mismatch_names_the_row(tiny_vlm, tiny_processor):
    rows = _vision_rows(n_rows=2)
    images = [rows[0][1], rows[1][1][:-1]]  # row 1 lost an image
    with pytest.raises(ValueError, match="row 1: .*images"):
        score_candidates(tiny_vlm, tiny_processor, [r[0] for r in rows], [r[2] for r in rows], images, progress=False)
