"""The run directory of a recipe run: its stage folders (:mod:`.stage`), ``run.json`` and ``run.lock``.

A run directory owns only what it wrote: ``run.json`` (the pipeline's format marker and the stage folders it made),
``run.lock`` and, in each stage folder, the files of that stage's manifest (an unfinished stage: what is under the
entries it declared). ``--overwrite`` deletes exactly those files, after checking that the folder holds nothing else
(anything else is named and the run refused, before a byte is deleted); ``--resume`` deletes nothing but an
incomplete checkpoint the trainer left. No link is followed for writing: a run directory, stage folder or lock that
is a link is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

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

    def lock(self) -> RunLock:
        lock = RunLock(self.root / LOCK_FILE)
        lock.acquire()
        return lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as err:  # pragma: no cover
        return err.errno != errno.ESRCH
    return True


class RunLock:
    """``run.lock``: an exclusive ``flock`` held for the life of the run, recording the holder's pid and host. A
    second run is refused naming them; the lock of a process that died on this host is taken over; a lock from
    another host, or one that is a link, is never touched."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def _holder(self, fd: int) -> dict[str, Any]:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _refuse(self, holder: dict[str, Any], why: str) -> RunDirError:
        since = f", since {holder['started']}" if holder.get("started") else ""
        return RunDirError(f"{self.path.parent} is in use by another run (pid {holder.get('pid', '?')} on host "
                           f"{holder.get('host', '?')}{since}; {why}). Wait for it to finish, or choose another "
                           f"--run_dir. If that run is gone, delete {self.path}.")

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():
            raise RunDirError(f"{self.path} is a link; the lock is never written through a link. Delete it")
        host, pid = socket.gethostname(), os.getpid()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise self._refuse(holder, "it holds the lock") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder deleted the file between our open and flock: try again
        holder = self._holder(fd)
        if holder.get("pid") is not None and holder.get("pid") != pid:
            if holder.get("host") != host:
                os.close(fd)
                raise self._refuse(holder, "its host cannot be checked from here")
            if _pid_alive(int(holder["pid"])):
                os.close(fd)
                raise self._refuse(holder, "that process is alive")
            self.took_over = holder
        payload = json.dumps({"pid": pid, "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload.encode("utf-8"), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def new_run_dir(name: str, parent: str | os.PathLike = "runs") -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (a numeric suffix when it exists)."""
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


__all__ = ["LOCK_FILE", "RUN_FILE", "RUN_FORMAT", "RunDir", "RunDirError", "RunLock", "new_run_dir"]
