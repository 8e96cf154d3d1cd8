"""Pipeline configuration (TrlParser, recipes, variants), refusals before any work, and the CPU LM-head switch."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hanorec_trl.pipeline import PipelineConfig, PipelineConfigError, main, parse_args
from hanorec_trl.pipeline.arguments import ARGUMENT_CLASSES
from hanorec_trl.pipeline.cli_reference import help_table
from hanorec_trl.pipeline.variants import ABLATION_VARIANTS

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "examples" / "recipes").rglob("*.yaml"))


# ------------------------------------------------------------------------------------------------- parsing, recipes


def test_every_recipe_parses_into_the_trl_dataclasses_and_names_its_dataset():
    import yaml
    from trl import ModelConfig, SFTConfig

    from hanorec_trl import HaNoDPOConfig
    from hanorec_trl.pipeline.arguments import SECTIONS

    assert len(RECIPES) >= 8
    for recipe in RECIPES:
        sections = yaml.safe_load(recipe.read_text())
        assert set(sections) <= set(SECTIONS), f"{recipe} is not in the nested form"
        config = parse_args(["--config", str(recipe), "--data.data_dir", "/data/x"], dataset=None)
        assert isinstance(config.model, ModelConfig) and isinstance(config.sft, SFTConfig), recipe
        assert isinstance(config.dpo, HaNoDPOConfig), recipe
        for section, cls in (("model", ModelConfig), ("sft", SFTConfig), ("dpo", HaNoDPOConfig)):
            for name, value in sections.get(section, {}).items():  # every recipe value reached TRL's dataclass
                assert name in cls.__dataclass_fields__, (recipe, section, name)
                assert config.explicit[section][name] == value, (recipe, section, name)
        dataset = recipe.relative_to(REPO / "examples" / "recipes").parts[0]
        assert config.data.dataset == dataset, recipe
        assert config.run.method == ("sft" if recipe.stem.startswith("sft_") else "hano"), recipe


def test_comparison_recipe_continues_the_sft_curve_run():
    """compare_from_sft_cpu.yaml resumes sft_curve_cpu.yaml's run directory: every stage up to SFT is the same."""
    from hanorec_trl.pipeline.stages.data import data_inputs
    from hanorec_trl.pipeline.stages.model import model_inputs
    from hanorec_trl.pipeline.stages.sft import sft_inputs

    folder = REPO / "examples" / "recipes" / "movielens" / "smollm2"
    curve, compare = (parse_args(["--config", str(folder / name), "--data.data_dir", "/data/x"], dataset=None)
                      for name in ("sft_curve_cpu.yaml", "compare_from_sft_cpu.yaml"))
    for inputs in (lambda c: data_inputs(c, with_images=False), model_inputs, sft_inputs):
        assert inputs(curve) == inputs(compare)
    names = [v.name for v in compare.variants_to_train()]
    assert len(names) == 15 and names[:2] == ["dpo-seed0", "dpo-seed1"] and curve.variants_to_train() == []


def test_pipeline_sections_define_no_field_of_the_trl_dataclasses():
    from trl import DPOConfig, ModelConfig, SFTConfig

    trl_fields = {f.name for cls in (ModelConfig, SFTConfig, DPOConfig) for f in dataclasses.fields(cls)}
    for cls in ARGUMENT_CLASSES:
        shared = {f.name for f in dataclasses.fields(cls)} & trl_fields
        assert not shared, f"{cls.__name__} re-declares {sorted(shared)}"


