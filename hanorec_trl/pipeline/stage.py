"""A stage's output folder, identified by its content (``docs/design.md``, "Stages").

A stage (data, SFT, hardness, DPO, evaluation, report) writes into ``<output_dir>.partial/`` and, once everything is
written, records ``stage.json`` there and renames the folder to ``<output_dir>``: a folder without ``.partial`` is
complete, whatever was interrupted. ``stage.json`` holds

* the stage's configuration: every field of its dataclasses, resolved (paths inside the run directory relative to
  it, so that another run directory can reuse the stage);
* the fingerprint of every input: an upstream stage's output fingerprint, or the content hash of the files a path
  names (a data folder, a model folder), or the name itself for what is not a local path (a hub name);
* the manifest of what the stage wrote (relative path -> size, SHA-256) and its hash, the stage's output
  fingerprint, which the stages downstream record as their input.

The key is the hash of configuration and inputs. A stage runs only into a new folder; a complete folder with the same
key is reused, one with another key is refused naming the fields and inputs that differ; an unfinished
``.partial`` folder is continued (training from its last checkpoint) with the same key only. Nothing is exempt from
the key except ``local_rank``, which the launcher sets differently on each process of one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_file

RECORD = "stage.json"
STARTED = "started.json"
PARTIAL = ".partial"
PER_PROCESS_FIELDS = ("local_rank",)  # set by the launcher, one value per process of the same run
SECRET_FIELDS = ("hub_token",)
_hash_cache: dict[tuple, str] = {}


class StageError(RuntimeError):
    """A stage folder that cannot be used as asked; the message names the folder, the fields or the file."""


def write_json(path: Path, payload: Any) -> None:
    """JSON through a temporary file and ``os.replace`` (never seen half written)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: Path, what: str = "file") -> Any:
    """JSON from ``path``; a file that does not parse (truncated, edited) is a :class:`StageError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StageError(f"{path} is not a readable {what} ({err}); it was cut short or edited. Delete that folder "
                         "to produce it again") from None


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def manifest(folder: Path, entries: Iterable[str]) -> dict[str, list]:
    """Relative path -> [size, sha256] of every file under the given entries of ``folder``; links are refused."""
    files: dict[str, list] = {}
    for entry in entries:
        top = folder / entry
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*"))
        for path in paths:
            if path.is_symlink():
                raise StageError(f"{path} is a link; a stage writes files and folders only")
            if path.is_file():
                files[str(path.relative_to(folder))] = [path.stat().st_size, _file_sha256(path)]
    return files


def content_hash(paths: Sequence[Path]) -> str:
    """The SHA-256 of the given files and folders' contents (names, sizes and bytes); what a data folder or a local
    model contributes to the key of the stages that read it."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            name = file.name if file == path else str(file.relative_to(path))
            digest.update(f"{name}\0{file.stat().st_size}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def input_fingerprint(value: str | os.PathLike) -> str:
    """What an input contributes to a key: the output fingerprint of a stage folder, the content hash of another
    local file or folder, else the value itself (a hub model name, a built-in model)."""
    path = Path(value).expanduser()
    if (path / RECORD).is_file():
        return read_json(path / RECORD, "stage record")["fingerprint"]
    if path.exists():
        return "content:" + content_hash([path])
    return f"name:{value}"


def describe(*configs: Any, root: Path | None = None) -> dict[str, Any]:
    """Every field of the given dataclasses, JSON-ready, under ``ClassName.field``; paths inside ``root`` relative
    to it."""
    described: dict[str, Any] = {}
    base = root.resolve() if root is not None else None
    for config in configs:
        name = type(config).__name__
        for field in dataclasses.fields(config):
            if field.name in PER_PROCESS_FIELDS:
                continue
            value = getattr(config, field.name)
            if field.name in SECRET_FIELDS and value is not None:
                value = "<set>"
            elif isinstance(value, str) and value and (os.sep in value or value.startswith((".", "~"))):
                value = _canonical_path(value, base)
            described[f"{name}.{field.name}"] = value
    return json.loads(json.dumps(described, default=str))


def _canonical_path(value: str, base: Path | None) -> str:
    """A path as it is compared: ``<run>/...`` inside the run directory, absolute where it exists, else as given (a
    hub name such as ``Qwen/Qwen2.5-VL-3B-Instruct``)."""
    resolved = Path(value).expanduser().resolve()
    if base is not None and (resolved == base or base in resolved.parents):
        return "<run>/" + str(resolved.relative_to(base))
    return str(resolved) if resolved.exists() else value


def stage_key(config: dict[str, Any], inputs: dict[str, str]) -> str:
    payload = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name: was X, now Y' for every key in either mapping whose values differ (a key one side lacks differs)."""
    missing = "<not recorded>"
    return [f"{k}: was {recorded.get(k, missing)!r}, now {current.get(k, missing)!r}"
            for k in sorted(set(recorded) | set(current)) if recorded.get(k, missing) != current.get(k, missing)]


class Stage:
    """The output folder of one stage (see the module docstring).

    ``config``: :func:`describe` of the stage's dataclasses; ``inputs``: input name -> :func:`input_fingerprint`;
    ``writes``: the entries the stage creates in its folder (what it owns: only those are ever deleted).
    """

    def __init__(self, name: str, folder: str | os.PathLike, config: dict[str, Any], inputs: dict[str, str],
                 writes: Sequence[str]):
        self.name, self.folder = name, Path(folder)
        self.config, self.inputs, self.writes = config, inputs, tuple(writes)
        self.key = stage_key(config, inputs)
        self.partial = self.folder.with_name(self.folder.name + PARTIAL)

    # ----------------------------------------------------------------------------------------------- state
    def record(self) -> dict[str, Any] | None:
        """The finished stage's record, or None when the folder does not exist yet."""
        if not self.folder.exists():
            return None
        if self.folder.is_symlink() or not self.folder.is_dir():
            raise StageError(f"{self.folder} is a link or a file, not a stage folder")
        if not (self.folder / RECORD).is_file():
            raise StageError(f"{self.folder} exists but holds no {RECORD}: it was not written by this pipeline's "
                             f"{self.name} stage. Choose another output folder, or move it away")
        return read_json(self.folder / RECORD, "stage record")

    def mismatch(self, record: dict[str, Any], where: Path) -> StageError:
        changed = differences(record.get("config", {}), self.config)
        changed += [f"input {d}" for d in differences(record.get("inputs", {}), self.inputs)]
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        return StageError(f"{where} holds the {self.name} stage made from something else ({shown}). Nothing was "
                          "changed. Use another output folder (or run directory) for the new configuration, or "
                          "delete that folder to redo the stage")

    def done(self) -> dict[str, Any] | None:
        """The record when the stage is complete with this key; :class:`StageError` when it is complete with another
        key; None when it still has to run."""
        record = self.record()
        if record is None:
            return None
        if record.get("key") != self.key:
            raise self.mismatch(record, self.folder)
        return record

    def check_partial(self, discard_other: bool = False) -> bool:
        """Whether an unfinished attempt with this key can be continued. One with another key is a
        :class:`StageError`, or, with ``discard_other`` (a stage with nothing to continue: no checkpoints), deleted
        when it holds nothing but what the pipeline wrote."""
        if not self.partial.exists():
            return False
        if self.partial.is_symlink() or not (self.partial / STARTED).is_file():
            raise StageError(f"{self.partial} is not an unfinished stage folder of this pipeline (a link, or no "
                             f"{STARTED}); move it away")
        started = read_json(self.partial / STARTED, "stage start record")
        if started.get("key") == self.key:
            return True
        owned, foreign = owned_paths(self.partial)
        if not discard_other or foreign:
            raise self.mismatch(started, self.partial)
        remove_owned(self.partial, owned)
        return False

    # ----------------------------------------------------------------------------------------------- writing
    def begin(self, keep: Sequence[str] = ()) -> Path:
        """The folder to write into: the unfinished attempt with the same key, its entries other than ``keep`` (a
        trainer's checkpoints) removed, or a new one."""
        if self.check_partial(discard_other=not keep):
            for entry in self.writes:
                path = self.partial / entry
                if entry not in keep and (path.exists() or path.is_symlink()):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        else:
            self.partial.mkdir(parents=True)
            write_json(self.partial / STARTED, {"stage": self.name, "key": self.key, "writes": list(self.writes),
                                                "config": self.config, "inputs": self.inputs,
                                                "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        return self.partial

    def publish(self, summary: dict[str, Any], seconds: float, reused_from: str | None = None) -> dict[str, Any]:
        """Record what the stage wrote and make the folder complete (one rename)."""
        files = manifest(self.partial, [w for w in self.writes if (self.partial / w).exists()])
        record = {"stage": self.name, "key": self.key, "config": self.config, "inputs": self.inputs,
                  "writes": list(self.writes), "files": files,
                  "fingerprint": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
                  "summary": summary, "seconds": round(seconds, 3), "reused_from": reused_from,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(self.partial / RECORD, record)
        os.rename(self.partial, self.folder)
        return record

    def copy_from(self, source: Path) -> dict[str, Any] | None:
        """Reuse the same stage finished in another run directory (same key): its files hard-linked (copied across
        file systems) into this folder. Returns the new record, or None when ``source`` has no such stage."""
        other = Stage(self.name, source, self.config, self.inputs, self.writes)
        try:
            record = other.done()
        except StageError:
            return None
        if record is None:
            return None
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        for relative in record["files"]:
            target = self.partial / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source / relative, target)
            except OSError:
                shutil.copy2(source / relative, target)
        return self.publish(record["summary"], 0.0, reused_from=str(source.resolve()))


def owned_paths(folder: Path) -> tuple[list[str], list[str]]:
    """The files of a stage folder (complete or ``.partial``) the pipeline wrote, and the others, relative to it.
    Complete: the record's manifest; unfinished: everything under its declared ``writes`` (a trainer's checkpoints)."""
    complete = (folder / RECORD).is_file()
    record = read_json(folder / (RECORD if complete else STARTED), "stage record")
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    if complete:
        owned = set(record["files"]) | {RECORD, STARTED}
    else:
        owned = {STARTED} | {name for name in present if name.split(os.sep)[0] in record.get("writes", [])
                             and not (folder / name).is_symlink()}
    return [n for n in present if n in owned], [n for n in present if n not in owned]


def remove_owned(folder: Path, owned: Iterable[str]) -> None:
    """Delete the given files of ``folder`` (never following a link), then its folders that are left empty."""
    for relative in owned:
        (folder / relative).unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


__all__ = ["PARTIAL", "RECORD", "STARTED", "Stage", "StageError", "content_hash", "describe", "differences",
           "input_fingerprint", "manifest", "owned_paths", "read_json", "remove_owned", "stage_key", "write_json"]
