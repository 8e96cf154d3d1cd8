"""evaluate_recommender end to end (tiny models), AUC conventions, JSON output, and the training callback."""

import json
import math

import numpy as np
import pytest
from conftest import solid_image

from hanorec_trl.data.prompts import NO, YES, auc_prompt, ranking_prompt
from hanorec_trl.evaluation import (
    RecEvalConfig,
    RecommendationEvalCallback,
    auc_score,
    evaluate_recommender,
    score_candidates,
    target_rank,
)
from hanorec_trl.evaluation import evaluate as evaluate_module


def _ranking_rows(with_images, n=4, n_cands=5):
    rows = []
    for r in range(n):
        history = [f"Heat {r} {i}" for i in range(2)]
        cands = [f"Night {j}" + " city" * ((r + j) % 3) for j in range(n_cands)]
        kwargs = {}
        if with_images:
            kwargs = dict(
                history_images=[solid_image(r + i) for i in range(2)],
                candidate_images=[solid_image(40 + j) for j in range(n_cands)],
            )
        msgs, imgs = ranking_prompt(history, cands, **kwargs)
        rows.append(
            {
                "prompt": msgs,
                "images": imgs,
                "candidates": [f'"{c}"' for c in cands],
                "candidate_items": [str(j) for j in range(n_cands)],
                "target_index": r % n_cands,
            }
        )
    return rows


def _auc_rows(with_images, labels=(1, 0, 1, 0, 1)):
    rows = []
    for r, label in enumerate(labels):
        kwargs = {}
        if with_images:
            kwargs = dict(
                watched_images=[solid_image(r)], unwatched_images=[solid_image(9)], target_image=solid_image(20 + r)
            )
        msgs, imgs = auc_prompt([f"Love {r}"], ["Alien"], f"Target {r}" + " war" * r, **kwargs)
        rows.append({"prompt": msgs, "images": imgs, "label": label, "item": str(r)})
    return rows


@pytest.mark.parametrize("kind", ["vision", "text"])
def test_evaluate_recommender_likelihood(kind, tiny_vlm, tiny_processor, tiny_lm, tiny_tok, tmp_path):
    model, proc = (tiny_vlm, tiny_processor) if kind == "vision" else (tiny_lm, tiny_tok)
    ranking, auc = _ranking_rows(kind == "vision"), _auc_rows(kind == "vision")
    out = tmp_path / "eval.json"
    metrics = evaluate_recommender(model, proc, ranking, auc, config=RecEvalConfig(progress=False), output_path=out)
    # default K = (1, 3, 5, 10) limited to the 5 candidates
    assert {"hr@1", "hr@3", "hr@5", "ndcg@5", "auc", "binary_auc"} <= set(metrics) and "hr@10" not in metrics
    # recompute from the raw scores
    scores = score_candidates(
        model,
        proc,
        [r["prompt"] for r in ranking],
        [r["candidates"] for r in ranking],
        [r["images"] for r in ranking],
        progress=False,
    )
    ranks = [target_rank([s.sum() for s in row], r["target_index"]) for row, r in zip(scores, ranking)]
    assert metrics["hr@3"] == pytest.approx(np.mean([k <= 3 for k in ranks]))
    assert metrics["ndcg@3"] == pytest.approx(np.mean([1 / math.log2(k + 1) if k <= 3 else 0 for k in ranks]))
    yn = score_candidates(
        model, proc, [r["prompt"] for r in auc], [[YES, NO]] * len(auc), [r["images"] for r in auc], progress=False
    )
    p_yes = [1 / (1 + math.exp(-(row[0].sum() - row[1].sum()))) for row in yn]
    assert metrics["auc"] == pytest.approx(auc_score([r["label"] for r in auc], p_yes))
    saved = json.loads(out.read_text())
    assert saved["metrics"]["hr@3"] == metrics["hr@3"]
    assert saved["per_row"]["ranking"]["ranks"] == ranks
    assert saved["config"]["ranking_mode"] == "likelihood"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        evaluate_recommender(model, proc, ranking, config=RecEvalConfig(progress=False), output_path=out)


