"""Helpers for the pipeline tests: small recipe folders (copies of examples/recipes/movielens/tiny with fields
overridden), running a recipe in this process, and one finished run shared by every test module of a session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "recipes" / "movielens" / "tiny"

#: The tiny recipe cut down to seconds per stage: 30 synthetic users and 80 items, 6 training and 3 test sequences,
#: 4 candidates, the 512-token tokenizer, 2 SFT steps, 4 DPO steps (a checkpoint every 2), the popularity baseline
#: (full data only).
FAST: dict[str, dict[str, Any]] = {
    "data": {"synthetic_num_users": 30, "synthetic_num_items": 80, "max_train_sequences": 6, "max_test_sequences": 3,
             "num_candidates": 4, "auc_num_unwatched": 1, "score_permutations": 1, "curve_examples": 0},
    "sft": {"tokenizer": "tiny", "max_steps": 2, "num_train_epochs": None, "save_steps": 1},
    "hardness": {"hardness_k": 4},
    "dpo": {"max_steps": 4, "num_train_epochs": None, "save_steps": 2, "responsiveness_warmup": 1},
    "evaluate": {"similarity_items": 4, "baselines": ["popularity"], "data_matched": False, "eval_batch_size": 8},
}


def read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def write_recipe(folder: Path, overrides: dict[str, dict[str, Any] | None] | None = None, *, base: Path = TINY,
                 fast: bool = True) -> Path:
    """A recipe folder: ``base``'s stage files with FAST (unless ``fast`` is false) and ``overrides`` applied; a
    value None deletes the field, a stage mapped to None is left out (no dpo.yaml: an SFT-only recipe)."""
    folder.mkdir(parents=True)
    stages = {p.stem: read_yaml(p) for p in sorted(base.glob("*.yaml"))}
    for layer in ([FAST] if fast else []) + [overrides or {}]:
        for stage, fields in layer.items():
            if fields is None:
                stages.pop(stage, None)
                continue
            values = stages.setdefault(stage, {})
            for key, value in fields.items():
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = value
    for stage, values in stages.items():
        (folder / f"{stage}.yaml").write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return folder


def edit_recipe(folder: Path, stage: str, **fields: Any) -> None:
    """Change fields of one stage file of a recipe folder."""
    path = folder / f"{stage}.yaml"
    values = read_yaml(path) if path.is_file() else {}
    values.update(fields)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")


def run(*argv: str | Path) -> int:
    """``examples/train_movielens.py`` in this process (the same entry point); returns its exit code."""
    from hanorec_trl.pipeline.recipe import main

    return main([str(a) for a in argv], default_recipe=TINY)


def refused(capsys, code: int, *fragments: str) -> str:
    """The exit code was 2 with one ``error:`` line (no traceback) that holds every fragment; returns it."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file and link under ``folder`` (relative path -> bytes, or the link's target)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(folder))] = b"-> " + str(path.readlink()).encode()
        elif path.is_file():
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def record(folder: Path, name: str = "stage.json") -> dict[str, Any]:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a finished run directory (its own files, hard links avoided: a test may change them)."""
    shutil.copytree(source, target, symlinks=True)
    return target


_SESSION: dict[str, Path] = {}


def finished_run(tmp_path_factory) -> dict[str, Path]:
    """One run of the FAST recipe, made once per test session (every module reads it, none changes it: tests work
    on copies). Returns its recipe folder and run directory."""
    if "run" not in _SESSION:
        folder = tmp_path_factory.mktemp("finished-run")
        recipe = write_recipe(folder / "recipe")
        root = folder / "run"
        assert run("--recipe", recipe, "--run_dir", root) == 0
        _SESSION.update(recipe=recipe, run=root)
    return dict(_SESSION)


def adapter_bytes(stage: Path) -> bytes:
    return (stage / "adapter" / "adapter_model.safetensors").read_bytes()


def losses(stage: Path) -> list[tuple[int, float]]:
    """(step, loss) of every logged training step of a stage's log history."""
    history = json.loads((stage / "log_history.json").read_text())
    return [(h["step"], h["loss"]) for h in history if "loss" in h]