def test_override_syntax_reaches_every_trl_field_and_flat_forms_translate(tmp_path):
    config = parse_args(["--sft.learning_rate", "3e-4", "--sft.warmup_steps", "2", "--dpo.beta", "0.2",
                         "--dpo.no_use_hardness", "--model.lora_r", "16", "--model.lora_target_modules", "q_proj",
                         "v_proj", "--sft.lr_scheduler_type=constant", "--protocol.max_train_sequences", "8"])
    assert (config.sft.learning_rate, config.sft.warmup_steps, config.dpo.beta) == (3e-4, 2, 0.2)
    assert config.dpo.use_hardness is False and config.model.lora_r == 16
    assert config.model.lora_target_modules == ["q_proj", "v_proj"] and config.protocol.max_train_sequences == 8
    assert config.explicit["sft"]["lr_scheduler_type"] == "constant"
    with pytest.raises(PipelineConfigError, match="did you mean learning_rate"):
        parse_args(["--sft.learning_rat", "1e-4"])
    with pytest.raises(PipelineConfigError, match="invalid choice: 'sideways'"):  # TRL's own choices
        parse_args(["--sft.lr_scheduler_type", "sideways"])
    with pytest.raises(PipelineConfigError, match="refuses these values"):  # TRL's own __post_init__ checks
        parse_args(["--dpo.loss_type", "sigmoid", "--dpo.loss_weights", "1", "2"])
    with pytest.raises(PipelineConfigError, match="set by the pipeline"):
        parse_args(["--sft.output_dir", "x"])
    # the flat form of earlier versions, in a recipe and on the command line, is the same configuration
    from hanorec_trl.pipeline import translate_flat

    flat = {"sft_learning_rate": 3e-4, "seed": 1, "output_dir": "runs/x", "sft_extra_args": {"warmup_steps": 2},
            "bf16": False, "hardness_mode": "pairwise"}
    assert translate_flat(flat) == {
        "sft": {"learning_rate": 3e-4, "seed": 1, "bf16": False, "warmup_steps": 2}, "dpo": {"seed": 1, "bf16": False,
        "hardness_column": "hano_lambda_pairwise"}, "protocol": {"split_seed": 1}, "run": {"run_dir": "runs/x"},
        "model": {"dtype": "float32"}}
    old = tmp_path / "old.yaml"
    old.write_text("sft_learning_rate: 3.0e-4\nseed: 1\nsft_extra_args:\n  warmup_steps: 2\nbeta: 0.2\n")
    new = tmp_path / "new.yaml"
    new.write_text("protocol:\n  split_seed: 1\nsft:\n  learning_rate: 3.0e-4\n  seed: 1\n  warmup_steps: 2\n"
                   "dpo:\n  seed: 1\n  beta: 0.2\n")
    a, b = parse_args(["--config", str(old)]), parse_args(["--config", str(new)])
    c = parse_args(["--sft_learning_rate", "3e-4", "--seed", "1", "--sft_extra_args", '{"warmup_steps": 2}',
                    "--beta", "0.2"])
    assert a.to_dict() == b.to_dict() == c.to_dict() and a.flat() == b.flat() == c.flat()
    assert b.flat()["sft_extra_args"] == {"warmup_steps": 2}  # what a run directory of an earlier version recorded
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("sft:\n  learning_rate: 1.0e-4\nbeta: 0.2\n")
    with pytest.raises(PipelineConfigError, match="mixes sections and top-level fields"):
        parse_args(["--config", str(mixed)])


def test_defaults_are_the_tiny_recipe_and_the_command_line_wins():
    tiny = REPO / "examples" / "recipes" / "movielens" / "tiny" / "hano.yaml"
    assert parse_args([]).to_dict() == parse_args(["--config", str(tiny)]).to_dict()
    real = REPO / "examples" / "recipes" / "movielens" / "qwen2.5-vl-3b" / "hano.yaml"
    config = parse_args(["--config", str(real), "--beta", "0.25", "--no_use_hardness", "--lora-noise-std", "0"])
    assert config.model.model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert config.sft.gradient_accumulation_steps == 8
    assert (config.dpo.beta, config.dpo.use_hardness, config.dpo.lora_noise_std) == (0.25, False, 0.0)


def test_script_dataset_must_match_the_recipe():
    recipe = REPO / "examples" / "recipes" / "netflix" / "smollm2" / "hano.yaml"
    with pytest.raises(PipelineConfigError, match="examples/train_netflix.py"):
        parse_args(["--config", str(recipe), "--data_dir", "/data/x"], dataset="movielens")


