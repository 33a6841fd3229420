"""Ctrl-C and SIGTERM (what `timeout`, Slurm, Kubernetes and systemd send) ask a training loop
to stop after the current step: it saves a checkpoint and exits, and ``--resume`` continues
bit for bit. A second signal stops at once."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from ..errors import LeantuneError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(LeantuneError):
    """Stopped by a signal after saving a checkpoint; exit code 128 + the signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StopRequest:
    """Set by the first stop signal; the loop checks it after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def interrupted(self, what: str, where: str) -> TrainingInterrupted:
        name = signal.Signals(self.signum).name if self.signum else "SIGINT"
        return TrainingInterrupted(f"{name}: checkpoint saved at {what} in {where}; continue with "
                                   f"`leantune train … --resume`", self.signum or signal.SIGINT)


@contextmanager
def stop_on_signals():
    """Yield a ``StopRequest`` set by SIGINT/SIGTERM for the block (main thread only; elsewhere
    signals cannot be caught and the request stays unset)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
