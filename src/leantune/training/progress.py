"""Training progress on stderr: a live bar in a terminal, and where output is a log or a pipe
(CI, `| tee`, a scheduler's log file) one plain line every few percent and at least every
half minute, so a log shows the run moving."""
from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

LINE_EVERY_S = 30.0
LINE_EVERY_FRACTION = 0.05


class TrainProgress:
    """``with TrainProgress(total, start, enabled) as bar: bar.update(step, loss, tokens_per_s)``."""

    def __init__(self, total: int, start: int, enabled: bool, label: str = "train"):
        self.total, self.label = total, label
        self.mode = "off" if not enabled else ("bar" if sys.stderr.isatty() else "lines")
        self._last_line_step, self._last_line_t = start, time.monotonic()
        self._line_every = max(1, round(total * LINE_EVERY_FRACTION))
        if self.mode == "bar":
            self.progress = Progress(
                TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                TimeRemainingColumn(), transient=False,
            )
            self.task = self.progress.add_task(label, total=total, completed=start, loss=float("nan"), tps=0.0)
        self._t0, self._start = time.monotonic(), start

    def __enter__(self) -> "TrainProgress":
        if self.mode == "bar":
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.mode == "bar":
            self.progress.stop()

    def update(self, step: int, loss: float, tps: float) -> None:
        if self.mode == "bar":
            self.progress.update(self.task, completed=step, loss=loss, tps=tps)
        elif self.mode == "lines":
            now = time.monotonic()
            due = step - self._last_line_step >= self._line_every or now - self._last_line_t >= LINE_EVERY_S
            if due or step == self.total:
                self._last_line_step, self._last_line_t = step, now
                done = step - self._start
                eta = (now - self._t0) / done * (self.total - step) if done else float("nan")
                print(f"{self.label} step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)  "
                      f"loss {loss:.4f}  {tps:.0f} tok/s  eta {eta:.0f} s", file=sys.stderr, flush=True)