def test_variants_follow_method_ablation_and_switches():
    assert parse_args(["--method", "sft"]).variant() is None
    assert parse_args(["--method", "dpo"]).variant().switches(parse_args([]).dpo) == {
        "use_hardness": False, "use_responsiveness": False, "hardness_mode": "topk", "lora_noise_std": 0.0}
    assert parse_args([]).variant().name == "hano"
    wo_sam = parse_args(["--ablation", "wo_sam"])
    assert wo_sam.variant().switches(wo_sam.dpo)["hardness_mode"] == "pairwise"
    assert parse_args(["--ablation", "wo_nodo"]).variant().switches(wo_sam.dpo)["lora_noise_std"] == 0.0
    assert parse_args(["--lora_noise_std", "0"]).variant().name == "hano-hardness-responsiveness"
    assert [v.label for v in ABLATION_VARIANTS] == ["HaNoRec", "w/o HaRS", "w/o SAM", "w/o NoDO", "w/o ALL (DPO)"]
    # --variants: several variants from one SFT model, in the order given; the ablation script's list otherwise
    assert [v.label for v in parse_args(["--variants", "dpo", "hano"]).variants_to_train()] == ["DPO", "HaNoRec"]
    assert parse_args([]).variants_to_train(ABLATION_VARIANTS) == list(ABLATION_VARIANTS)
    assert [v.name for v in parse_args(["--variants", "wo_sam"]).variants_to_train(ABLATION_VARIANTS)] == ["wo_sam"]
    assert parse_args(["--method", "sft"]).variants_to_train() == []
    # --run.dpo_seeds: every variant once per DPO seed, named <variant>-seed<N>
    seeded = parse_args(["--run.variants", "dpo", "hano", "--run.dpo_seeds", "0", "2"]).variants_to_train()
    assert [(v.name, v.seed, v.base_name) for v in seeded] == [
        ("dpo-seed0", 0, "dpo"), ("dpo-seed2", 2, "dpo"), ("hano-seed0", 0, "hano"), ("hano-seed2", 2, "hano")]
    assert seeded[3].label == "HaNoRec (seed 2)" and seeded[3].switches(wo_sam.dpo)["use_hardness"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "dpo", "--ablation", "wo_sam"], "needs --run.method hano"),
        (["--resume"], "--run.resume needs --run.run_dir"),
        (["--resume", "--overwrite", "--output_dir", "x"], "exclude each other"),
        (["--dataset", "microlens"], "needs --data.data_dir"),
        (["--load_in_4bit", "--dpo_init", "merge"], "cannot take the SFT adapter merged"),
        (["--model", "smollm2", "--tokenizer", "tiny"], "built-in tiny models only"),
        (["--dpo_extra_args", "{not json"], "must be a JSON object"),
        (["--max_train_sequences", "0"], "at least 1"),
        (["--variants", "dpo", "dpo"], "names a variant twice"),
        (["--variants", "hano", "--method", "sft"], "drop --run.method sft"),
        (["--variants", "hano", "--ablation", "wo_sam"], "drop --run.ablation wo_sam"),
        (["--run.dpo_seeds", "1", "1"], "needs distinct seeds"),
        (["--run.method", "sft", "--run.dpo_seeds", "1"], "has none"),
    ],
)
def test_bad_combinations_are_refused_with_the_fields_named(argv, message):
    with pytest.raises(PipelineConfigError, match=message):
        parse_args(argv, dataset=None)


def test_extra_trainer_arguments_accept_json_and_yaml_mappings(tmp_path):
    # the escape hatch of earlier versions: its fields land in the TRL dataclass
    config = parse_args(["--sft_extra_args", '{"warmup_steps": 2}'])
    assert config.sft.warmup_steps == 2 and config.flat()["sft_extra_args"] == {"warmup_steps": 2}
    # a name that is not a trainer field is refused before any stage (it used to fail after SFT)
    with pytest.raises(PipelineConfigError, match="'warmup_ratio'.* is not a field of SFTConfig"):
        parse_args(["--sft_extra_args", '{"warmup_ratio": 0.1}'])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dpo_extra_args:\n  lr_scheduler_type: constant\n")
    assert parse_args(["--config", str(recipe)]).explicit["dpo"]["lr_scheduler_type"] == "constant"


def test_help_table_lists_every_field():
    table = help_table()
    from hanorec_trl.pipeline.arguments import PIPELINE_SECTIONS

    for section, cls in PIPELINE_SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"`--{section}.{f.name}`" in table
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_config_round_trips_through_json():
    config = parse_args(["--eval_ks", "1", "3", "--max_users", "50"])
    again = PipelineConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.to_dict() == config.to_dict() and again.evaluation.eval_ks == [1, 3]


# --------------------------------------------------------------------------------------------- refused before work


