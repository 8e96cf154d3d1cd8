"""A stage's output folder, identified by its content (``docs/design.md`` section 9, ``docs/pipeline.md``).

A stage writes into ``<output_dir>.partial/``, records ``stage.json`` there and renames the folder to
``<output_dir>``: a folder without ``.partial`` is complete. ``stage.json`` holds the stage's configuration (every
field of its dataclasses, resolved), the fingerprint of every input (an upstream stage's output fingerprint, the
content hash of a local file or folder, or the name of what is not a local path) and the manifest of what it wrote
(relative path -> size, SHA-256), whose hash is the stage's output fingerprint. The key hashes configuration and
inputs: a complete folder with the same key is reused, one with another key refused naming what differs; an
unfinished folder with the same key is continued. Only ``local_rank`` is left out: the launcher sets it differently
on each process of one run.
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

from ..files import atomic_file, content_hash, file_sha256

RECORD, STARTED, PARTIAL = "stage.json", "started.json", ".partial"


class StageError(RuntimeError):
    """A stage folder that cannot be used as asked; the message names the folder, the fields or the file."""


def write_json(path: Path, payload: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def read_json(path: Path, what: str = "file") -> Any:
    """JSON from ``path``; one that does not parse (cut short, edited) is a :class:`StageError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StageError(f"{path} is not a readable {what} ({err}): it was cut short or edited. Delete its folder "
                         "to produce it again") from None


def manifest(folder: Path, entries: Iterable[str]) -> dict[str, list]:
    """Relative path -> [size, sha256] of every file under the given entries of ``folder``; a link is refused."""
    files: dict[str, list] = {}
    for entry in entries:
        for path in [folder / entry] if (folder / entry).is_file() else sorted((folder / entry).rglob("*")):
            if path.is_symlink():
                raise StageError(f"{path} is a link; a stage writes files and folders only")
            if path.is_file():
                files[str(path.relative_to(folder))] = [path.stat().st_size, file_sha256(path)]
    return files


def input_fingerprint(value: str | os.PathLike) -> str:
    """A stage folder's output fingerprint, another local path's content hash (a ``save_to_disk`` folder's without
    the ``cache-*.arrow`` files ``datasets`` writes beside it on every ``map``), else the name itself."""
    path = Path(value).expanduser()
    if (path / RECORD).is_file():
        return read_json(path / RECORD, "stage record")["fingerprint"]
    if (path / "state.json").is_file():
        return "content:" + content_hash(sorted(p for p in path.iterdir() if not p.name.startswith("cache-")))
    return "content:" + content_hash([path]) if path.exists() else f"name:{value}"


def describe(*configs: Any, root: Path | None = None) -> dict[str, Any]:
    """Every field of the dataclasses as ``Class.field``: JSON-ready, ``hub_token`` as ``<set>``, paths inside
    ``root`` as ``<run>/...`` (so another run directory finds the same key), other existing paths absolute."""
    base = root.resolve() if root is not None else None
    described: dict[str, Any] = {}
    for config in configs:
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if field.name == "local_rank":
                continue
            if field.name == "hub_token" and value is not None:
                value = "<set>"
            elif isinstance(value, list):
                value = [_path(v, base) for v in value]
            else:
                value = _path(value, base)
            described[f"{type(config).__name__}.{field.name}"] = value
    return json.loads(json.dumps(described, default=str))


def _path(value: Any, base: Path | None) -> Any:
    """A path value as it is compared (see :func:`describe`); any other value unchanged."""
    if not isinstance(value, str) or not (os.sep in value or value.startswith((".", "~"))):
        return value
    resolved = Path(value).expanduser().resolve()
    if base is not None and (resolved == base or base in resolved.parents):
        return "<run>/" + str(resolved.relative_to(base))
    return str(resolved) if resolved.exists() else value


def stage_key(config: dict[str, Any], inputs: dict[str, str]) -> str:
    payload = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name: was X, now Y' for every key whose values differ (a key one side lacks differs)."""
    gone = "<not recorded>"
    return [f"{k}: was {recorded.get(k, gone)!r}, now {current.get(k, gone)!r}"
            for k in sorted(set(recorded) | set(current)) if recorded.get(k, gone) != current.get(k, gone)]


def owned_paths(folder: Path) -> tuple[list[str], list[str]]:
    """The files of a stage folder (complete or ``.partial``) that the pipeline wrote, and the others. Complete: its
    manifest; unfinished: what lies under the entries it declared (a trainer's checkpoints)."""
    complete = (folder / RECORD).is_file()
    record = read_json(folder / (RECORD if complete else STARTED), "stage record")
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    if complete:
        owned = set(record["files"]) | {RECORD, STARTED}
    else:
        owned = {STARTED} | {n for n in present if n.split(os.sep)[0] in record.get("writes", [])
                             and not (folder / n).is_symlink()}
    return [n for n in present if n in owned], [n for n in present if n not in owned]


def remove_owned(folder: Path, owned: Iterable[str]) -> None:
    """Delete the given files of ``folder`` (never through a link), then the folders left empty."""
    for relative in owned:
        (folder / relative).unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


class Stage:
    """The output folder of one stage: ``config`` (:func:`describe`), ``inputs`` (name -> :func:`input_fingerprint`)
    and ``writes``, the entries it creates in its folder (what it owns)."""

    def __init__(self, name: str, folder: str | os.PathLike, config: dict[str, Any], inputs: dict[str, str],
                 writes: Sequence[str]):
        self.name, self.folder, self.config, self.inputs, self.writes = name, Path(folder), config, inputs, writes
        self.key = stage_key(config, inputs)
        self.partial = self.folder.with_name(self.folder.name + PARTIAL)

    def mismatch(self, record: dict[str, Any], where: Path) -> StageError:
        changed = differences(record.get("config", {}), self.config)
        changed += [f"input {d}" for d in differences(record.get("inputs", {}), self.inputs)]
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        return StageError(f"{where} holds the {self.name} stage made from something else ({shown}). Nothing was "
                          "changed: use another output folder (or run directory), or delete that folder to redo it")

    def done(self) -> dict[str, Any] | None:
        """The record when the stage is complete with this key, None when it has to run; another key: refused."""
        if not self.folder.exists() and not self.folder.is_symlink():
            return None
        if self.folder.is_symlink() or not (self.folder / RECORD).is_file():
            raise StageError(f"{self.folder} exists but is not a complete {self.name} stage folder of this pipeline "
                             f"(a link, or no {RECORD}); choose another output folder, or move it away")
        record = read_json(self.folder / RECORD, "stage record")
        if record.get("key") != self.key:
            raise self.mismatch(record, self.folder)
        return record

    def replace_derived(self) -> None:
        """Delete a complete folder of another key that holds only what the pipeline wrote (a derived stage)."""
        record = read_json(self.folder / RECORD, "stage record") if (self.folder / RECORD).is_file() else None
        if record is not None and record.get("key") != self.key and not self.folder.is_symlink():
            owned, foreign = owned_paths(self.folder)
            if not foreign:
                remove_owned(self.folder, owned)

    def check_partial(self, discard_other: bool = False) -> bool:
        """Whether an unfinished attempt with this key is there to continue. Another key is refused, or, with
        ``discard_other`` (nothing to continue: no checkpoints), deleted when it holds only what the pipeline wrote."""
        if not self.partial.exists() and not self.partial.is_symlink():
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

    def begin(self, keep: Sequence[str] = ()) -> Path:
        """The folder to write into: the unfinished attempt with this key (its entries but ``keep`` removed), or a
        new one."""
        if self.check_partial(discard_other=not keep):
            for entry in set(self.writes) - set(keep):
                path = self.partial / entry
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        else:
            self.partial.mkdir(parents=True)
            write_json(self.partial / STARTED, {"stage": self.name, "key": self.key, "writes": list(self.writes),
                                                "config": self.config, "inputs": self.inputs,
                                                "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        return self.partial

    def publish(self, summary: dict[str, Any], seconds: float, reused_from: str | None = None) -> dict[str, Any]:
        """Record what the stage wrote, and make the folder complete (one rename)."""
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
        """The same stage complete in another run directory (same key), hard-linked (copied across file systems)
        into this one; None when ``source`` has no such stage. An unreadable record there is an error."""
        other = Stage(self.name, source, self.config, self.inputs, self.writes)
        if not (source / RECORD).is_file() or read_json(source / RECORD, "stage record").get("key") != self.key:
            return None
        record = other.done()
        if self.partial.exists():  # an unfinished attempt here: replaced, if it holds only what the pipeline wrote
            owned, foreign = owned_paths(self.partial)
            if foreign:
                raise StageError(f"{self.partial} holds files the pipeline did not write ({', '.join(foreign[:3])}); "
                                 "move them away")
            remove_owned(self.partial, owned)
        self.partial.mkdir(parents=True, exist_ok=True)
        for relative in record["files"]:
            (self.partial / relative).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source / relative, self.partial / relative)
            except OSError:
                shutil.copy2(source / relative, self.partial / relative)
        return self.publish(record["summary"], 0.0, reused_from=str(source.resolve()))


__all__ = ["PARTIAL", "RECORD", "STARTED", "Stage", "StageError", "describe", "differences",
           "input_fingerprint", "manifest", "owned_paths", "read_json", "remove_owned", "stage_key", "write_json"]
