"""The run directory: one subfolder per stage, completion markers, refusal of foreign or non-empty folders.

Layout (``<run>`` = ``--output_dir``)::

    <run>/run.json                 the arguments of the latest invocation and the pipeline version
    <run>/data/                    dataset (synthetic: generated here), frozen split, data summary
    <run>/model/                   the base model (built-in models are written here; others are referenced)
    <run>/sft/                     SFT trainer checkpoints, adapter, merged SFT model
    <run>/hardness/                item embeddings (encoder = SFT model) and lambda per DPO row
    <run>/dpo/<variant>/           DPO trainer checkpoints, adapter, log history
    <run>/eval/<model>/            metrics on the test split (+ title-image similarities)
    <run>/report/                  results.md, results.json, plots

A stage is finished when its folder holds ``STAGE_DONE.json``, written last and atomically (temporary file +
``os.replace``); it records the arguments the stage depended on. A later ``--resume`` skips finished stages and
refuses to continue when those arguments changed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MARKER = "STAGE_DONE.json"
RUN_FILE = "run.json"
RUN_FORMAT = "hanorec_trl.pipeline/1"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists and is not empty, not ours, arguments changed...)."""


def write_json_atomic(path: Path, payload: Any, *, sort_keys: bool = True) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=sort_keys, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _normalise(value: Any) -> Any:
    """JSON round-trip, so that tuples/lists and ints/floats compare as they were stored."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class RunDir:
    """A pipeline run directory (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ------------------------------------------------------------------------------------------------ folders
    def stage_dir(self, stage: str, name: str | None = None) -> Path:
        return self.root / stage if name is None else self.root / stage / name

    def is_done(self, folder: Path) -> bool:
        return (folder / MARKER).is_file()

    def marker(self, folder: Path) -> dict[str, Any]:
        return read_json(folder / MARKER)

    def mark_done(self, folder: Path, inputs: dict[str, Any], summary: dict[str, Any], seconds: float) -> None:
        """Record a finished stage: written last, atomically."""
        write_json_atomic(
            folder / MARKER,
            {"inputs": _normalise(inputs), "summary": summary, "seconds": round(seconds, 3),
             "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
        )

    def check_inputs(self, folder: Path, stage: str, inputs: dict[str, Any]) -> None:
        """Refuse to reuse a finished stage whose recorded arguments differ from the current ones."""
        recorded = self.marker(folder).get("inputs", {})
        current = _normalise(inputs)
        changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        if changed:
            shown = "; ".join(f"{k}: was {recorded.get(k)!r}, now {current.get(k)!r}" for k in changed[:8])
            raise RunDirError(
                f"stage '{stage}' in {self.root} was produced with other arguments ({shown}). Resume with the "
                "arguments (or the --config recipe) of the original run, or start a new run directory."
            )

    # ------------------------------------------------------------------------------------------------ creation
    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Create the run directory, or accept it for ``resume``, or replace it for ``overwrite``.

        An existing non-empty folder is refused unless ``resume`` (it must be a run directory) or ``overwrite``
        (it must be a run directory: this never deletes a folder the pipeline did not write).
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise RunDirError(f"--output_dir {root} exists and is not a folder")
        nonempty = root.is_dir() and any(root.iterdir())
        ours = (root / RUN_FILE).is_file()
        if resume:
            if not nonempty:
                raise RunDirError(f"--resume: {root} has no run to resume (missing or empty); drop --resume")
            if not ours:
                raise RunDirError(f"--resume: {root} is not a run directory of this pipeline (no {RUN_FILE})")
            return
        if nonempty:
            if not overwrite:
                raise RunDirError(
                    f"--output_dir {root} exists and is not empty. Pass --resume to continue that run, --overwrite to "
                    "replace it, or choose a new --output_dir."
                )
            if not ours:
                raise RunDirError(
                    f"--overwrite: {root} is not a run directory of this pipeline (no {RUN_FILE}); "
                    "refusing to delete it"
                )
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)

    def write_run_file(self, config: dict[str, Any], extra: dict[str, Any]) -> None:
        write_json_atomic(self.root / RUN_FILE, {"format": RUN_FORMAT, "config": config, **extra})

    def fresh_stage(self, folder: Path, keep: tuple[str, ...] = ()) -> None:
        """Empty an unfinished stage folder (left by an interrupted run), keeping the named entries."""
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name in keep:
                    continue
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        folder.mkdir(parents=True, exist_ok=True)


def default_run_dir(dataset: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/<dataset>-<YYYYmmdd-HHMMSS>``, with a numeric suffix when that folder exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{dataset}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


__all__ = ["MARKER", "RUN_FILE", "RunDir", "RunDirError", "default_run_dir", "read_json", "write_json_atomic"]