def _refused(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    return err


def test_bad_models_are_refused_before_the_run_directory_exists(tmp_path, capsys):
    from transformers import BertConfig, LlavaConfig

    out = tmp_path / "run"
    masked = tmp_path / "bert"
    BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(masked)
    _refused(["--model", str(masked), "--output_dir", str(out)], capsys, "neither a vision-language model")
    llava = tmp_path / "llava"
    LlavaConfig().save_pretrained(llava)
    _refused(["--model", str(llava), "--output_dir", str(out)], capsys, "outside the Qwen2-VL family")
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(["--model", str(empty), "--output_dir", str(out)], capsys, "has no config.json")
    _refused(["--model", "no-such-org/no-such-model", "--output_dir", str(out)], capsys, "not a built-in model")
    assert not out.exists()


def test_missing_data_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(out)], capsys, "does not exist")
    partial = tmp_path / "ml"
    partial.mkdir()
    (partial / "ratings.dat").write_text("1::1::5::978300760\n")
    _refused(["--data_dir", str(partial), "--output_dir", str(out)], capsys, "movies.dat")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")
def test_gpu_only_switches_are_refused_on_cpu(tmp_path, capsys):
    _refused(["--bf16", "--output_dir", str(tmp_path / "a")], capsys,
             "bf16 (model.dtype bfloat16, sft.bf16 or dpo.bf16) needs a CUDA GPU")
    _refused(["--load_in_4bit", "--output_dir", str(tmp_path / "b")], capsys, "needs a CUDA GPU")


