"""The synthetic testbed where hardness is known (issue "The experiment", part B).

A small text model is trained from scratch on the synthetic MovieLens-format world (``hanorec_trl.data.synthetic``:
genres carried by title words, users whose taste drifts, near-duplicate sequels), then preference-optimized from that
SFT model with plain DPO, HaNoRec and its ablations, with easy (random) and hard rejected items, and every model is
scored on the same test rows. Per data seed:

1. data: ``write_synthetic_movielens(SyntheticConfig(seed=s))``, split with ``build_split`` (sliding windows, split by
   user, one most recent window per validation/test user), titles only;
2. a tokenizer learned on the catalogue's titles and the prompt wording (every title word is one token), and a tiny
   Qwen2 (``tiny_qwen2``, random weights) trained from scratch on next-item rows with TRL's ``SFTTrainer``
   (full fine-tuning), checked against popularity on the validation rows;
3. the offline hardness lambda (Eq. 4-6) of every DPO pair from the SFT model's item embeddings
   (``QwenVLItemEncoder`` title embeddings -> ``HardnessIndex`` -> ``add_hardness_column``, temperature ``tau``);
4. DPO variants with LoRA (r=8) on the SFT weights via ``HaNoDPOTrainer`` (the reference is the SFT model: the
   adapter disabled): ``dpo`` (all switches off), ``hano`` (hardness + responsiveness + LoRA noise), ``wo_hars``
   (noise only), ``wo_nodo`` (hardness + responsiveness, no noise), each with

   * ``random`` rejected items: one of the example's 9 uniform negatives (the paper's protocol);
   * ``hard`` rejected items: the negatives are the 9 never-watched items most similar to the target under the
     generator's ground truth (a sequel / the same franchise first, then genre overlap, ties in seeded random order),
     and the rejected item is the most similar of them (``build_dpo_dataset(rejected="hard")``);

5. evaluation of SFT and every DPO model with ``evaluate_recommender`` (next-item prompt, likelihood scoring) on two
   sets of the same test users: ``test`` (the protocol's 9 uniform negatives) and ``test_hard`` (the 9 ground-truth
   nearest never-watched items), beside random / popularity / Markov / item-kNN on the same rows; paired
   per-row differences with ``paired_bootstrap`` per seed, and pooled over seeds.

    python benchmarks/testbed.py                 # 10 seeds (results appended per seed; rerun to resume)
    python benchmarks/testbed.py --quick         # 2-seed smoke with fewer steps
    python benchmarks/testbed.py --seeds 3 --out /tmp/tb.json --plot /tmp/tb.png
    python benchmarks/testbed.py --jobs 2        # two seeds at once, one process and one torch thread each

Writes ``benchmarks/results/testbed.json`` (config, hardware, per-seed results with per-row ranks, pooled
differences) after every seed and ``benchmarks/results/testbed.png`` (the ablation plot). A rerun with the same
configuration skips the seeds already in the file. Runs on one CPU thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("dpo", "hano", "wo_hars", "wo_nodo")
VARIANT_LABELS = {"sft": "SFT", "dpo": "DPO", "hano": "HaNoRec", "wo_hars": "w/o HaRS (noise only)",
                  "wo_nodo": "w/o NoDO (HaRS only)", "wo_sam": "w/o SAM (pairwise hardness)",
                  "dpo_reseed": "DPO, other training seed (null control)"}
# --variants ... wo_sam: HaNoRec with the pairwise lambda (Eq. 4 without the Top-K sets); dpo_reseed: plain DPO again
# with training seed + 1000
OPTIONAL_VARIANTS = ("wo_sam", "dpo_reseed")
REJECTED = ("random", "hard")
TEST_SETS = ("test", "test_hard")
BASELINE_NAMES = ("popularity", "markov", "item_knn")
METRICS = ("hr@1", "ndcg@10")
# (name, model, reference) of the paired comparisons; a DPO model's name is "<variant>-<rejected>".
COMPARISONS = tuple(
    [(f"{v}-{r} vs dpo-{r}", f"{v}-{r}", f"dpo-{r}") for r in REJECTED
     for v in ("hano", "wo_hars", "wo_nodo", "wo_sam")]
    + [(f"hano-{r} vs wo_hars-{r}", f"hano-{r}", f"wo_hars-{r}") for r in REJECTED]
    + [(f"hano-{r} vs wo_nodo-{r}", f"hano-{r}", f"wo_nodo-{r}") for r in REJECTED]
    + [(f"hano-{r} vs wo_sam-{r}", f"hano-{r}", f"wo_sam-{r}") for r in REJECTED]
    + [(f"dpo-{r} vs sft", f"dpo-{r}", "sft") for r in REJECTED]
    + [(f"hano-{r} vs sft", f"hano-{r}", "sft") for r in REJECTED]
    + [("dpo-hard vs dpo-random", "dpo-hard", "dpo-random"), ("sft vs popularity", "sft", "popularity")]
    + [(f"dpo_reseed-{r} vs dpo-{r}", f"dpo_reseed-{r}", f"dpo-{r}") for r in REJECTED]
)


@dataclass
class TestbedConfig:
    """Everything that determines the results (a resumed run must have the same values)."""

    # synthetic world
    num_users: int = 3000
    num_items: int = 300
    num_genres: int = 8
    mean_interactions: float = 14.0
    max_interactions: int = 40
    sequel_fraction: float = 0.15
    sequel_follow_prob: float = 0.3
    windows_per_user: int = 4
    max_test_examples: int | None = None
    # model and SFT
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    sft_steps: int = 450
    sft_batch_size: int = 32
    sft_learning_rate: float = 2e-3
    # hardness
    hardness_k: int = 10
    hardness_temperature: float = 0.05
    hardness_title_mode: str = "input_embeddings"
    # DPO
    dpo_examples: int = 768
    dpo_steps: int = 48
    dpo_batch_size: int = 16
    dpo_learning_rate: float = 5e-3
    beta: float = 0.1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_noise_std: float = 0.01
    responsiveness_warmup: int = 10
    # > 0: every preference variant adds TRL's SFT loss on the chosen title with this weight
    # (loss_type ["sigmoid", "sft"], loss_weights [1, w]), which keeps DPO from pushing the chosen title down too
    dpo_sft_weight: float = 0.0
    variants: tuple[str, ...] = VARIANTS
    rejected: tuple[str, ...] = REJECTED
    eval_batch_size: int = 16
    bootstrap_resamples: int = 10_000

    def key(self) -> dict[str, Any]:
        key = json.loads(json.dumps(dataclasses.asdict(self)))
        if not self.dpo_sft_weight:  # results written before the field existed stay resumable
            del key["dpo_sft_weight"]
        return key


PAIRWISE_COLUMN = "hano_lambda_pairwise"
QUICK = dict(num_users=1000, sft_steps=150, dpo_examples=128, dpo_steps=8)
TAU_PROBE = (1.0, 0.1, 0.05, 0.02, 0.01)  # lambda spread recorded for these temperatures too (diagnostic)


# ----------------------------------------------------------------------------------------------------------------
# The synthetic world's ground truth
# ----------------------------------------------------------------------------------------------------------------


def synthetic_config(cfg: TestbedConfig, seed: int):
    from hanorec_trl.data.synthetic import SyntheticConfig

    return SyntheticConfig(num_users=cfg.num_users, num_items=cfg.num_items, num_genres=cfg.num_genres,
                           mean_interactions=cfg.mean_interactions, max_interactions=cfg.max_interactions,
                           sequel_fraction=cfg.sequel_fraction, sequel_follow_prob=cfg.sequel_follow_prob,
                           poster_size=8, seed=seed)


class GroundTruth:
    """The generator's own item relations: genres and franchises (an original and its sequels).

    The items are regenerated with the generator's item stream (the same seed gives the same items), and checked
    against the written titles. ``similarity(a, b)`` = 2 for two items of one franchise, else the Jaccard overlap
    of their genre sets (0..1)."""

    def __init__(self, data, syn_cfg):
        from hanorec_trl.data.synthetic import _make_items

        rng_items = np.random.default_rng(np.random.SeedSequence(syn_cfg.seed).spawn(3)[0])
        items = _make_items(syn_cfg, rng_items)
        self.item_ids = list(data.item_ids)
        if len(items) != len(self.item_ids):
            raise RuntimeError("the regenerated catalogue does not match the written one")
        self.rows = {item: row for row, item in enumerate(self.item_ids)}
        genres = np.zeros((len(items), syn_cfg.num_genres), dtype=np.float64)
        root = np.empty(len(items), dtype=np.int64)
        for k, it in enumerate(items):
            written = data.title(str(k + 1))
            if written != f"{it.title} ({it.year})":
                raise RuntimeError(f"item {k + 1}: regenerated title {it.title!r} != written {written!r}")
            genres[self.rows[str(k + 1)], list(it.genres)] = 1.0
            root[self.rows[str(k + 1)]] = k if it.base is None else it.base
        self.genres, self.root = genres, root
        self.genre_counts = genres.sum(axis=1)

    def similarity_to(self, target: str) -> np.ndarray:
        """Similarity of every catalogue item (row order) to ``target``."""
        t = self.rows[target]
        inter = self.genres @ self.genres[t]
        union = self.genre_counts + self.genre_counts[t] - inter
        sim = inter / np.maximum(union, 1.0)
        sim[self.root == self.root[t]] = 2.0
        return sim

    def similarity(self, target: str, others) -> np.ndarray:
        sim = self.similarity_to(target)
        return np.asarray([sim[self.rows[o]] for o in others], dtype=np.float64)

    def is_sequel_pair(self, a: str, b: str) -> bool:
        return bool(self.root[self.rows[a]] == self.root[self.rows[b]])


def hard_examples(examples, data, truth: GroundTruth, seed: int, purpose: str):
    """Copies of ``examples`` whose 9 negatives are the never-watched items most similar to the target (ties in a
    seeded random order), in a seeded random order with the target."""
    from hanorec_trl.data.builders import example_rng

    out = []
    for ex in examples:
        n_neg = len(ex.candidates) - 1
        sim = truth.similarity_to(ex.target)
        rng = example_rng(seed, ex.sequence_id, purpose)
        tie = rng.random(len(sim))
        seen = [truth.rows[i] for i in data.interacted(ex.user) if i in truth.rows]
        sim = sim.copy()
        sim[seen] = -np.inf
        sim[truth.rows[ex.target]] = -np.inf
        order = np.lexsort((tie, -sim))[:n_neg]
        candidates = [ex.target] + [truth.item_ids[r] for r in order.tolist()]
        candidates = [candidates[k] for k in rng.permutation(len(candidates)).tolist()]
        out.append(dataclasses.replace(ex, candidates=candidates, target_index=candidates.index(ex.target)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and models
# ----------------------------------------------------------------------------------------------------------------


def catalogue_tokenizer(data, templates, vocab_size: int):
    """A byte-level BPE tokenizer with Qwen's special tokens and chat template, learned on the titles and the prompt
    wording, so that a title word is one token (the tiny built-in tokenizer spells titles out byte by byte)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from hanorec_trl.processing import assemble_qwen_tokenizer, byte_level_alphabet

    table = byte_level_alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=list(table.values()))
    probe = Tokenizer(models.BPE())
    probe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    wording = [templates.next_item_header.format(noun=templates.noun),
               templates.next_item_question.format(noun=templates.noun), "system user assistant\n"]
    corpus = [templates.answer_text(data.title(i)) for i in data.item_ids] + wording * 20
    probe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(probe.to_str())
    vocab = state["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    return assemble_qwen_tokenizer(vocab, merges, model_max_length=2048)


def lora_config(model, cfg: TestbedConfig):
    from peft import LoraConfig

    from hanorec_trl.model_utils import language_model_lora_regex

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=language_model_lora_regex(model), task_type="CAUSAL_LM")


