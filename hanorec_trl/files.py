"""Files the library writes: the cache folder, and writes that are never seen half done.

Every file or folder the library produces (item embeddings, vision features, evaluation results, trainer state, the
frozen split, converted tokenizers and models) is written under a temporary name beside its target and moved onto
it with ``os.replace`` only once complete, so an interrupted run leaves the old content or none, never a torso.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_file", "atomic_folder", "cache_dir", "save_pretrained_atomic"]


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
