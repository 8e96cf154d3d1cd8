"""Issue 27: each stage is a TRL-style script that runs alone from its YAML with flags on top
(``python -m hanorec_trl.scripts.<stage> --config <recipe>/<stage>.yaml --field value``), the standalone DPO script
trains any TRL preference dataset, and a stage folder is identified by its content (hanorec_trl/pipeline/stage.py:
every resolved field, the content of every input; written aside, then renamed; the manifest of what it wrote)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pipeline_utils import REPO, TINY, record, refused, write_recipe

from hanorec_trl.pipeline.running import script_main
from hanorec_trl.pipeline.stage import (
    PARTIAL,
    RECORD,
    STARTED,
    Stage,
    StageError,
    describe,
    input_fingerprint,
    owned_paths,
)

# ------------------------------------------------------------------------------------------------ identity


def test_a_stage_folder_appears_in_one_rename_with_the_manifest_of_what_it_wrote(tmp_path):
    folder = tmp_path / "out"
    stage = Stage("toy", folder, {"ToyArguments.k": 1}, {"data": "content:abc"}, ("result.txt", "parts"))
    partial = stage.begin()
    assert partial == tmp_path / ("out" + PARTIAL) and (partial / STARTED).is_file()
    (partial / "result.txt").write_text("42")
    (partial / "parts").mkdir()
    (partial / "parts" / "a.bin").write_bytes(b"\x00\x01")
    assert stage.done() is None and not folder.exists()  # nothing complete until the rename
    written = stage.publish({"answer": 42}, seconds=1.0)
    assert folder.is_dir() and not partial.exists() and stage.done() == written == record(folder)
    assert written["files"] == {"result.txt": [2, hashlib.sha256(b"42").hexdigest()],
                                "parts/a.bin": [2, hashlib.sha256(b"\x00\x01").hexdigest()]}
    assert written["fingerprint"] == hashlib.sha256(json.dumps(written["files"], sort_keys=True).encode()).hexdigest()
    (folder / "notes.md").write_text("a user's")
    owned, foreign = owned_paths(folder)
    assert sorted(owned) == sorted(["parts/a.bin", "result.txt", RECORD, STARTED]) and foreign == ["notes.md"]


def test_a_complete_stage_is_reused_only_with_every_field_and_input_equal(tmp_path):
    folder = tmp_path / "out"
    config, inputs = {"ToyArguments.k": 1, "ToyArguments.name": "a"}, {"data": "content:abc"}
    first = Stage("toy", folder, config, inputs, ("result.txt",))
    (first.begin() / "result.txt").write_text("42")
    first.publish({}, seconds=0.0)
    assert Stage("toy", folder, dict(config), dict(inputs), ("result.txt",)).done()["key"] == first.key
    for other_config, other_inputs, named in [
        ({**config, "ToyArguments.k": 2}, inputs, "ToyArguments.k: was 1, now 2"),
        ({**config, "ToyArguments.new": True}, inputs, "ToyArguments.new: was '<not recorded>', now True"),
        ({"ToyArguments.k": 1}, inputs, "ToyArguments.name: was 'a', now '<not recorded>'"),
        (config, {"data": "content:abd"}, "input data: was 'content:abc', now 'content:abd'"),
    ]:
        with pytest.raises(StageError, match=rf"{folder} holds the toy stage made from something else .*"
                                             rf"{named.replace('(', '.').replace(')', '.')}"):
            Stage("toy", folder, other_config, other_inputs, ("result.txt",)).done()
    assert (folder / "result.txt").read_text() == "42"


def test_copy_from_reuses_only_the_same_stage_and_links_its_files(tmp_path):
    config, inputs = {"ToyArguments.k": 1}, {"data": "content:abc"}
    source = Stage("toy", tmp_path / "a" / "out", config, inputs, ("result.txt",))
    (source.begin() / "result.txt").write_text("42")
    source.publish({"answer": 42}, seconds=3.0)
    copy = Stage("toy", tmp_path / "b" / "out", config, inputs, ("result.txt",)).copy_from(tmp_path / "a" / "out")
    assert copy["reused_from"] == str((tmp_path / "a" / "out").resolve()) and copy["summary"] == {"answer": 42}
    assert os.path.samefile(tmp_path / "a" / "out" / "result.txt", tmp_path / "b" / "out" / "result.txt")
    other = Stage("toy", tmp_path / "c" / "out", {"ToyArguments.k": 2}, inputs, ("result.txt",))
    assert other.copy_from(tmp_path / "a" / "out") is None and not (tmp_path / "c").exists()


@dataclass
class PathArguments:
    inside: str = ""
    outside: str = ""
    hub: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    results: list[str] = field(default_factory=list)
    hub_token: str | None = "secret"
    local_rank: int = 3


def test_describe_records_paths_inside_the_run_relative_and_others_absolute(tmp_path, monkeypatch):
    root, outside = tmp_path / "run", tmp_path / "data" / "ml-1m"
    (root / "sft" / "merged").mkdir(parents=True)
    (root / "eval-sft").mkdir()
    outside.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    described = describe(PathArguments(inside=str(root / "sft" / "merged"), outside="./data/ml-1m",
                                       results=[str(root / "eval-sft")]), root=root)
    assert described["PathArguments.inside"] == "<run>/sft/merged"
    assert described["PathArguments.outside"] == str(outside.resolve())
    assert described["PathArguments.hub"] == "Qwen/Qwen2.5-VL-3B-Instruct"  # not a local path: as given
    assert described["PathArguments.hub_token"] == "<set>" and "PathArguments.local_rank" not in described
    assert described["PathArguments.results"] == ["<run>/eval-sft"]  # a list of paths inside the run too


def test_an_input_is_fingerprinted_by_its_content_not_its_name(tmp_path):
    a, b, c = tmp_path / "a" / "ml-1m", tmp_path / "b" / "ml-1m", tmp_path / "c" / "other-name"
    a.mkdir(parents=True)
    (a / "ratings.dat").write_text("1::1::5::1\n")
    shutil.copytree(a, c)
    shutil.copytree(a, b)
    (b / "ratings.dat").write_text("1::2::5::1\n")  # same folder name, same size, other bytes
    assert input_fingerprint(a) == input_fingerprint(c) != input_fingerprint(b)
    assert input_fingerprint("Qwen/Qwen2.5-VL-3B-Instruct") == "name:Qwen/Qwen2.5-VL-3B-Instruct"
    stage = Stage("toy", tmp_path / "stage", {}, {}, ("x",))
    (stage.begin() / "x").write_text("1")
    published = stage.publish({}, 0.0)
    assert input_fingerprint(tmp_path / "stage") == published["fingerprint"]


# ------------------------------------------------------------------------------------------------ each stage alone


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Every stage run alone, in order, each from the FAST recipe's file for it with flags on top (the data stage
    through ``python -m``, the others through ``main(*parse([...]))``)."""
    from hanorec_trl.scripts import dpo, evaluate, hardness, report, sft

    top = tmp_path_factory.mktemp("alone")
    recipe = write_recipe(top / "recipe")
    out = {"recipe": recipe, "top": top}
    data = subprocess.run([sys.executable, "-m", "hanorec_trl.scripts.data", "--config", str(recipe / "data.yaml"),
                           "--output_dir", str(top / "data"), "--max_test_sequences", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    out["data"] = data
    assert data.returncode == 0, data.stderr[-3000:]
    sft.main(*sft.parse(["--config", str(recipe / "sft.yaml"), "--data_path", str(top / "data"),
                         "--output_dir", str(top / "sft"), "--max_steps", "1"]))
    hardness.main(*hardness.parse(["--config", str(recipe / "hardness.yaml"), "--data_path", str(top / "data"),
                                   "--model_name_or_path", str(top / "sft" / "merged"),
                                   "--output_dir", str(top / "hardness"), "--hardness_k", "3"]))
    dpo.main(*dpo.parse(["--config", str(recipe / "dpo.yaml"), "--dataset_name", str(top / "hardness" / "pairs"),
                         "--model_name_or_path", str(top / "sft" / "merged"), "--output_dir", str(top / "dpo"),
                         "--max_steps", "1", "--beta", "0.2"]))
    evaluate.main(*evaluate.parse(["--config", str(recipe / "evaluate.yaml"), "--data_path", str(top / "data"),
                                   "--output_dir", str(top / "eval-baselines")]))
    evaluate.main(*evaluate.parse(["--config", str(TINY / "evaluate.yaml"), "--data_path", str(top / "data"),
                                   "--model_name_or_path", str(top / "sft" / "merged"), "--adapter_path",
                                   str(top / "dpo" / "adapter"), "--name", "hano", "--label", "HaNoRec",
                                   "--similarity_items", "0", "--output_dir", str(top / "eval-hano")]))
    report.main(*report.parse(["--results", str(top / "eval-baselines"), str(top / "eval-hano"),
                               "--output_dir", str(top / "report")]))
    return out


def test_each_stage_runs_alone_from_its_yaml_with_flags_overriding_it(alone):
    from datasets import load_from_disk
    from pipeline_utils import read_yaml

    top, recipe = alone["top"], alone["recipe"]
    assert read_yaml(recipe / "data.yaml")["max_test_sequences"] == 3
    assert record(top / "data")["config"]["DataArguments.max_test_sequences"] == 2  # the flag won
    assert record(top / "data")["config"]["DataArguments.synthetic_num_users"] == 30  # the YAML's
    sft = record(top / "sft")
    assert sft["config"]["SFTConfig.max_steps"] == 1 and sft["summary"]["steps"] == 1
    assert (top / "sft" / "merged" / "config.json").is_file()
    assert record(top / "hardness")["config"]["HardnessArguments.hardness_k"] == 3
    pairs = load_from_disk(str(top / "hardness" / "pairs"))
    assert {"hano_lambda", "hano_lambda_pairwise", "ref_chosen_logps", "ref_rejected_logps"} <= set(pairs.column_names)
    dpo = record(top / "dpo")
    assert dpo["config"]["HaNoDPOConfig.beta"] == 0.2 and read_yaml(recipe / "dpo.yaml")["beta"] == 0.1
    assert dpo["summary"]["steps"] == 1 and dpo["summary"]["reference_logps"] == "shared"
    results = json.loads((top / "report" / "results.json").read_text())
    assert list(results["models"]) == ["baseline-popularity", "hano"] and len(results["test_rows"]) == 2
    assert "| HaNoRec |" in (top / "report" / "results.md").read_text()


def test_a_stage_run_again_is_reused_and_with_another_value_refused(alone, capsys):
    from hanorec_trl.scripts import data

    top, recipe = alone["top"], alone["recipe"]
    before = (top / "data" / RECORD).read_bytes()
    argv = ["--config", str(recipe / "data.yaml"), "--output_dir", str(top / "data"), "--max_test_sequences", "2"]
    assert script_main(data.parse, data.main, argv) == 0
    assert "done earlier with the same configuration" in capsys.readouterr().out
    refused(capsys, script_main(data.parse, data.main, argv[:-1] + ["3"]),
            "DataArguments.max_test_sequences: was 2, now 3")
    assert (top / "data" / RECORD).read_bytes() == before


# ------------------------------------------------------------------------------------------------ standalone DPO


@pytest.fixture(scope="module")
def plain_dpo(tmp_path_factory):
    """``hanorec_trl.scripts.dpo`` as ``trl dpo`` is used: a saved causal LM, a TRL preference dataset without a
    lambda column (saved with ``save_to_disk``), TRL's LoRA flags."""
    from conftest import preference_dataset

    from hanorec_trl.scripts import dpo
    from hanorec_trl.testing import tiny_qwen2, tiny_tokenizer

    top = tmp_path_factory.mktemp("plain-dpo")
    tokenizer = tiny_tokenizer()
    tiny_qwen2(tokenizer).save_pretrained(top / "model")
    tokenizer.save_pretrained(top / "model")
    pairs = preference_dataset(n=6, with_images=False)
    assert "hano_lambda" not in pairs.column_names
    pairs.save_to_disk(str(top / "a" / "pairs"))
    pairs.select(range(5)).save_to_disk(str(top / "b" / "pairs"))  # same folder name, other content
    shutil.copytree(top / "a" / "pairs", top / "c" / "pairs")  # same content, elsewhere

    def argv(pairs_folder: Path) -> list[str]:
        return ["--dataset_name", str(pairs_folder), "--model_name_or_path", str(top / "model"), "--use_peft",
                "--lora_r", "4", "--lora_alpha", "8", "--output_dir", str(top / "out" / "dpo"), "--max_steps", "2",
                "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
                "--save_steps", "1", "--report_to", "none", "--bf16", "false", "--use_cpu", "--beta", "0.1"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = script_main(dpo.parse, dpo.main, argv(top / "a" / "pairs"))
    return {"top": top, "argv": argv, "code": code, "warnings": [str(w.message) for w in caught]}


def test_the_standalone_dpo_script_trains_a_plain_trl_preference_dataset(plain_dpo):
    top = plain_dpo["top"]
    assert plain_dpo["code"] == 0
    trained = record(top / "out" / "dpo")
    assert trained["summary"]["steps"] == 2 and trained["summary"]["reference_logps"] == "computed"
    assert (top / "out" / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
    history = json.loads((top / "out" / "dpo" / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert all(h["hano/lambda_mean"] == 1.0 for h in history if "loss" in h)  # no lambda column: lambda = 1
    assert sum("hano_lambda" in m for m in plain_dpo["warnings"]) == 1, plain_dpo["warnings"]  # said once


def test_a_stage_input_is_compared_by_content_not_by_folder_name(plain_dpo, capsys):
    """`/a/pairs` run again as `/b/pairs` (other rows) is refused naming the input; the same content under another
    path is refused naming the field only (every field counts, a path resolved); the same folder is reused."""
    from hanorec_trl.scripts import dpo

    top, argv = plain_dpo["top"], plain_dpo["argv"]
    assert plain_dpo["code"] == 0
    before = (top / "out" / "dpo" / RECORD).read_bytes()
    a, b, c = (str((top / name / "pairs").resolve()) for name in "abc")
    refused(capsys, script_main(dpo.parse, dpo.main, argv(top / "b" / "pairs")),
            f"DPOScriptArguments.dataset_name: was {a!r}, now {b!r}", "input dataset: was 'content:")
    line = refused(capsys, script_main(dpo.parse, dpo.main, argv(top / "c" / "pairs")),
                   f"DPOScriptArguments.dataset_name: was {a!r}, now {c!r}")
    assert "input dataset" not in line
    assert script_main(dpo.parse, dpo.main, argv(top / "a" / "pairs")) == 0
    assert "done earlier with the same configuration" in capsys.readouterr().out
    assert (top / "out" / "dpo" / RECORD).read_bytes() == before


def test_parsed_arguments_are_plain_trl_dataclasses():
    """What a stage's ``main`` takes: TRL's own config classes, so a user's TRL code calls it directly."""
    from trl import ModelConfig, ScriptArguments, SFTConfig

    from hanorec_trl import HaNoDPOConfig
    from hanorec_trl.scripts import dpo, sft

    script_args, training_args, model_args = dpo.parse(["--output_dir", "x", "--dataset_name", "d", "--use_cpu",
                                                        "--bf16", "false"])
    assert isinstance(script_args, ScriptArguments) and isinstance(training_args, HaNoDPOConfig)
    assert isinstance(model_args, ModelConfig)
    assert isinstance(sft.parse(["--output_dir", "x", "--data_path", "d", "--use_cpu", "--bf16", "false"])[1],
                      SFTConfig)
    assert dataclasses.is_dataclass(script_args)
