"""Which trainer checkpoints are complete, so that a resume never starts from a half-written one.

transformers writes a checkpoint's weights, optimizer and RNG states first and ``trainer_state.json`` last, then
rotates older checkpoints away; :class:`~hanorec_trl.HaNoDPOTrainer` writes its ``hano_state.json`` before all of
them (``docs/design.md``, section 3). A checkpoint whose ``trainer_state.json`` parses, whose ``.safetensors`` files
are whole and which has the HaNo state when it needs one is complete. See ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["HANO_STATE_NAME", "TRAINER_STATE_NAME", "checkpoint_problem", "last_complete_checkpoint"]

HANO_STATE_NAME = "hano_state.json"
TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer writes it last in a checkpoint


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is unusable (truncated, bad header), or None; reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"{path.name} is truncated ({size} bytes, its header alone needs {8 + length})"
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{path.name} cannot be read ({err})"
    if not isinstance(header, dict):
        return f"{path.name} has no tensor table"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if 8 + length + end > size:
        return f"{path.name} is truncated ({size} bytes; its tensors need {8 + length + end})"
    return None


def checkpoint_problem(checkpoint: str | os.PathLike, *, hano_state: bool = False) -> str | None:
    """Why a trainer checkpoint folder cannot be resumed from, or None when it is complete.

    Complete: ``trainer_state.json`` (transformers writes it after the weights, optimizer and RNG states) parses,
    every ``.safetensors`` file is whole (header and size), some model or adapter weights exist and, with
    ``hano_state`` (``use_responsiveness``), ``hano_state.json`` (written by :class:`HaNoDPOTrainer` before
    ``trainer_state.json``) parses.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        return f"{path} is not a folder"
    problem = _json_file_problem(path / TRAINER_STATE_NAME, "global_step", "the save was interrupted")
    if problem:
        return problem
    tensors = sorted(path.glob("*.safetensors"))
    if not tensors and not any(path.glob("*.bin")):
        return "no model or adapter weights"
    for file in tensors:
        problem = _safetensors_problem(file)
        if problem:
            return problem
    if hano_state:
        return _json_file_problem(path / HANO_STATE_NAME, "responsiveness",
                                  "the responsiveness state; the save was interrupted")
    return None


def _json_file_problem(file: Path, key: str, when_missing: str) -> str | None:
    """Why ``file`` is not a JSON object with ``key`` (None if it is)."""
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {file.name} ({when_missing})"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{file.name} does not parse ({err})"
    if not isinstance(saved, dict) or key not in saved:
        return f"{file.name} has no {key}"
    return None


def last_complete_checkpoint(folder: str | os.PathLike, *, hano_state: bool = False
                             ) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete ``checkpoint-N`` in a trainer output folder (None if none) and the newer ones that were
    skipped, as ``(path, why)`` (see :func:`checkpoint_problem`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None, []
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)) and p.is_dir()),
                   reverse=True)
    skipped: list[tuple[str, str]] = []
    for _, path in found:
        problem = checkpoint_problem(path, hano_state=hano_state)
        if problem is None:
            return str(path), skipped
        skipped.append((str(path), problem))
    return None, skipped
