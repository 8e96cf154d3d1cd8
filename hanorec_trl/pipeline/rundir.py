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
``os.replace``); it records the arguments the stage depended on. A stage that starts records the same arguments in
``STAGE_STARTED.json``. A later ``--resume`` skips finished stages and refuses to continue when those arguments
changed, for a finished stage and for an unfinished one whose checkpoints would be continued. Among those arguments
is ``upstream``: the stage folders it read and when each finished, so that a stage whose input was produced again is
redone rather than reused. A stage may declare
arguments it no longer depends on (``ignored``: e.g. plain DPO and the hardness temperature); values recorded for them
by earlier versions are not compared.

Reuse (``--run.reuse_from <other run>``, :meth:`RunDir.reuse_stage`): a stage not finished here whose folder is
finished in the other run directory, with the same arguments, is copied from there (hard links where the file system
allows) instead of being run again: a sweep of DPO settings trains SFT once.

Ownership: a folder is a run directory of this pipeline only when its ``run.json`` parses and carries the pipeline's
format marker (``"format": "hanorec_trl.pipeline/..."``) and its top level holds nothing but the entries above. Only
such a folder is ever emptied (``--overwrite``) or has its stage folders cleared (``--resume``). While a run works in
it, the folder holds ``run.lock`` (pid and host of the holder; :class:`RunLock`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..files import atomic_file

MARKER = "STAGE_DONE.json"
STARTED = "STAGE_STARTED.json"
RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
RUN_FORMAT = "hanorec_trl.pipeline/1"
FORMAT_PREFIX = "hanorec_trl.pipeline/"
STAGE_FOLDERS = ("data", "model", "sft", "hardness", "dpo", "eval", "report")
UPSTREAM = "upstream"  # recorded by each stage: the stage folders it read, with when each finished
# recorded by later versions only: a marker without them is accepted on resume (never on reuse)
LATER_INPUTS = (UPSTREAM,)
# what the pipeline writes at the top of a run directory (and leftovers of its atomic writes)
_OWN_FILES = (RUN_FILE, LOCK_FILE)
_OWN_TEMPORARY = re.compile(r"^run\.json\..*\.tmp$")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists and is not empty, not ours, arguments changed...)."""


def write_json_atomic(path: Path, payload: Any, *, sort_keys: bool = True) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=sort_keys, default=str)
        f.write("\n")


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

    def check_inputs(self, folder: Path, stage: str, inputs: dict[str, Any], ignored: Iterable[str] = ()) -> None:
        """Refuse to reuse a finished stage whose recorded arguments differ from the current ones (``ignored``:
        arguments the stage no longer depends on)."""
        changed = _changes(self.marker(folder).get("inputs", {}), inputs, ignored, lenient=True)
        if changed:
            raise RunDirError(
                f"stage '{stage}' in {self.root} was produced with other arguments ({changed}). Resume with the "
                "arguments (or the --config recipe) of the original run, or start a new run directory."
            )

    def mark_started(self, folder: Path, inputs: dict[str, Any]) -> None:
        """Record the arguments of a stage that starts (before it writes anything else)."""
        write_json_atomic(folder / STARTED, {"inputs": _normalise(inputs),
                                             "started": time.strftime("%Y-%m-%d %H:%M:%S")})

    def check_started(self, folder: Path, stage: str, inputs: dict[str, Any], keep: Iterable[str],
                      ignored: Iterable[str] = ()) -> str | None:
        """Before an unfinished stage continues what an earlier attempt left (``keep``: its checkpoints), refuse
        when that attempt ran with other arguments. Returns a note when the earlier attempt recorded nothing (a run
        directory of an earlier version), None otherwise."""
        kept = [folder / name for name in keep if (folder / name).exists()]
        if not any(path.is_file() or any(path.iterdir()) for path in kept):
            return None  # nothing is continued: the stage starts over with the current arguments
        try:
            recorded = read_json(folder / STARTED).get("inputs", {})
        except FileNotFoundError:
            return (f"[{stage}] {folder} holds checkpoints but no {STARTED} (an earlier version of the pipeline): "
                    "their arguments cannot be checked")
        changed = _changes(recorded, inputs, ignored, lenient=True)
        if changed:
            raise RunDirError(
                f"stage '{stage}' in {self.root} was started with other arguments ({changed}) and its checkpoints "
                f"would be continued with the new ones. Resume with the arguments of the original run, or delete "
                f"{folder} to restart that stage from scratch."
            )
        return None

    def upstream(self, folders: Iterable[Path]) -> dict[str, Any]:
        """The finished stage folders among ``folders`` (those a stage reads), each with when it finished: recorded
        with the stage's arguments, so that a stage whose input was produced again (or elsewhere) is redone."""
        return {UPSTREAM: {str(f.relative_to(self.root)): self.marker(f).get("finished")
                           for f in folders if self.is_done(f)}}

    def outdated(self, folder: Path, inputs: dict[str, Any]) -> str | None:
        """What a finished stage read that was produced again since (``'sft was redone'``), or None."""
        recorded = self.marker(folder).get("inputs", {}).get(UPSTREAM)
        current = inputs.get(UPSTREAM)
        if recorded is None or current is None:
            return None  # an earlier version's marker, or a stage that reads no other stage
        redone = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        return f"{', '.join(redone)} {'was' if len(redone) == 1 else 'were'} redone" if redone else None

    def reuse_stage(self, source: RunDir, folder: Path, inputs: dict[str, Any], ignored: Iterable[str] = ()) -> bool:
        """Copy ``folder``'s stage from the run directory ``source`` when it is finished there with the same
        arguments; returns whether it did. Files are hard-linked (copied across file systems): the pipeline never
        writes into a finished stage, and deleting either run removes only its own links. The completion marker is
        written last and names the source (``reused_from``), so an interrupted copy is not taken as finished."""
        origin = source.root / folder.relative_to(self.root)
        if not source.is_done(origin) or _changes(source.marker(origin).get("inputs", {}), inputs, ignored):
            return False
        self.fresh_stage(folder)
        shutil.copytree(origin, folder, symlinks=True, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=lambda where, names: [MARKER] if Path(where) == origin else [])
        marker = source.marker(origin)
        marker["reused_from"] = str(origin.resolve())
        write_json_atomic(folder / MARKER, marker)
        return True

    # ------------------------------------------------------------------------------------------------ ownership
    def ownership_problem(self, *, whole_layout: bool) -> str | None:
        """Why this folder cannot be proven to be a run directory of this pipeline, or None when it is.

        Proof: ``run.json`` parses and carries the pipeline's format marker, and the top-level entries are the
        pipeline's (stage folders as real folders, not links). ``whole_layout``: every top-level entry must be one
        of the pipeline's (needed before deleting the folder); otherwise only the pipeline's names are checked.
        """
        root = self.root
        run_file = root / RUN_FILE
        if not run_file.is_file() or run_file.is_symlink():
            return f"{run_file} does not exist (the pipeline writes it first in every run directory)"
        try:
            recorded = read_json(run_file)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{run_file} is not the pipeline's run file (it does not parse as JSON: {err})"
        marker = recorded.get("format") if isinstance(recorded, dict) else None
        if not isinstance(marker, str) or not marker.startswith(FORMAT_PREFIX):
            return (f"{run_file} is not the pipeline's run file (its format marker is {marker!r}, not "
                    f"{RUN_FORMAT!r})")
        for entry in sorted(root.iterdir()):
            name = entry.name
            if name in STAGE_FOLDERS:
                if entry.is_symlink() or not entry.is_dir():
                    return f"{entry} is not a folder written by the pipeline (a link or a file)"
            elif name in _OWN_FILES or _OWN_TEMPORARY.match(name):
                if entry.is_symlink() or not entry.is_file():
                    return f"{entry} is not a file written by the pipeline"
            elif whole_layout:
                return f"{entry} is not part of a pipeline run directory (the pipeline never writes it)"
        return None

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, without touching anything, what :meth:`prepare` would refuse (call before loading anything)."""
        root = self.root
        if root.is_symlink() and (resume or overwrite):
            raise RunDirError(f"--output_dir {root} is a link; give the folder it points to")
        if root.exists() and not root.is_dir():
            raise RunDirError(f"--output_dir {root} exists and is not a folder")
        entries = [e for e in root.iterdir() if e.name != LOCK_FILE] if root.is_dir() else []
        if resume:
            if not entries:
                raise RunDirError(f"--resume: {root} has no run to resume (missing or empty); drop --resume")
            problem = self.ownership_problem(whole_layout=False)
            if problem:
                raise RunDirError(f"--resume: {root} is not a run directory of this pipeline: {problem}; "
                                  "refusing to touch it")
            recorded = read_json(root / RUN_FILE).get("format")
            if recorded != RUN_FORMAT:
                raise RunDirError(f"--resume: {root / RUN_FILE} was written by pipeline format {recorded!r}; this "
                                  f"version writes {RUN_FORMAT!r} and cannot continue it. Start a new run directory.")
            return
        if entries:
            if not overwrite:
                raise RunDirError(
                    f"--output_dir {root} exists and is not empty. Pass --resume to continue that run, --overwrite to "
                    "replace it, or choose a new --output_dir."
                )
            problem = self.ownership_problem(whole_layout=True)
            if problem:
                raise RunDirError(f"--overwrite: {root} is not a run directory of this pipeline: {problem}; "
                                  "refusing to delete it")

    def check_paths_outside(self, paths: dict[str, str | os.PathLike | None], *, resume: bool,
                            overwrite: bool) -> None:
        """Refuse input paths (``--data_dir``, ``--model``, ``--config``, caches...) that lie where this run would
        delete: anywhere inside the folder for ``--overwrite``, inside a stage folder for ``--resume`` (an unfinished
        stage's folder is emptied). ``paths``: argument name -> path (None: not given)."""
        if not (resume or overwrite) or not self.root.is_dir():
            return
        root = self.root.resolve()
        areas = [root] if overwrite else [root / name for name in STAGE_FOLDERS]
        for name, value in paths.items():
            if value is None or value == "":
                continue
            path = Path(value).expanduser().resolve()
            for area in areas:
                if path == area or area in path.parents:
                    flag = "--overwrite" if overwrite else "--resume"
                    what = "deletes the whole folder" if overwrite else "empties the folder of an unfinished stage"
                    raise RunDirError(
                        f"{name} {value} lies inside {area}, which {flag} {what}; move it out of the run directory "
                        f"(or choose another --output_dir) first"
                    )

    # ------------------------------------------------------------------------------------------------ creation
    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Create the run directory, or accept it for ``resume``, or empty it for ``overwrite``.

        Checks again as :meth:`check` does (call it holding the run's lock). ``overwrite`` deletes the pipeline's
        own top-level entries one by one (links are removed, never followed), never the lock file.
        """
        self.check(resume=resume, overwrite=overwrite)
        root = self.root
        if not resume and overwrite and root.is_dir():
            for entry in root.iterdir():
                if entry.name != LOCK_FILE:
                    _remove(entry)
        root.mkdir(parents=True, exist_ok=True)

    def write_run_file(self, config: dict[str, Any], extra: dict[str, Any]) -> None:
        write_json_atomic(self.root / RUN_FILE, {"format": RUN_FORMAT, "config": config, **extra})

    def fresh_stage(self, folder: Path, keep: tuple[str, ...] = ()) -> None:
        """Empty an unfinished stage folder (left by an interrupted run), keeping the named entries."""
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name in keep:
                    continue
                _remove(entry)
        folder.mkdir(parents=True, exist_ok=True)

    def lock(self) -> RunLock:
        """Take the run directory's lock (creating the folder); see :class:`RunLock`."""
        lock = RunLock(self.root / LOCK_FILE)
        lock.acquire()
        return lock


#: recorded arguments that name files or folders: compared as absolute paths ('../data/ml-1m' from one folder and
#: '/work/data/ml-1m' are the same input)
PATH_INPUTS = ("data_dir", "interactions", "items", "image_dir")


def _comparable(name: str, value: Any) -> Any:
    """A recorded or current argument as it is compared: paths resolved (relative to the working folder), the
    trainer-field mappings of earlier versions (``*_extra_args``: a JSON string, ``{}`` or None) as one mapping."""
    if name in PATH_INPUTS and isinstance(value, str) and value:
        return os.path.abspath(os.path.expanduser(value))
    if name == "model" and isinstance(value, str) and value and os.path.exists(os.path.expanduser(value)):
        return os.path.abspath(os.path.expanduser(value))
    if name.endswith("_extra_args"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return value
        return _normalise(value) or None
    return value


def _changes(recorded: dict[str, Any], inputs: dict[str, Any], ignored: Iterable[str] = (), *,
             lenient: bool = False) -> str:
    """The arguments that differ, as 'name: was X, now Y; ...' (empty when none). ``ignored``: arguments the stage no
    longer depends on (not in ``inputs``); what an earlier version recorded for them is not compared. ``lenient``
    (resume, not reuse): :data:`LATER_INPUTS` that an earlier version did not record are not compared either."""
    current = _normalise(inputs)
    no_longer_recorded = set(ignored) - set(current)
    recorded = {k: v for k, v in recorded.items() if k not in no_longer_recorded}
    if lenient:
        current = {k: v for k, v in current.items() if k in recorded or k not in LATER_INPUTS}
    changed = sorted(k for k in set(recorded) | set(current)
                     if _comparable(k, recorded.get(k)) != _comparable(k, current.get(k)))
    return "; ".join(f"{k}: was {recorded.get(k)!r}, now {current.get(k)!r}" for k in changed[:8])


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link to ``source`` at ``destination``, or a copy where links cannot be made (another file system)."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


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
    """An exclusive lock on a run directory: ``run.lock``, held (``flock``) for the life of the run.

    The file records the holder's pid and host. A second run on the same folder is refused with them named. A lock
    left by a process that died (SIGKILL, power loss) is taken over when its pid is not alive on this host; a lock
    from another host is never taken over (delete the file once that run is gone).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _refuse(self, holder: dict[str, Any], why: str) -> RunDirError:
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        since = f", since {holder['started']}" if holder.get("started") else ""
        return RunDirError(
            f"{self.path.parent} is in use by another run ({who}{since}; {why}). Wait for it to finish, or choose "
            f"another --output_dir. If that run is gone, delete {self.path}."
        )

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        host, pid = socket.gethostname(), os.getpid()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder()
                os.close(fd)
                raise self._refuse(holder, "it holds the lock") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (deleted) the file between our open and flock: try again
                os.close(fd)
                continue
            break
        holder = self._holder()
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
        os.close(self.fd)  # closing releases the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        if self.fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def on_main_process(state, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the main process while the others wait; an error there is raised on every process (as a
    :class:`RunDirError` carrying its message on the others), so that no process waits forever at a barrier.
    ``state``: ``accelerate.PartialState``. Returns ``fn``'s result on the main process, None elsewhere."""
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the others have heard of it
            error = err
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = [None if error is None else f"{error}"]
        broadcast_object_list(shared, from_process=0)
        if shared[0] is not None and error is None:
            raise RunDirError(f"(main process) {shared[0]}")
    if error is not None:
        raise error
    state.wait_for_everyone()
    return result


def default_run_dir(dataset: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/<dataset>-<YYYYmmdd-HHMMSS>``, with a numeric suffix when that folder exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{dataset}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


__all__ = ["LOCK_FILE", "MARKER", "RUN_FILE", "RUN_FORMAT", "STARTED", "RunDir", "RunDirError", "RunLock",
           "default_run_dir", "on_main_process", "read_json", "write_json_atomic"]