def test_vision_cache_gives_the_same_results(tiny_vlm, tiny_processor, tmp_path):
    ranking = _ranking_rows(True)
    ranking = ranking + [dict(r) for r in ranking]  # every image appears twice across the rows
    tower_images = []
    handle = tiny_vlm.model.visual.register_forward_hook(
        lambda m, args, kwargs, out: tower_images.append(
            int((args[1] if len(args) > 1 else kwargs["grid_thw"]).shape[0])),
        with_kwargs=True)
    results, runs = {}, {}
    for cached in (False, True):
        tower_images.clear()
        out = tmp_path / f"{cached}.json"
        evaluate_recommender(tiny_vlm, tiny_processor, ranking, config=RecEvalConfig(progress=False,
                             vision_cache=cached), output_path=out)
        results[cached], runs[cached] = json.loads(out.read_text()), sum(tower_images)
    handle.remove()
    assert results[True]["per_row"]["ranking"]["ranks"] == results[False]["per_row"]["ranking"]["ranks"]
    for key in ("hr@1", "hr@3", "ndcg@3"):
        assert results[True]["metrics"][key] == results[False]["metrics"][key]
    cache = results[True]["per_row"]["vision_cache"]
    assert runs[True] == cache["images"] == cache["misses"] and cache["hits"] > 0
    assert 0 < runs[True] < runs[False]  # each distinct image once instead of once per prompt


def test_auc_first_token_and_binary(tiny_lm, tiny_tok):
    rows = _auc_rows(False)
    seq = evaluate_recommender(tiny_lm, tiny_tok, auc_rows=rows, config=RecEvalConfig(progress=False))
    first = evaluate_recommender(
        tiny_lm, tiny_tok, auc_rows=rows, config=RecEvalConfig(progress=False, auc_probability="first_token")
    )
    yn = score_candidates(tiny_lm, tiny_tok, [r["prompt"] for r in rows], [[YES, NO]] * 5, progress=False)
    labels = [r["label"] for r in rows]
    p_first = [1 / (1 + math.exp(-(row[0][0] - row[1][0]))) for row in yn]
    assert first["auc"] == pytest.approx(auc_score(labels, p_first))
    preds = np.array([p > 0.5 for p in p_first], dtype=int)
    tpr, tnr = preds[np.array(labels) == 1].mean(), 1 - preds[np.array(labels) == 0].mean()
    assert first["binary_auc"] == pytest.approx((tpr + tnr) / 2)
    assert 0 <= seq["auc"] <= 1


def test_generation_mode_keeps_failures_in_denominator(tiny_lm, tiny_tok, monkeypatch):
    rows = _ranking_rows(False, n=4)
    answers = [rows[0]["candidates"][0], "gibberish", rows[2]["candidates"][1] + " " + rows[2]["candidates"][2], "???"]
    monkeypatch.setattr(evaluate_module, "generate_answers", lambda *a, **k: answers)
    m = evaluate_recommender(
        tiny_lm, tiny_tok, rows, config=RecEvalConfig(ranking_mode="generation", ks=(1, 3), progress=False)
    )
    # row 0: target 0 listed first (rank 1); row 2: target 2 listed second (rank 2); rows 1, 3: parse failures
    assert m["parse_failure_rate"] == 0.5
    assert m["hr@1"] == 0.25 and m["hr@3"] == 0.5
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 4)


def test_generation_mode_runs_on_a_vlm(tiny_vlm, tiny_processor):
    m = evaluate_recommender(
        tiny_vlm,
        tiny_processor,
        _ranking_rows(True, n=2),
        config=RecEvalConfig(ranking_mode="generation", max_new_tokens=4, progress=False),
    )
    assert 0 <= m["parse_failure_rate"] <= 1 and m["num_ranking_rows"] == 2


def test_bad_rows_and_config(tiny_lm, tiny_tok):
    rows = _ranking_rows(False, n=2)
    with pytest.raises(ValueError, match="ranking row 1: target_index 7 outside its 5 candidates"):
        evaluate_recommender(tiny_lm, tiny_tok, rows[:1] + [{**rows[1], "target_index": 7}])
    with pytest.raises(ValueError, match="ranking row 0: missing \\['candidates'\\]"):
        evaluate_recommender(tiny_lm, tiny_tok, [{"prompt": rows[0]["prompt"], "target_index": 0}])
    with pytest.raises(ValueError, match="K=10 exceeds the 5 candidates"):
        evaluate_recommender(tiny_lm, tiny_tok, rows, config=RecEvalConfig(ks=(10,), progress=False))
    with pytest.raises(ValueError, match="all 2 labels are positive"):
        evaluate_recommender(
            tiny_lm, tiny_tok, auc_rows=_auc_rows(False, labels=(1, 1)), config=RecEvalConfig(progress=False)
        )
    with pytest.raises(ValueError, match="ranking_mode must be one of"):
        RecEvalConfig(ranking_mode="beam")
    with pytest.raises(ValueError, match="no ranking rows and no AUC rows"):
        evaluate_recommender(tiny_lm, tiny_tok)


