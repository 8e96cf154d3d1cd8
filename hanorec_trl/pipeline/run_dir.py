"""The run directory of a recipe run: its stage folders (:mod:`.stage`), ``run.json`` and ``run.lock``.

It owns only what it wrote (``run.json``, the lock, each stage's manifest or declared entries): ``--overwrite``
deletes exactly those, after refusing a folder that holds anything else; ``--resume`` deletes nothing but an
incomplete checkpoint. No link is followed for writing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..files import LockFile
from .stage import PARTIAL, RECORD, STARTED, StageError, owned_paths, read_json, remove_owned, write_json

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
RUN_FORMAT = "hanorec_trl.pipeline/2"


class RunDirError(StageError):
    """The run directory cannot be used as asked; the message names the entry and what to do."""


class RunDir:
    """``root`` as a run directory: the checks before anything is touched, the lock, overwrite and resume."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def stage_folders(self) -> list[Path]:
        """The stage folders (complete and ``.partial``) ``run.json`` lists, that exist."""
        stages = read_json(self.root / RUN_FILE, "run file").get("stages", [])
        folders = [self.root / name for name in stages] + [self.root / (name + PARTIAL) for name in stages]
        return [f for f in folders if f.exists() or f.is_symlink()]

    def ownership_problem(self) -> str | None:
        """Why ``root`` cannot be proven to be a run directory written by this pipeline, or None."""
        run_file = self.root / RUN_FILE
        if run_file.is_symlink() or not run_file.is_file():
            return f"{run_file} does not exist (the pipeline writes it first in every run directory)"
        try:
            recorded = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{run_file} is not the pipeline's run file (it does not parse as JSON: {err})"
        if not isinstance(recorded, dict) or recorded.get("format") != RUN_FORMAT:
            marker = recorded.get("format") if isinstance(recorded, dict) else None
            return f"{run_file} is not this pipeline's run file (format {marker!r}, not {RUN_FORMAT!r})"
        return None

    def foreign_entries(self) -> list[str]:
        """Everything in the run directory that the run did not write (relative paths), links included."""
        listed = set(read_json(self.root / RUN_FILE, "run file").get("stages", []))
        foreign = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            stage = name[: -len(PARTIAL)] if name.endswith(PARTIAL) else name
            if name in (RUN_FILE, LOCK_FILE) and not entry.is_symlink():
                continue
            if stage not in listed or entry.is_symlink() or not entry.is_dir():
                foreign.append(name)
                continue
            if not ((entry / RECORD).is_file() or (entry / STARTED).is_file()):
                foreign.append(name)
                continue
            foreign += [f"{name}/{path}" for path in owned_paths(entry)[1]]
        return foreign

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, touching nothing, a run directory this run may not use."""
        root = self.root
        if root.is_symlink():
            raise RunDirError(f"run directory {root} is a link; give the folder itself")
        if root.exists() and not root.is_dir():
            raise RunDirError(f"run directory {root} exists and is not a folder")
        entries = [e for e in root.iterdir() if e.name != LOCK_FILE] if root.is_dir() else []
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite exclude each other: continue the run or replace it")
        if not entries:
            if resume:
                raise RunDirError(f"--resume: {root} holds no run to continue; drop --resume")
            return
        if not (resume or overwrite):
            raise RunDirError(f"run directory {root} exists and is not empty: pass --resume to continue that run, "
                              "--overwrite to replace it, or choose a new --run_dir")
        problem = self.ownership_problem()
        if problem:
            raise RunDirError(f"{'--resume' if resume else '--overwrite'}: {root} is not a run directory of this "
                              f"pipeline: {problem}. Refusing to touch it")
        if overwrite:
            foreign = self.foreign_entries()
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise RunDirError(f"--overwrite: {root} holds what this pipeline did not write ({shown}); nothing "
                                  "was deleted. Move those away first, or choose a new --run_dir")

    def check_inputs_outside(self, paths: dict[str, str | None], *, overwrite: bool) -> None:
        """Refuse inputs (``data_dir``, a local model, a recipe file) inside a run directory that --overwrite
        empties."""
        if not overwrite or not self.root.is_dir():
            return
        root = self.root.resolve()
        for name, value in paths.items():
            if value and (Path(value).expanduser().exists()):
                path = Path(value).expanduser().resolve()
                if path == root or root in path.parents:
                    raise RunDirError(f"{name} {value} lies inside {root}, which --overwrite empties; move it out of "
                                      "the run directory first")

    def check_reuse_source(self) -> None:
        """Refuse, before anything is copied, a ``--reuse_from`` that is not a run directory of this pipeline or
        holds a stage record that does not parse."""
        if not self.root.is_dir():
            raise RunDirError(f"--reuse_from {self.root}: no such folder")
        problem = self.ownership_problem()
        if problem:
            raise RunDirError(f"--reuse_from {self.root} is not a run directory of this pipeline: {problem}")
        for folder in self.stage_folders():
            for record in (folder / RECORD, folder / STARTED):
                if record.is_file():
                    read_json(record, "stage record")

    def prepare(self, stages: list[str], *, overwrite: bool, extra: dict[str, Any] | None) -> None:
        """Create the run directory (or empty it for ``overwrite``: only the files it owns) and write ``run.json``
        listing ``stages`` and ``extra`` (None: keep the recorded ones, and write only to list a new stage)."""
        if overwrite and self.root.is_dir() and not self.ownership_problem():
            for folder in self.stage_folders():
                remove_owned(folder, owned_paths(folder)[0])
        self.root.mkdir(parents=True, exist_ok=True)
        recorded = {}
        if (self.root / RUN_FILE).is_file():
            recorded = read_json(self.root / RUN_FILE, "run file")
        listed = set(recorded.get("stages", []))
        if extra is None and set(stages) <= listed:
            return
        kept = {k: v for k, v in recorded.items() if k not in ("format", "stages")} if extra is None else extra
        write_json(self.root / RUN_FILE, {"format": RUN_FORMAT, "stages": sorted(listed | set(stages)), **kept})

    def lock(self) -> LockFile:
        lock = LockFile(self.root / LOCK_FILE)
        lock.acquire()
        return lock


def new_run_dir(name: str, parent: str | os.PathLike = "runs") -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (a numeric suffix when it exists)."""
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


__all__ = ["LOCK_FILE", "RUN_FILE", "RUN_FORMAT", "RunDir", "RunDirError", "new_run_dir"]