VARIANT_SWITCHES = {
    "dpo": dict(use_hardness=False, use_responsiveness=False, noise=False),
    "hano": dict(use_hardness=True, use_responsiveness=True, noise=True),
    "wo_hars": dict(use_hardness=False, use_responsiveness=False, noise=True),
    "wo_nodo": dict(use_hardness=True, use_responsiveness=True, noise=False),
    "wo_sam": dict(use_hardness=True, use_responsiveness=True, noise=True, hardness_mode="pairwise"),
    "dpo_reseed": dict(use_hardness=False, use_responsiveness=False, noise=False, seed_offset=1000),
}


# ----------------------------------------------------------------------------------------------------------------
# One seed
# ----------------------------------------------------------------------------------------------------------------


def _summary(values) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max()), "std": float(v.std()),
            "p10": float(np.quantile(v, 0.1)), "p90": float(np.quantile(v, 0.9))}


def _spearman(a, b) -> float:
    from hanorec_trl.evaluation import average_ranks

    ra, rb = average_ranks(np.asarray(a, float)), average_ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def per_row_values(ranks) -> dict[str, list[float]]:
    from hanorec_trl.evaluation import ndcg_gains

    r = np.asarray([np.inf if x is None else x for x in ranks], dtype=np.float64)
    return {"hr@1": (r <= 1).astype(float).tolist(), "ndcg@10": ndcg_gains(r, 10).tolist()}


