"""Keep third-party chatter off the terminal: library log records and warnings go to a log file.

bitsandbytes, transformers, peft, accelerate and torch report through ``logging`` (often with
no handler, so Python's last-resort handler prints the record on stderr) and ``warnings``.
:func:`quiet` sends both to a log file — ``$LEANTUNE_LOG``, else ``leantune.log`` in
``$LEANTUNE_HOME`` (default ``~/.cache/leantune``) — and, with ``verbose``, to stderr as well.
leantune's own warnings and log records stay on the terminal either way.

Call :func:`quiet` before importing the heavy libraries, and :func:`adopt_library_loggers`
after: some libraries (transformers, torch, huggingface_hub) give their loggers their own
stderr handler at import time, which would bypass the file.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import warnings
from pathlib import Path

LOG_ENV = "LEANTUNE_LOG"
OWN = "leantune"
_MARK = "_leantune_quiet"   # set on the handlers quiet() installs, so a second call replaces them
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_state: dict = {"configured": False, "verbose": False, "log_file": None, "showwarning": None}


def default_log_file() -> Path:
    if os.environ.get(LOG_ENV):
        return Path(os.environ[LOG_ENV]).expanduser()
    return Path(os.environ.get("LEANTUNE_HOME", Path.home() / ".cache" / "leantune")) / "leantune.log"


def is_configured() -> bool:
    return _state["configured"]


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _own(name: str) -> bool:
    return name == OWN or name.startswith(OWN + ".")


def _file_handler(path: Path) -> logging.Handler | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path if path.exists() else path.parent, os.W_OK):
            return None  # the file opens on the first record: failing there would print a traceback
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=2 * 2**20, backupCount=1,
                                                       encoding="utf-8", delay=True)
    except OSError:
        return None
    handler.setFormatter(logging.Formatter(_FORMAT))
    return handler


def _caller_module() -> str:
    """The module that called ``warnings.warn`` (skipping the warnings machinery and this module)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") in ("warnings", __name__):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    if file is not None or _own(_caller_module()):
        _state["showwarning"](message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning("%s", text)


def _remove_handlers() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
        handler.close()


def quiet(log_file: Path | str | None = None, verbose: bool = False) -> Path | None:
    """Route library log records (WARNING and up) and warnings to ``log_file`` (default:
    :func:`default_log_file`); with ``verbose`` also to stderr. Calling again replaces the
    previous setting. Returns the log file, or None where it cannot be written (then
    library output is dropped unless ``verbose``)."""
    _remove_handlers()
    root = logging.getLogger()
    path = Path(log_file).expanduser() if log_file is not None else default_log_file()
    to_file = _file_handler(path)
    to_terminal = _Stderr()
    to_terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        to_terminal.addFilter(lambda record: _own(record.name))
    for handler in (to_file, to_terminal):
        if handler is not None:
            setattr(handler, _MARK, True)
            root.addHandler(handler)
    root.setLevel(logging.WARNING)
    if warnings.showwarning is not _showwarning:
        _state["showwarning"] = warnings.showwarning
        warnings.showwarning = _showwarning
    _state.update(configured=True, verbose=verbose, log_file=path if to_file is not None else None)
    return _state["log_file"]


def adopt_library_loggers() -> None:
    """Take back the terminal from loggers that libraries gave their own stderr/stdout handler
    (transformers, torch, huggingface_hub, …): drop that handler and let records propagate to
    the handlers :func:`quiet` installed. Call after importing those libraries."""
    loggers = [logging.getLogger(n) for n, l in list(logging.Logger.manager.loggerDict.items())
               if isinstance(l, logging.Logger) and not _own(n)]
    for logger in loggers:
        terminal = [h for h in logger.handlers
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for handler in terminal:
            logger.removeHandler(handler)
        if terminal:
            logger.propagate = True


def undo() -> None:
    """Remove what :func:`quiet` installed (handlers, the warnings hook)."""
    _remove_handlers()
    if warnings.showwarning is _showwarning:
        warnings.showwarning = _state["showwarning"]
    _state.update(configured=False, verbose=False, log_file=None)
