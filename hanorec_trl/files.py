"""Files the library writes: the cache folder, and writes that are never seen half done.

Every file or folder the library produces (item embeddings, vision features, evaluation results, trainer state, the
frozen split, converted tokenizers and models) is written under a temporary name beside its target and moved onto
it with ``os.replace`` only once complete, so an interrupted run leaves the old content or none, never a torso.

Files a user names for a script's output (:func:`new_files`, :func:`appended`) are never overwritten: the name is
taken as given (a suffix is appended, never substituted: ``tau0.1`` -> ``tau0.1.json``) and an existing file is
refused with its name. :class:`LockFile` keeps a second process out of a folder (a run directory).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LockError", "LockFile", "appended", "atomic_file", "atomic_folder", "cache_dir", "check_new",
           "content_hash", "file_sha256", "new_files", "save_pretrained_atomic"]


def cache_dir() -> Path:
    """The library's cache folder: ``$HANOREC_CACHE``, else ``$XDG_CACHE_HOME/hanorec_trl``, else ``~/.cache``."""
    root = os.environ.get("HANOREC_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hanorec_trl"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; it replaces ``path`` when the block ends, and is removed instead
    when the block raises (``KeyboardInterrupt`` included). The parent folder is created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it becomes ``path`` when the block ends.

    ``replace=True`` removes an existing ``path`` first; ``replace=False`` keeps an existing non-empty ``path``
    (another process finished first) and discards the temporary folder. The temporary folder is removed when the
    block raises.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if replace:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the other process's result stays
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained_atomic(objects, target: str | os.PathLike) -> None:
    """Every object's ``save_pretrained`` output in ``target`` at once (a model and its tokenizer, say); when another
    process finished the same folder first, theirs is kept."""
    with atomic_folder(target, replace=False) as tmp:
        for obj in objects:
            obj.save_pretrained(tmp)


def appended(prefix: str | os.PathLike, suffix: str) -> Path:
    """``prefix`` with ``suffix`` appended to its name as given: ``tau0.1`` + ``.json`` -> ``tau0.1.json`` (never
    ``Path.with_suffix``, which would give ``tau0.json`` and make ``tau0.1`` and ``tau0.05`` the same file)."""
    return Path(os.fspath(prefix) + suffix)


def check_new(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """``paths`` as :class:`Path`; :class:`FileExistsError` names those that exist already (links included)."""
    targets = [Path(p) for p in paths]
    existing = [str(p) for p in targets if os.path.lexists(p)]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; nothing is "
                              "overwritten: choose another output name or remove the file first")
    return targets


def _claim(tmp: Path, target: Path) -> None:
    """Give ``tmp``'s content the name ``target``, which must not exist (also when another process creates it
    meanwhile): a hard link fails on an existing name, where ``os.replace`` would overwrite it."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name exclusively, then move the content onto it
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, target)


@contextlib.contextmanager
def new_files(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary files (beside each of ``paths``, with the same suffix, so writers that go by it still work) to
    fill; when the block ends each becomes its path. ``paths`` must not exist (:func:`check_new`): nothing is ever
    overwritten, and when one name is taken meanwhile the files this call created are removed again. The block
    raising leaves nothing behind."""
    targets = check_new(paths)
    if len(set(targets)) != len(targets):
        raise ValueError(f"the same output file twice: {', '.join(map(str, targets))}")
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        claimed: list[Path] = []
        for tmp, target in zip(temps, targets, strict=True):
            try:
                _claim(tmp, target)
            except FileExistsError:
                for done in claimed:
                    done.unlink()
                raise FileExistsError(f"{target} was created meanwhile by someone else; nothing is overwritten (and "
                                      "this call's other outputs were removed)") from None
            claimed.append(target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


_hash_cache: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time within the process)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def content_hash(paths) -> str:
    """SHA-256 of the names, sizes and bytes of the given files and of every file in the given folders: what a data
    folder, a model folder or a set of image files contributes to a fingerprint."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            name = file.name if file == path else str(file.relative_to(path))
            digest.update(f"{name}\0{file.stat().st_size}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


class LockError(RuntimeError):
    """A lock held by another process (or one that cannot be checked); the message names the holder."""


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


class LockFile:
    """An exclusive ``flock`` on ``path`` held until :meth:`release`, the file recording the holder's pid and host
    (a run directory's ``run.lock``). A second holder is refused naming them; the lock of a process that died on
    this host is taken over; a lock from another host, or one that is a link, is never touched."""

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

    def _refuse(self, holder: dict[str, Any], why: str) -> LockError:
        since = f", since {holder['started']}" if holder.get("started") else ""
        return LockError(f"{self.path.parent} is in use by another run (pid {holder.get('pid', '?')} on host "
                         f"{holder.get('host', '?')}{since}; {why}). Wait for it to finish, or choose another "
                         f"folder. If that run is gone, delete {self.path}.")

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():
            raise LockError(f"{self.path} is a link; the lock is never written through a link. Delete it")
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