def _log_summary(log_history) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = ("loss", "hano/eta", "hano/beta_mean", "hano/beta_min", "hano/beta_max", "hano/lambda_mean",
            "rewards/accuracies", "rewards/margins")
    for key in keys:
        values = [h[key] for h in log_history if isinstance(h.get(key), (int, float))]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "mean": float(np.mean(values))}
    return out


def run_seed(seed: int, cfg: TestbedConfig, work_dir: Path, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Everything for one data seed; returns the seed's JSON-ready record (per-row ranks included)."""
    import torch
    from tqdm.auto import tqdm
    from trl import SFTConfig, SFTTrainer

    from hanorec_trl import HaNoDPOConfig, HaNoDPOTrainer
    from hanorec_trl.baselines import TrainingInteractions, evaluate_baseline, expected_random_metrics, fit_baseline
    from hanorec_trl.data import (
        ProtocolConfig,
        build_dpo_dataset,
        build_ranking_eval_dataset,
        build_sft_dataset,
        build_split,
        load_movielens_1m,
        write_synthetic_movielens,
    )
    from hanorec_trl.data.prompts import PromptTemplates
    from hanorec_trl.encoders import QwenVLItemEncoder, encode_items
    from hanorec_trl.evaluation import RecEvalConfig, evaluate_recommender
    from hanorec_trl.fast.cpu_lm_head import compact_lm_head_on_cpu
    from hanorec_trl.hardness import HardnessIndex, add_hardness_column
    from hanorec_trl.testing import tiny_qwen2

    started = time.perf_counter()
    timings: dict[str, float] = {}
    folder = work_dir / f"seed-{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    steps = ["data", "SFT", "hardness"] + [f"DPO {v}-{r}" for r in cfg.rejected for v in cfg.variants] + ["eval"]
    bar = tqdm(total=len(steps), desc=f"seed {seed}", disable=not progress, leave=True)

    def step_done(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        bar.set_postfix_str(f"{name} {timings[name]:.0f}s")
        bar.update(1)

    # 1. data
    t0 = time.perf_counter()
    syn_cfg = synthetic_config(cfg, seed)
    write_synthetic_movielens(folder / "data", syn_cfg)
    data = load_movielens_1m(folder / "data", images=False)
    split = build_split(data, ProtocolConfig(sliding_windows=True, max_windows_per_user=cfg.windows_per_user,
                                             split_by="user", seed=seed))
    truth = GroundTruth(data, syn_cfg)
    test = split.test[: cfg.max_test_examples] if cfg.max_test_examples else list(split.test)
    validation = list(split.validation)
    test_sets = {"test": test, "test_hard": hard_examples(test, data, truth, seed, "hard test candidates")}
    templates = PromptTemplates(system="")  # no default system prompt: shorter rows
    tok = catalogue_tokenizer(data, templates, cfg.vocab_size)
    rng = np.random.default_rng([seed, 7])
    dpo_pick = sorted(rng.choice(len(split.train), size=min(cfg.dpo_examples, len(split.train)),
                                 replace=False).tolist())
    dpo_examples = [split.train[k] for k in dpo_pick]
    training = TrainingInteractions.from_split(data, split)
    record: dict[str, Any] = {
        "seed": seed,
        "data": {"users": len(data.user_sequences()), "items": len(data.item_ids), "interactions": len(data.items),
                 "rows": split.counts(), "test_rows": len(test), "dpo_pairs": len(dpo_examples),
                 "vocab": len(tok)},
    }
    step_done("data", t0)

    def rows_of(examples):
        return build_ranking_eval_dataset(examples, data, with_images=False, templates=templates, prompt="next_item")

    eval_rows = {name: rows_of(examples) for name, examples in test_sets.items()}
    eval_config = RecEvalConfig(ks=(1, 3, 5, 10), batch_size=cfg.eval_batch_size, progress=False)
    evaluations: dict[str, dict[str, Any]] = {name: {} for name in TEST_SETS}

    def evaluate(name: str, model) -> None:
        for set_name, rows in eval_rows.items():
            out = folder / "eval" / set_name / f"{name}.json"
            metrics = evaluate_recommender(model, tok, rows, None, config=eval_config, output_path=out,
                                           overwrite=True)
            ranks = json.loads(out.read_text())["per_row"]["ranking"]["ranks"]
            evaluations[set_name][name] = {"metrics": {k: metrics[k] for k in ("hr@1", "hr@3", "ndcg@3", "ndcg@10")},
                                           "ranks": ranks}

    for set_name, examples in test_sets.items():
        evaluations[set_name]["random"] = {"metrics": {k: v for k, v in expected_random_metrics(
            examples, (1, 3, 5, 10))["metrics"].items() if k in ("hr@1", "hr@3", "ndcg@3", "ndcg@10")},
            "expected": expected_random_metrics(examples, (1, 10))["per_row"]}
        for name in BASELINE_NAMES:
            result = evaluate_baseline(fit_baseline(name, training), examples, (1, 3, 5, 10))
            evaluations[set_name][name] = {
                "metrics": {k: result["metrics"][k] for k in ("hr@1", "hr@3", "ndcg@3", "ndcg@10")},
                "ranks": result["per_row"]["ranking"]["ranks"]}

    # 2. SFT from scratch (full fine-tuning)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = tiny_qwen2(tok, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, seed=seed)
    sft_rows = build_sft_dataset(split.train, data, task="next_item", with_images=False, templates=templates)
    sft_args = SFTConfig(output_dir=str(folder / "sft"), max_steps=cfg.sft_steps,
                         per_device_train_batch_size=cfg.sft_batch_size, learning_rate=cfg.sft_learning_rate,
                         lr_scheduler_type="cosine", warmup_steps=max(1, cfg.sft_steps // 20), weight_decay=0.01,
                         use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                         report_to="none", logging_steps=max(1, cfg.sft_steps // 10), seed=seed,
                         dataloader_num_workers=0, disable_tqdm=not progress, max_length=512)
    sft_trainer = SFTTrainer(model=model, args=sft_args, train_dataset=sft_rows, processing_class=tok)
    with compact_lm_head_on_cpu():
        sft_loss = sft_trainer.train().training_loss
    sft_model = sft_trainer.model
    sft_model.eval()
    # Each DPO policy is a fresh model loaded with these weights, not copy.deepcopy(sft_model): the SFT trainer patched
    # sft_model.forward with a closure over sft_model itself (TRL's fused LM head), and a deep copy would keep calling
    # the original's forward outside training (its evaluation would silently score the SFT weights).
    sft_state = {k: v.detach().clone() for k, v in sft_model.state_dict().items()}

    def fresh_sft_model():
        fresh = tiny_qwen2(tok, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, seed=seed)
        fresh.load_state_dict(sft_state)
        return fresh

    val_out = folder / "eval" / "validation-sft.json"
    val_metrics = evaluate_recommender(sft_model, tok, rows_of(validation), None, config=eval_config,
                                       output_path=val_out, overwrite=True)
    val_pop = evaluate_baseline(fit_baseline("popularity", training), validation, (1, 3, 5, 10))["metrics"]
    record["sft"] = {"steps": cfg.sft_steps, "train_rows": len(sft_rows), "train_loss": sft_loss,
                     "loss_curve": [h["loss"] for h in sft_trainer.state.log_history if "loss" in h],
                     "validation": {"rows": len(validation),
                                    "sft": {k: val_metrics[k] for k in ("hr@1", "ndcg@10")},
                                    "popularity": {k: val_pop[k] for k in ("hr@1", "ndcg@10")},
                                    "random": {"hr@1": 0.1, "ndcg@10": float(np.mean(expected_random_metrics(
                                        validation, (10,))["per_row"]["expected_gains"]["10"]))}}}
    del sft_trainer
    step_done("SFT", t0)
    log(f"seed {seed}: SFT loss {sft_loss:.3f}; validation HR@1 {val_metrics['hr@1']:.3f} NDCG@10 "
        f"{val_metrics['ndcg@10']:.3f} (popularity {val_pop['hr@1']:.3f} / {val_pop['ndcg@10']:.3f}, "
        f"random 0.100 / {record['sft']['validation']['random']['ndcg@10']:.3f})")

    # 3. hardness lambda from the SFT model's item embeddings; DPO datasets
    t0 = time.perf_counter()
    encoder = QwenVLItemEncoder(sft_model, tok, title_mode=cfg.hardness_title_mode)
    item_ids = list(data.item_ids)
    embeddings = encode_items(encoder, item_ids, [data.title(i) for i in item_ids], None, use_cache=False,
                              progress=False)
    index = HardnessIndex(embeddings.text)
    dpo_sets = {}
    hard_train = hard_examples(dpo_examples, data, truth, seed, "hard train candidates")
    record["hardness"] = {}
    for rejected in cfg.rejected:
        if rejected == "random":
            pairs = build_dpo_dataset(dpo_examples, data, task="next_item", rejected="random", seed=seed,
                                      with_images=False, templates=templates)
        else:
            pairs = build_dpo_dataset(hard_train, data, task="next_item", rejected="hard", seed=seed,
                                      similarity=truth.similarity, with_images=False, templates=templates)
        pairs, delta_mean = add_hardness_column(pairs, index, embeddings.item_rows, k=cfg.hardness_k,
                                                temperature=cfg.hardness_temperature)
        if "wo_sam" in cfg.variants:
            pairs, _ = add_hardness_column(pairs, index, embeddings.item_rows, k=cfg.hardness_k,
                                           temperature=cfg.hardness_temperature, mode="pairwise",
                                           column=PAIRWISE_COLUMN)
        lambdas = pairs["hano_lambda"]
        true_sim = [float(truth.similarity(c, [r])[0]) for c, r in zip(pairs["chosen_item"], pairs["rejected_item"])]
        model_cos = [float(index.embeddings([embeddings.item_rows[c]])[0] @ index.embeddings(
            [embeddings.item_rows[r]])[0]) for c, r in zip(pairs["chosen_item"], pairs["rejected_item"])]
        dpo_sets[rejected] = pairs
        other_tau = {}
        for tau in TAU_PROBE:
            probe, _ = add_hardness_column(pairs.select_columns(["chosen_item", "rejected_item"]), index,
                                           embeddings.item_rows, k=cfg.hardness_k, temperature=tau)
            other_tau[str(tau)] = {"std": float(np.std(probe["hano_lambda"])),
                                   "min": float(np.min(probe["hano_lambda"])),
                                   "max": float(np.max(probe["hano_lambda"])),
                                   "spearman_true_similarity": _spearman(probe["hano_lambda"], true_sim)}
        record["hardness"][rejected] = {
            "lambda": _summary(lambdas), "delta_mean": delta_mean, "lambda_by_temperature": other_tau,
            "pairwise_lambda_spearman_true_similarity": _spearman(add_hardness_column(
                pairs.select_columns(["chosen_item", "rejected_item"]), index, embeddings.item_rows,
                mode="pairwise")[0]["hano_lambda"], true_sim),
            "true_similarity": _summary(true_sim),
            "sequel_pairs": int(sum(s >= 2 for s in true_sim)),
            "spearman_lambda_true_similarity": _spearman(lambdas, true_sim),
            "spearman_model_cosine_true_similarity": _spearman(model_cos, true_sim),
        }
    del encoder
    step_done("hardness", t0)

    # 4. DPO variants from the SFT model
    record["dpo"] = {}
    for rejected in cfg.rejected:
        for variant in cfg.variants:
            t0 = time.perf_counter()
            name = f"{variant}-{rejected}"
            sw = VARIANT_SWITCHES[variant]
            policy = fresh_sft_model()
            policy.train()
            args = HaNoDPOConfig(
                output_dir=str(folder / "dpo" / name), max_steps=cfg.dpo_steps,
                per_device_train_batch_size=cfg.dpo_batch_size, learning_rate=cfg.dpo_learning_rate,
                lr_scheduler_type="constant", beta=cfg.beta, use_hardness=sw["use_hardness"],
                use_responsiveness=sw["use_responsiveness"], responsiveness_warmup=cfg.responsiveness_warmup,
                lora_noise_std=cfg.lora_noise_std if sw["noise"] else 0.0, use_cpu=True, bf16=False,
                gradient_checkpointing=False, save_strategy="no", report_to="none", logging_steps=1,
                seed=seed + sw.get("seed_offset", 0),
                dataloader_num_workers=0, disable_tqdm=True, max_length=None,
                hardness_column=PAIRWISE_COLUMN if sw.get("hardness_mode") == "pairwise" else "hano_lambda",
                **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.dpo_sft_weight]}
                   if cfg.dpo_sft_weight else {}),
            )
            dataset = dpo_sets[rejected]
            if not sw["use_hardness"]:
                dataset = dataset.remove_columns([c for c in ("hano_lambda", PAIRWISE_COLUMN)
                                                  if c in dataset.column_names])
            with compact_lm_head_on_cpu():
                trainer = HaNoDPOTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tok,
                                         peft_config=lora_config(policy, cfg))
                loss = trainer.train().training_loss
            trained = trainer.model.merge_and_unload()
            trained.eval()
            record["dpo"][name] = {"variant": variant, "rejected": rejected, **sw, "steps": trainer.state.global_step,
                                   "train_loss": loss, "log": _log_summary(trainer.state.log_history),
                                   "seconds": time.perf_counter() - t0}
            del trainer
            evaluate(name, trained)
            del trained, policy
            step_done(f"DPO {name}", t0)

    # 5. SFT on the test sets; paired differences
    t0 = time.perf_counter()
    evaluate("sft", sft_model)
    record["eval"] = evaluations
    record["paired"] = paired_differences(evaluations, cfg.bootstrap_resamples, seed)
    step_done("eval", t0)
    bar.close()
    record["timings"] = timings
    record["wall_seconds"] = time.perf_counter() - started
    shutil.rmtree(folder / "data", ignore_errors=True)
    return record


