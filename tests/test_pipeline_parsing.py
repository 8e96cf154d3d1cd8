"""Issue 27: every stage parses as TRL's scripts do (``trl.TrlParser``: ``--config stage.yaml`` of raw fields, flags
on top), with the checks TRL's parser leaves out (hanorec_trl/pipeline/parsing.py): strict YAML, one ``--config``,
YAML values checked like flags, unknown keys and flags named, ``--help`` listing the options."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
from pipeline_utils import REPO, TINY, refused

from hanorec_trl.pipeline.parsing import MAX_YAML_NODES, ConfigError, load_yaml
from hanorec_trl.pipeline.running import script_main
from hanorec_trl.scripts import data, dpo, evaluate, hardness, report, sft

CPU = ["--use_cpu", "--bf16", "false"]


def test_a_flag_overrides_the_yaml_and_the_yaml_the_defaults(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("beta: 0.1\nmax_steps: 3\nlearning_rate: 3e-4\nlora_noise_std: 0.01\nuse_peft: true\n"
                    "lora_target_modules: [q_proj, v_proj]\n")
    script_args, training, model = dpo.parse(["--config", str(path), "--beta", "0.3", "--output_dir",
                                              str(tmp_path / "out"), "--dataset_name", "d", *CPU])
    assert training.beta == 0.3 and training.max_steps == 3 and training.lora_noise_std == 0.01
    assert training.learning_rate == 3e-4 and isinstance(training.learning_rate, float)  # YAML 1.2: a number
    assert model.use_peft is True and model.lora_target_modules == ["q_proj", "v_proj"]
    assert training.use_hardness is True  # HaNoDPOConfig's default, neither file nor flag set it
    assert dpo.parse(["--config", f"{path}", "--output_dir", "o", "--dataset_name", "d", "--max_steps", "7",
                      *CPU])[1].max_steps == 7


def test_an_unknown_key_or_flag_is_an_error_naming_it(tmp_path, capsys):
    path = tmp_path / "dpo.yaml"
    path.write_text("beta: 0.1\nbta: 0.2\n")
    refused(capsys, script_main(dpo.parse, dpo.main, ["--config", str(path), "--output_dir", "o", *CPU]),
            str(path), "unknown field(s) bta")
    path.write_text("beta: 0.1\n")
    refused(capsys, script_main(dpo.parse, dpo.main, ["--config", str(path), "--output_dir", "o", "--bta", "0.2",
                                                      *CPU]), "--bta")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, fragment", [
    ("max_steps: 2.7\n", "max_steps: 2.7 is not a valid int"),
    ("max_steps: '3'\nbeta: high\n", "beta: 'high' is not a valid float"),
    ("loss_type: [sigmoid, hinge]\nlora_noise_mode: sideways\n", "lora_noise_mode: 'sideways' is not one of"),
    ("use_peft: maybe\n", "use_peft: 'maybe' is not a valid bool"),
])
def test_a_yaml_value_is_checked_like_the_same_flag(tmp_path, capsys, text, fragment):
    """argparse converts and checks only what is typed on the command line; a YAML default of the wrong type used
    to reach the trainer as given."""
    path = tmp_path / "dpo.yaml"
    path.write_text(text)
    refused(capsys, script_main(dpo.parse, dpo.main, ["--config", str(path), "--output_dir", "o", *CPU]),
            str(path), fragment)


def test_yaml_is_read_strictly(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("a: 1\nb:\n  c: 2\n  c: 3\n")
    with pytest.raises(ConfigError, match=r"r.yaml: key 'c' is given twice \(lines 3 and 4\)"):
        load_yaml(path)
    path.write_bytes(b"a: 1\nb: 2\ntitle: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"r.yaml, line 3: byte 0xe9 is not UTF-8"):
        load_yaml(path)
    levels = ["a: &a [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"{b}: &{b} [" + ", ".join([f"*{a}"] * 10) + "]" for a, b in zip("abcdefg", "bcdefgh")]
    path.write_text("\n".join(levels) + "\n")  # 10^8 values from 300 bytes
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"aliases expand to more than {MAX_YAML_NODES:,} values"):
        load_yaml(path)
    assert time.perf_counter() - start < 5
    path.write_text("common: &c {beta: 0.1}\nother: *c\n")  # a few aliases are fine
    assert load_yaml(path) == {"common": {"beta": 0.1}, "other": {"beta": 0.1}}
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(path)
    path.write_text("x: 1e-4\ny: 1E5\nz: .nan\n")
    values = load_yaml(path)
    assert values["x"] == 1e-4 and values["y"] == 1e5 and math.isnan(values["z"])


def test_config_is_given_once_and_needs_a_file(tmp_path, capsys):
    path = tmp_path / "dpo.yaml"
    path.write_text("beta: 0.1\n")
    for argv, fragment in [
        (["--config", str(path), f"--config={path}"], "--config is given twice"),
        (["--config", str(tmp_path / "absent.yaml")], "absent.yaml"),
    ]:
        refused(capsys, script_main(dpo.parse, dpo.main, [*argv, "--output_dir", "o", *CPU]), fragment)
    refused(capsys, script_main(dpo.parse, dpo.main, ["--output_dir", "o", *CPU, "--config"]),
            "--config needs a file name")


@pytest.mark.parametrize("script, options", [
    (data, ["--data_dir", "--dataset", "--synthetic_num_users", "--num_candidates", "--seed", "--output_dir"]),
    (sft, ["--model_name_or_path", "--max_length", "--lora_r", "--learning_rate", "--data_path", "--tokenizer"]),
    (hardness, ["--hardness_k", "--hardness_temperature", "--reference", "--model_name_or_path"]),
    (dpo, ["--beta", "--lora_noise_std", "--use_hardness", "--dataset_name", "--item_embeddings", "--use_peft"]),
    (evaluate, ["--baselines", "--eval_ks", "--adapter_path", "--ranking_mode", "--model_name_or_path"]),
    (report, ["--results", "--output_dir", "--title"]),
])
def test_help_lists_every_option_of_the_stage(capsys, script, options):
    with pytest.raises(SystemExit) as stop:
        script.parse(["--help"])
    shown = capsys.readouterr().out
    assert stop.value.code == 0
    for option in options:
        assert f"\n  {option} " in shown or f"\n  {option}," in shown, option


def test_the_example_script_help_lists_its_options():
    start = time.perf_counter()
    shown = subprocess.run([sys.executable, str(REPO / "examples" / "train_movielens.py"), "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    for option in ("--recipe", "--data_dir", "--run_dir", "--resume", "--overwrite", "--reuse_from", "--variants"):
        assert option in shown.stdout, option
    print(f"--help took {time.perf_counter() - start:.1f} s")


def test_every_recipe_of_a_built_in_model_parses(tmp_path):
    """Each example recipe folder on a built-in model and for a CPU is parsed and checked by the runner (no data read,
    no model loaded; a hub model's recipe needs its config from the hub, a bf16 recipe a GPU)."""
    from pipeline_utils import read_yaml

    from hanorec_trl.models import BUILTIN_MODELS
    from hanorec_trl.pipeline.recipe import RecipeArguments, make_plan

    folders = sorted({p.parent for p in (REPO / "examples" / "recipes").rglob("sft.yaml")
                      if read_yaml(p).get("model_name_or_path", "tiny-qwen2.5-vl") in BUILTIN_MODELS
                      and not any(read_yaml(f).get("bf16") for f in p.parent.glob("*.yaml"))})
    assert TINY in folders and len(folders) >= 4
    for folder in folders:
        plan = make_plan(RecipeArguments(recipe=str(folder), data_dir=str(tmp_path)), tmp_path / folder.name)
        assert list(plan)[0] == "data" and list(plan)[-1] == "report", folder
        assert ("hardness" in plan) == any(name.startswith("dpo-") for name in plan), folder
