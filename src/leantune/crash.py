"""Every failure is a sentence: turn any exception that reaches a command into one paragraph
and an exit code (docs/errors.md lists them).

- ``LeantuneError`` (bad input, unsafe file, broken run): its message, its code (2; 130 for
  an interrupted run).
- What the machine refused (a file that cannot be read or written, disk full, out of
  memory): the path and the reason, exit 2.
- Anything else is our bug: "internal error", exit 1, and the traceback is saved to a file
  (never printed raw) whose path the message gives.
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import traceback
from pathlib import Path

from .errors import LeantuneError

INTERNAL_ERROR = 1
USER_ERROR = 2
INTERRUPTED = 130

_OOM_NAMES = {"OutOfMemoryError", "MemoryError"}
_CPU_OOM = "can't allocate memory"  # torch's DefaultCPUAllocator raises a plain RuntimeError


def crash_dir() -> Path:
    """Where tracebacks of internal errors are saved (``$LEANTUNE_HOME/crashes``)."""
    home = Path(os.environ.get("LEANTUNE_HOME", Path.home() / ".cache" / "leantune"))
    return home / "crashes"


def save_traceback(exc: BaseException) -> Path | None:
    """Write the traceback to a new file; None if even that fails (read-only home)."""
    try:
        folder = crash_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        path = folder / f"crash-{stamp}.txt"
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        return path
    except OSError:
        return None


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    hints = {errno.ENOSPC: " (the disk is full; free space or choose another output folder)",
             errno.EACCES: " (check the permissions, or choose another folder)",
             errno.EROFS: " (the file system is read-only; choose another folder)"}
    return f"{where}{reason}{hints.get(exc.errno, '')}"


def describe(exc: BaseException) -> tuple[str, int]:
    """(one-paragraph message, exit code) for an exception that reached a command."""
    if isinstance(exc, LeantuneError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if type(exc).__name__ in _OOM_NAMES or (isinstance(exc, RuntimeError) and _CPU_OOM in str(exc)):
        return (f"out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); lower "
                f"train.batch_size or train.max_length, turn on train.gradient_checkpointing (on a CPU also "
                f"train.cpu_heap: release), or choose a method with fewer trainable parameters (`leantune "
                f"estimate` tells what fits)"), USER_ERROR
    if isinstance(exc, OSError) and exc.errno is not None:
        return _os_message(exc), USER_ERROR
    saved = save_traceback(exc)
    where = f"the traceback is saved in {saved}" if saved else "the traceback could not be saved"
    return (f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} — this is "
            f"a bug in leantune, not in your input; {where}; please report it with that file"), INTERNAL_ERROR