def test_run_directory_refusals(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    _refused(["--output_dir", str(foreign), "--overwrite"], capsys, "refusing to delete it")
    _refused(["--output_dir", str(foreign), "--resume"], capsys, "not a run directory")
    _refused(["--output_dir", str(tmp_path / "absent"), "--resume"], capsys, "no run to resume")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_script_refuses_a_non_empty_output_dir(tmp_path):
    """The example script end to end as a user runs it: one error line, exit code 2, the folder untouched."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "train_movielens.py"), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "exists and is not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["something"]


# ------------------------------------------------------------------------------------------- helpers of the stages


def test_compact_lm_head_on_cpu_gives_the_same_loss_and_gradients(tiny_tok):
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from hanorec_trl.pipeline.training import compact_lm_head_on_cpu
    from hanorec_trl.testing import tiny_qwen2

    model = tiny_qwen2(tiny_tok)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, len(tiny_tok), (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :17] = -100

    def run():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out, grads

    assert not trl_utils._use_triton(torch.device("cpu"))
    plain, plain_grads = run()
    with compact_lm_head_on_cpu() as installed:
        assert installed and trl_utils._use_triton(torch.device("cpu"))
        compact, compact_grads = run()
    assert not trl_utils._use_triton(torch.device("cpu"))  # restored
    torch.testing.assert_close(compact.loss, plain.loss)
    for name in ("log_probs", "entropy", "is_top1"):
        torch.testing.assert_close(getattr(compact, name), getattr(plain, name), atol=1e-5, rtol=1e-5)
    for a, b in zip(compact_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_subsample_users_keeps_whole_histories():
    from hanorec_trl.data import RecData
    from hanorec_trl.pipeline.stages import subsample_users

    users = [str(u) for u in range(10) for _ in range(u + 1)]
    items = [str(k % 7) for k in range(len(users))]
    data = RecData("toy", users, items, list(range(len(users))), [str(i) for i in range(7)],
                   {str(i): f"t{i}" for i in range(7)})
    small = subsample_users(data, 4, seed=1)
    kept = small.user_sequences()
    assert len(kept) == 4
    for user, sequence in kept.items():
        assert sequence == data.user_sequences()[user]
    assert subsample_users(data, 4, seed=1).fingerprint() == small.fingerprint()
    assert subsample_users(data, 20, seed=1) is data


def test_docs_cli_reference_is_current():
    text = (REPO / "docs" / "pipeline.md").read_text()
    start, end = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
    section = text[text.index(start) + len(start) : text.index(end)]
    assert section.strip() == help_table().strip(), "regenerate the CLI reference in docs/pipeline.md"


def test_report_for_an_ablation_table(tmp_path):
    """The report of several variants: one row each in order, plots even for a variant without HaNoRec metrics."""
    from hanorec_trl.pipeline.report import write_report

    rng = __import__("numpy").random.default_rng(0)
    models = [("sft", "SFT"), ("hano", "HaNoRec"), ("wo_sam", "w/o SAM"), ("wo_all", "w/o ALL (DPO)")]
    items = [str(i) for i in range(10)]
    for k, (name, _) in enumerate(models):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        metrics = {"hr@1": 0.1 * k, "hr@3": 0.2, "ndcg@3": 0.15, "auc": 0.5 + 0.01 * k, "binary_auc": 0.5}
        ranks = [1] * k + [3] * (10 - k)  # model k ranks the target first in its first k rows
        ranking = {"ranks": ranks, "sequence_ids": [f"u{i}:5" for i in range(10)]}
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "per_row": {"ranking": ranking}}))
        (folder / "similarity.json").write_text(json.dumps({"item_ids": items, "cosine": rng.normal(size=10).tolist()}))
        if name != "sft":
            history = [{"step": s, "loss": 0.69 - 0.01 * s} for s in (1, 2, 3)]
            if name != "wo_all":
                for h in history:
                    h.update({"hano/beta_mean": 0.1, "hano/beta_min": 0.09, "hano/beta_max": 0.11,
                              "hano/lambda_mean": 1.0, "hano/eta": 1.0})
            (tmp_path / "dpo" / name).mkdir(parents=True)
            (tmp_path / "dpo" / name / "log_history.json").write_text(json.dumps(history))
    results = write_report(tmp_path, models, beta0=0.1, header={"dataset": "toy"}, disclaimer="toy numbers")
    rows = [line for line in results["table"].splitlines() if line.startswith("| ") and "model" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [label for _, label in models]
    assert "| AUC |" in results["table"] and "HR@5" not in results["table"]  # only the metrics present
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert list(saved["models"]) == [n for n, _ in models]
    # the per-row ranks travel with the report, in the order of the test rows, for pairing runs later
    assert saved["per_row_ranks"]["wo_sam"] == [1, 1, 3, 3, 3, 3, 3, 3, 3, 3]
    assert set(saved["per_row_ranks"]) == {n for n, _ in models} and saved["test_rows"][:2] == ["u0:5", "u1:5"]
    assert set(results["plots"]) == {"paired_differences", "training_dynamics", "title_image_similarity"}
    assert all(Path(p).stat().st_size > 10_000 for p in results["plots"].values())
    assert "> **toy numbers**" in (tmp_path / "report" / "results.md").read_text()
    # paired differences: every variant against SFT, and the HaNoRec variants against plain DPO (w/o ALL)
    pairs = [(d["model"], d["reference"], d["metric"]) for d in results["paired_differences"]]
    assert pairs == [(m, ref, metric) for m, ref in [("hano", "sft"), ("wo_sam", "sft"), ("wo_all", "sft"),
                                                     ("hano", "wo_all"), ("wo_sam", "wo_all")]
                     for metric in ("hr@1", "ndcg@3")]
    hano_vs_sft = results["paired_differences"][0]
    assert hano_vs_sft["difference"] == pytest.approx(0.1) and hano_vs_sft["rows"] == 10  # 1 of 10 rows: 3 -> 1
    wo_sam_vs_dpo = results["paired_differences"][-1]  # row 2: rank 3 (gain 0.5) where w/o ALL ranks 1
    assert wo_sam_vs_dpo["difference"] == pytest.approx(-(1 - 0.5) / 10) and wo_sam_vs_dpo["high"] <= 0
    assert "| HaNoRec | w/o ALL (DPO) | HR@1 | 10 | -0.2000 |" in (tmp_path / "report" / "results.md").read_text()


def test_report_pairs_the_mean_over_dpo_seeds(tmp_path):
    """Trainings of one variant under several DPO seeds are compared once, by their per-row mean."""
    from hanorec_trl.pipeline.report import differences_table, paired_differences, plot_differences, seed_groups

    models = [("sft", "SFT"), ("dpo-seed0", "DPO (seed 0)"), ("dpo-seed1", "DPO (seed 1)"),
              ("hano-seed0", "HaNoRec (seed 0)"), ("hano-seed1", "HaNoRec (seed 1)")]
    assert seed_groups(models) == {"dpo": ("DPO (mean of 2 seeds)", ["dpo-seed0", "dpo-seed1"]),
                                   "hano": ("HaNoRec (mean of 2 seeds)", ["hano-seed0", "hano-seed1"])}
    ranks = {"sft": [2, 2, 2, 2], "dpo-seed0": [1, 2, 2, 2], "dpo-seed1": [2, 2, 2, 2],
             "hano-seed0": [1, 1, 2, 2], "hano-seed1": [1, 1, 1, 2]}
    hr1 = {(d["model"], d["reference"]): d for d in paired_differences(ranks, models, [1]) if d["metric"] == "hr@1"}
    assert set(hr1) == {("dpo", "sft"), ("hano", "sft"), ("hano", "dpo")}
    assert hr1[("dpo", "sft")]["difference"] == pytest.approx(0.125)  # (1/4 + 0) / 2
    assert hr1[("hano", "sft")]["difference"] == pytest.approx(0.625)  # (2/4 + 3/4) / 2
    assert hr1[("hano", "dpo")]["difference"] == pytest.approx(0.5) and hr1[("hano", "dpo")]["rows"] == 4
    # seed by seed: against SFT each seed's training, against DPO the DPO training of the same seed
    assert hr1[("hano", "sft")]["per_seed"] == pytest.approx({0: 0.5, 1: 0.75})
    assert hr1[("hano", "dpo")]["per_seed"] == pytest.approx({0: 0.25, 1: 0.75})
    table = differences_table(list(hr1.values()), dict(models))
    assert "| +0.250 (seed 0) / +0.750 (seed 1) |" in table
    plot = plot_differences(list(hr1.values()), dict(models), tmp_path / "differences.png")
    assert plot.stat().st_size > 10_000


def test_main_leaves_the_process_group_it_ran_in(tmp_path, capsys):
    """A rank that exits with its gloo/NCCL group alive can abort at interpreter teardown; main() destroys it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        _refused(["--max_users", "0"], capsys, "max_users")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_run_directories_of_the_flat_version_resume_with_the_nested_recipe(tmp_path, monkeypatch):
    """Issue 14: the stage arguments recorded by the version with flat arguments (tests/data, from a real run) equal
    what the nested recipe and the --section.field flags give now, so such a run directory resumes; data_dir was
    recorded relative and is given absolute now."""
    from hanorec_trl.pipeline.rundir import _changes
    from hanorec_trl.pipeline.stages.data import data_inputs
    from hanorec_trl.pipeline.stages.dpo import dpo_inputs
    from hanorec_trl.pipeline.stages.evaluation import evaluation_inputs
    from hanorec_trl.pipeline.stages.hardness import hardness_inputs
    from hanorec_trl.pipeline.stages.model import model_inputs
    from hanorec_trl.pipeline.stages.sft import sft_inputs
    from hanorec_trl.pipeline.variants import VARIANTS_BY_NAME

    recorded = json.loads((REPO / "tests" / "data" / "earlier_stage_inputs.json").read_text())["stages"]
    data = tmp_path / "ml"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    recorded["data"]["data_dir"] = "../" + tmp_path.name + "/ml"  # relative, as typed then
    config = parse_args([
        "--config", str(REPO / "examples" / "recipes" / "movielens" / "tiny" / "hano.yaml"), "--data.data_dir",
        str(data), "--run.tokenizer", "tiny", "--protocol.max_train_sequences", "8", "--protocol.max_test_sequences",
        "4", "--sft.max_steps", "2", "--dpo.max_steps", "2", "--sft.save_steps", "1", "--dpo.save_steps", "1",
        "--evaluation.similarity_items", "12", "--dpo.responsiveness_warmup", "0", "--evaluation.score_permutations",
        "3", "--evaluation.baselines", "none"])
    now = {"data": data_inputs(config, with_images=True), "model": model_inputs(config), "sft": sft_inputs(config),
           "hardness": hardness_inputs(config), "dpo/hano": dpo_inputs(config, VARIANTS_BY_NAME["hano"]),
           "eval/sft": evaluation_inputs(config), "eval/hano": evaluation_inputs(config)}
    for stage, inputs in now.items():
        assert _changes(recorded[stage], inputs) == "", stage
    # and the comparison still means something: a changed value is named
    changed = parse_args(["--config", str(REPO / "examples" / "recipes" / "movielens" / "tiny" / "hano.yaml"),
                          "--sft.learning_rate", "3e-4", "--sft.warmup_steps", "5"])
    named = _changes(recorded["sft"], sft_inputs(changed))
    assert "sft_extra_args: was None, now {'warmup_steps': 5.0}" in named
    assert "sft_learning_rate: was 0.0001, now 0.0003" in named
    elsewhere = dict(recorded["data"], data_dir=str(tmp_path / "other"))
    assert "data_dir" in _changes(elsewhere, now["data"])