# ----------------------------------------------------------------------------------------------------------------
# Paired differences
# ----------------------------------------------------------------------------------------------------------------


def _values(entry: dict[str, Any], metric: str) -> np.ndarray:
    if "ranks" in entry:
        return np.asarray(per_row_values(entry["ranks"])[metric])
    key = "expected_hits" if metric.startswith("hr") else "expected_gains"
    return np.asarray(entry["expected"][key][metric.split("@")[1]])


def paired_differences(evaluations, resamples: int, seed: int) -> dict[str, Any]:
    from hanorec_trl.evaluation import paired_bootstrap

    out: dict[str, Any] = {}
    for set_name, models in evaluations.items():
        out[set_name] = {}
        for name, model, reference in COMPARISONS:
            if model not in models or reference not in models:
                continue
            out[set_name][name] = {m: paired_bootstrap(_values(models[model], m), _values(models[reference], m),
                                                       num_resamples=resamples, seed=seed) for m in METRICS}
    return out


def pooled(records: list[dict[str, Any]], resamples: int) -> dict[str, Any]:
    """Over seeds: the rows of all seeds pooled (paired bootstrap over rows), and the per-seed mean differences
    (their mean, a bootstrap interval over seeds, and how many seeds are above / below zero)."""
    from hanorec_trl.evaluation import mean_interval, paired_bootstrap

    out: dict[str, Any] = {"seeds": [r["seed"] for r in records]}
    if not records:
        return out
    for set_name in TEST_SETS:
        models = sorted(set.intersection(*(set(r["eval"][set_name]) for r in records)))
        table = {}
        for name in models:
            table[name] = {}
            for m in METRICS:
                per_seed = [float(_values(r["eval"][set_name][name], m).mean()) for r in records]
                table[name][m] = {"mean": float(np.mean(per_seed)), "per_seed": per_seed,
                                  "seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None}
        diffs = {}
        for name, model, reference in COMPARISONS:
            if model not in models or reference not in models:
                continue
            diffs[name] = {}
            for m in METRICS:
                a = np.concatenate([_values(r["eval"][set_name][model], m) for r in records])
                b = np.concatenate([_values(r["eval"][set_name][reference], m) for r in records])
                rows = paired_bootstrap(a, b, num_resamples=resamples, seed=0)
                per_seed = [float((_values(r["eval"][set_name][model], m)
                                   - _values(r["eval"][set_name][reference], m)).mean()) for r in records]
                entry = {"rows": int(a.size), "pooled_rows": rows, "per_seed": per_seed,
                         "seeds_above": int(sum(d > 0 for d in per_seed)),
                         "seeds_below": int(sum(d < 0 for d in per_seed))}
                if len(per_seed) > 1:
                    low, high = mean_interval(per_seed, num_resamples=resamples, seed=0)
                    entry["over_seeds"] = {"mean": float(np.mean(per_seed)), "low": low, "high": high}
                diffs[name][m] = entry
        out[set_name] = {"models": table, "differences": diffs}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Plot and table
# ----------------------------------------------------------------------------------------------------------------


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TEST_SETS), len(METRICS), figsize=(11, 7), squeeze=False)
    colours = {"random": "#4c72b0", "hard": "#dd8452"}
    present = {name for part in summary.values() if isinstance(part, dict) for name in part.get("models", {})}
    shown = tuple(v for v in ("hano", "wo_hars", "wo_nodo", *OPTIONAL_VARIANTS)
                  if any(f"{v}-{r}" in present for r in REJECTED))
    for i, set_name in enumerate(TEST_SETS):
        diffs = summary.get(set_name, {}).get("differences", {})
        for j, m in enumerate(METRICS):
            ax = axes[i][j]
            for k, rejected in enumerate(REJECTED):
                xs, ys, lo, hi, dots = [], [], [], [], []
                for v_index, variant in enumerate(shown):
                    entry = diffs.get(f"{variant}-{rejected} vs dpo-{rejected}", {}).get(m)
                    if entry is None:
                        continue
                    x = v_index + (k - 0.5) * 0.35
                    row = entry["pooled_rows"]
                    xs.append(x)
                    ys.append(row["difference"])
                    lo.append(row["difference"] - row["low"])
                    hi.append(row["high"] - row["difference"])
                    dots.append((x, entry["per_seed"]))
                if xs:
                    ax.bar(xs, ys, width=0.33, color=colours[rejected], alpha=0.8,
                           label=f"{rejected} rejected items", yerr=[lo, hi], capsize=3)
                    for x, per_seed in dots:
                        ax.scatter([x] * len(per_seed), per_seed, s=8, color="black", zorder=3)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(range(len(shown)))
            ax.set_xticklabels([VARIANT_LABELS[v] for v in shown], fontsize=8)
            ax.set_ylabel(f"{m} minus plain DPO")
            ax.set_title(f"{set_name}: {m}", fontsize=10)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_tables(result: dict[str, Any]) -> str:
    summary = result["pooled"]
    lines = []
    for set_name in TEST_SETS:
        part = summary.get(set_name)
        if not part:
            continue
        lines += [f"**{set_name}** (mean over {len(summary['seeds'])} seeds of the per-seed metric; "
                  "seed standard deviation in brackets)", "", "| model | HR@1 | NDCG@10 |", "|---|---:|---:|"]
        order = ["random", *BASELINE_NAMES, "sft"] + [f"{v}-{r}" for r in REJECTED
                                                       for v in (*VARIANTS, *OPTIONAL_VARIANTS)]
        for name in order:
            if name not in part["models"]:
                continue
            cells = []
            for m in METRICS:
                e = part["models"][name][m]
                sd = f" ({e['seed_std']:.3f})" if e["seed_std"] is not None else ""
                cells.append(f"{e['mean']:.3f}{sd}")
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines += ["", "| comparison | HR@1 diff [95% CI, pooled rows] | [95% CI over seeds] | seeds +/- "
                  "| NDCG@10 diff [95% CI, pooled rows] | [95% CI over seeds] | seeds +/- |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, entry in part["differences"].items():
            cells = []
            for m in METRICS:
                r = entry[m]["pooled_rows"]
                cells.append(f"{r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]")
                seeds = entry[m].get("over_seeds")
                cells.append(f"[{seeds['low']:+.3f}, {seeds['high']:+.3f}]" if seeds else "-")
                cells.append(f"{entry[m]['seeds_above']}/{entry[m]['seeds_below']}")
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def plot_title(result: dict[str, Any]) -> str:
    rows = sum(r["data"]["test_rows"] for r in result["seeds"])
    return (f"Synthetic testbed: difference to plain DPO (same rejected items), {len(result['seeds'])} seeds, "
            f"{rows} test rows in all\n(bars: all seeds' rows pooled, 95% paired bootstrap CI; dots: one seed each)")


def hardware() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # pragma: no cover
        peft_version = None
    return {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": None, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft_version}


def _write_json(path: Path, value: Any) -> None:
    from hanorec_trl.files import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def _run_seed_in_worker(seed: int, cfg: TestbedConfig, work_dir: Path, threads: int) -> dict[str, Any]:
    """One seed in a worker process of ``run_testbed(jobs > 1)``: its own torch threads, no progress bars."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return run_seed(seed, cfg, work_dir, progress=False, log=lambda message: print(f"[seed {seed}] {message}"))


def _seed_records(seeds, cfg: TestbedConfig, work_dir: Path, *, jobs: int, threads: int, progress: bool, log):
    """Yield the record of every seed as it finishes: one after the other in this process, or ``jobs`` seeds at a
    time in worker processes (spawned, so each starts with a fresh torch) of ``threads`` torch threads each."""
    import torch

    if jobs <= 1:
        for seed in seeds:
            torch.manual_seed(seed)
            yield run_seed(seed, cfg, work_dir, progress=progress, log=log)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_seed_in_worker, seed, cfg, work_dir, threads) for seed in seeds]
        for future in as_completed(futures):
            yield future.result()


def run_testbed(cfg: TestbedConfig, seeds, out: Path, plot_path: Path | None, work_dir: Path, *,
                command: str = "", progress: bool = True, resume: bool = True, log=print, jobs: int = 1,
                threads: int = 1) -> dict[str, Any]:
    """Run (or continue) the testbed over ``seeds``; the JSON at ``out`` is rewritten after every seed. ``jobs`` > 1
    runs that many seeds at once, each in its own process with ``threads`` torch threads (on a machine with 2 cores
    two single-threaded seeds finish sooner than two seeds one after the other on 2 threads: the model is tiny)."""
    result: dict[str, Any] | None = None
    if resume and out.exists():
        previous = json.loads(out.read_text())
        if previous.get("config") == cfg.key():
            result = previous
            log(f"resuming {out}: seeds {[r['seed'] for r in result['seeds']]} already done")
        else:
            log(f"{out} has another configuration: starting over")
    if result is None:
        result = {"command": command, "config": cfg.key(), "hardware": hardware(), "seeds": [], "pooled": {}}
    result.setdefault("commands", [])
    if command:
        result["commands"].append(command)
    done = {r["seed"] for r in result["seeds"]}
    todo = [seed for seed in seeds if seed not in done]
    for record in _seed_records(todo, cfg, work_dir, jobs=jobs, threads=threads, progress=progress, log=log):
        seed = record["seed"]
        result["seeds"].append(record)
        result["seeds"].sort(key=lambda r: r["seed"])
        result["pooled"] = pooled(result["seeds"], cfg.bootstrap_resamples)
        result["wall_seconds_total"] = float(sum(r["wall_seconds"] for r in result["seeds"]))
        _write_json(out, result)
        if plot_path is not None:
            plot(result["pooled"], plot_path, plot_title(result))
        log(f"seed {seed} done in {record['wall_seconds']:.0f} s -> {out}")
    if not result["pooled"]:
        result["pooled"] = pooled(result["seeds"], cfg.bootstrap_resamples)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="number of data seeds (0, 1, ..., N-1)")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1,000 users, 150 SFT and 8 DPO steps (smoke)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/testbed.json "
                        "(--quick: testbed_quick.json)")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    parser.add_argument("--work_dir", type=Path, default=Path("runs/testbed"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (of each job)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process "
                        "(e.g. --jobs 2 on 2 cores)")
    parser.add_argument("--no_resume", action="store_true", help="start over even if --out has these settings")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot and print the tables of --out")
    for f in dataclasses.fields(TestbedConfig):
        if f.name in ("variants", "rejected"):
            parser.add_argument(f"--{f.name}", nargs="+", default=None)
        elif f.name == "max_test_examples":
            parser.add_argument("--max_test_examples", type=int, default=None)
        else:
            parser.add_argument(f"--{f.name}", type=type(f.default), default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    values = dict(QUICK) if args.quick else {}
    for f in dataclasses.fields(TestbedConfig):
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = tuple(given) if f.name in ("variants", "rejected") else given
    cfg = TestbedConfig(**values)
    seeds = list(range(args.first_seed, args.first_seed + (2 if args.quick and args.seeds == 10 else args.seeds)))
    out = args.out or RESULTS / ("testbed_quick.json" if args.quick else "testbed.json")
    plot_path = args.plot or out.with_suffix(".png")
    if args.replot:
        result = json.loads(out.read_text())
        plot(result["pooled"], plot_path, plot_title(result))
        print(markdown_tables(result))
        return result
    command = "python benchmarks/testbed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_testbed(cfg, seeds, out, plot_path, args.work_dir, command=command.strip(),
                         progress=not args.no_progress, resume=not args.no_resume, jobs=args.jobs,
                         threads=args.threads)
    print(markdown_tables(result))
    return result


if __name__ == "__main__":
    main()