def test_callback_logs_during_trl_training(tiny_lm, tiny_tok, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from hanorec_trl.data.prompts import assistant_message
    from hanorec_trl.testing import tiny_qwen2

    rank_rows = _ranking_rows(False, n=2)
    train = Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "chosen": assistant_message(r["candidates"][0], with_images=False),
                "rejected": assistant_message(r["candidates"][1], with_images=False),
            }
            for r in rank_rows
        ]
    )
    args = DPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-3,
        gradient_checkpointing=False,
    )
    trainer = DPOTrainer(
        model=tiny_lm, ref_model=tiny_qwen2(tiny_tok), args=args, train_dataset=train, processing_class=tiny_tok
    )
    callback = RecommendationEvalCallback(trainer, rank_rows, _auc_rows(False), every_n_steps=1)
    trainer.add_callback(callback)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "eval_rec/hr@3" in h]
    assert [h["step"] for h in logged] == [1, 2]
    assert {"eval_rec/ndcg@3", "eval_rec/auc", "eval_rec/binary_auc"} <= set(logged[0])
    assert (tmp_path / "rec_eval" / "step-2.json").exists()
    assert trainer.state.global_step == 2
    assert len(callback.history) == 2 and callback.history[1]["step"] == 2


def test_rows_from_the_data_layer(tiny_vlm, tiny_processor, tmp_path):
    """Rows as the data layer stores them (Arrow-normalised message parts, images read from files) evaluate as is."""
    from hanorec_trl.data import (
        build_auc_eval_dataset,
        build_ranking_eval_dataset,
        build_split,
        load_movielens_1m,
        write_synthetic_movielens,
    )

    data = load_movielens_1m(write_synthetic_movielens(tmp_path / "data"))
    split = build_split(data)
    ranking, auc = build_ranking_eval_dataset(split.test, data), build_auc_eval_dataset(split.test, data)
    assert ranking[0]["prompt"][0]["content"][1] == {"type": "image", "text": None}  # the stored part shape
    labels = auc["label"]
    auc_rows = [auc[labels.index(1)], auc[labels.index(0)]]
    m = evaluate_recommender(
        tiny_vlm, tiny_processor, ranking, auc_rows, config=RecEvalConfig(max_ranking_rows=2, progress=False)
    )
    assert m["num_ranking_rows"] == 2 and m["num_auc_rows"] == 2
    assert {"hr@10", "ndcg@10", "auc", "binary_auc"} <= set(m)


def test_tied_scores_rank_pessimistically_end_to_end(tiny_lm, tiny_tok, monkeypatch, tmp_path):
    """Ties through evaluate_recommender: a target tied with others takes the worst of the tied ranks (a constant
    model ranks every target last), and tied P(Yes) give AUC 1/2."""
    rows = _ranking_rows(False, n=3)
    for row, target in zip(rows, (0, 3, 4)):
        row["target_index"] = target
    ranking_scores = [
        [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: the target (0) ranks 5th
        [-1.0, -2.0, -5.0, -1.0, -3.0],  # target 3 tied with candidate 0 at the top: rank 2
        [-4.0, -2.0, -2.0, -3.0, -1.0],  # target 4 strictly best: rank 1
    ]
    auc = _auc_rows(False, labels=(1, 0, 1, 0))

    def fake_scores(model, processing_class, prompts, candidates, images=None, **kwargs):
        if list(candidates[0]) == [YES, NO]:  # every AUC row: the same log-likelihood for "Yes" and "No"
            return [[np.array([-0.5, -0.25]), np.array([-0.25, -0.5])] for _ in prompts]
        assert len(prompts) == len(ranking_scores)
        return [[np.array([s / 2, s / 2]) for s in row] for row in ranking_scores]  # per-token: summed by the caller

    monkeypatch.setattr(evaluate_module, "score_candidates", fake_scores)
    out = tmp_path / "ties.json"
    m = evaluate_recommender(tiny_lm, tiny_tok, rows, auc, config=RecEvalConfig(ks=(1, 2, 3, 5), progress=False),
                             output_path=out)
    assert json.loads(out.read_text())["per_row"]["ranking"]["ranks"] == [5, 2, 1]
    assert m["hr@1"] == pytest.approx(1 / 3) and m["hr@2"] == m["hr@3"] == pytest.approx(2 / 3) and m["hr@5"] == 1.0
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((0 + 1 / math.log2(3) + 1) / 3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(6) + 1 / math.log2(3) + 1) / 3)
    assert m["auc"] == 0.5 and m["binary_auc"] == 0.5
