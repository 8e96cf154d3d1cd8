"""Running a stage: on every process or on the main one, into its :class:`~.stage.Stage` folder, and the entry point
every stage script shares (one ``error:`` line and exit code 2 for what a user can fix, 130 for Ctrl-C)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .stage import Stage, StageError


def process_state():
    from accelerate import PartialState

    return PartialState()


def say(message: str) -> None:
    if process_state().is_main_process:
        print(message, flush=True)


def on_main_process(fn: Callable[[], Any]) -> Any:
    """``fn()`` on the main process while the others wait; its result (a JSON-able value) and any error reach every
    process, so that none waits forever at a barrier."""
    state = process_state()
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below on every process
            error = err
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = [(result, None if error is None else f"{type(error).__name__}: {error}")]
        broadcast_object_list(shared, from_process=0)
        result, message = shared[0]
        if message is not None and error is None:
            raise StageError(f"(main process) {message}")
    if error is not None:
        raise error
    return result


def run_stage(stage: Stage, work: Callable[[Path], dict[str, Any]], *, all_processes: bool = False,
              reuse_from: Path | None = None, rebuild: bool = False) -> dict[str, Any]:
    """Run ``work(folder)`` into the stage's folder unless the stage is complete with the same key (or can be
    copied from ``reuse_from``, another run directory); returns the stage's record. ``all_processes``: training,
    ``work`` runs on every process; otherwise on the main process only. ``rebuild`` (a report: derived, seconds):
    a complete folder of another key that holds only what the pipeline wrote is replaced instead of refused."""
    if rebuild:
        on_main_process(stage.replace_derived)
    record = on_main_process(stage.done)
    if record is not None:
        say(f"[{stage.name}] done earlier with the same configuration: {stage.folder}")
        return record
    if reuse_from is not None:
        record = on_main_process(lambda: stage.copy_from(reuse_from / stage.folder.name))
        if record is not None:
            say(f"[{stage.name}] reused from {reuse_from / stage.folder.name} (same configuration and inputs)")
            return record
    continued = on_main_process(lambda: stage.check_partial(discard_other=not all_processes))
    say(f"[{stage.name}] {'continuing' if continued else 'running'} -> {stage.folder}")
    start = time.perf_counter()
    folder = Path(on_main_process(lambda: str(stage.begin(keep=("trainer",) if all_processes else ()))))
    state = process_state()
    summary: dict[str, Any] = {}
    if all_processes:
        summary = work(folder)
    elif state.is_main_process:
        summary = work(folder)
    state.wait_for_everyone()
    seconds = time.perf_counter() - start
    record = on_main_process(lambda: stage.publish(summary, seconds))
    say(f"[{stage.name}] done in {seconds:.1f} s")
    return record


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can fix from the message alone: printed as one line, no traceback."""
    from ..data import DataFormatError, SplitMismatchError
    from ..evaluation.reporting import ReportError
    from ..files import LockError
    from ..models import ModelError
    from ..trainer import NonFiniteTrainingError
    from .parsing import ConfigError

    return (ConfigError, StageError, DataFormatError, SplitMismatchError, FileNotFoundError, NonFiniteTrainingError,
            ReportError, ModelError, LockError)


def script_main(parse: Callable[[Sequence[str] | None], tuple], main: Callable[..., Any],
                argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run a stage script's ``main``; returns the exit code (2 for a user's error, 130 for
    Ctrl-C with what to run to continue)."""
    import datasets

    datasets.disable_progress_bars()  # saving and mapping; the stages' own work keeps its bars
    try:
        main(*parse(argv))
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted: {interrupt or 'Ctrl-C'}", file=sys.stderr)
        if getattr(interrupt, "resume", None):
            print(f"finished stages are kept; continue with the same command:\n  {interrupt.resume}", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Destroy the ``torch.distributed`` group ``accelerate launch`` made, before the interpreter exits."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["on_main_process", "process_state", "run_stage", "say", "script_main", "user_errors"]
