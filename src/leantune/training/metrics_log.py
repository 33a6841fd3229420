"""A run's ``metrics.jsonl``: one JSON object per logged step, appended as training goes.

A resumed run continues from a checkpoint at some step: the file is cut back to the records
of the steps up to it (a later one was logged after the checkpoint and will be logged again),
so that the finished file equals an uninterrupted run's. Used by the engine, the custom loops
(PPO, meta-learning) and the TRL trainers.

While :func:`forward_metrics` holds for a run folder, every record appended to a metrics file in it
(or below it: the rounds and tasks of a stage keep their own) also goes to a sink, the run's
experiment trackers (``training/trackers.py``), and a cut-back is announced to it.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol


class MetricsSink(Protocol):
    """Where a run's records also go. ``prefix`` is the metrics file's folder relative to the run
    folder with a trailing ``/`` (``rounds/round-1/``), empty for the run's own ``metrics.jsonl``."""

    def log(self, prefix: str, record: dict) -> None: ...

    def rewind(self, prefix: str, step: int) -> None: ...


_sinks: dict[Path, MetricsSink] = {}


@contextmanager
def forward_metrics(run_dir: Path, sink: MetricsSink):
    """For the block, records appended to a metrics file under ``run_dir`` also go to ``sink``."""
    root = Path(run_dir).resolve()
    _sinks[root] = sink
    try:
        yield sink
    finally:
        _sinks.pop(root, None)


def _sink_for(path: Path) -> tuple[MetricsSink, str] | None:
    folder = Path(path).resolve().parent
    for root, sink in _sinks.items():
        if folder == root or root in folder.parents:
            rel = folder.relative_to(root).as_posix()
            return sink, "" if rel == "." else rel + "/"
    return None


def append_metrics(path: Path, record: dict) -> None:
    """``record`` as one line at the end of ``path`` (and to the run's sink, if one is registered)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    if found := _sink_for(path):
        sink, prefix = found
        sink.log(prefix, record)


def truncate_metrics(path: Path, step: int, *, rewrite: bool = True) -> list[dict]:
    """The records of ``path`` up to ``step`` (the step a run starts from): the history it continues.

    With ``rewrite`` (the process that writes the file; the others of a distributed run only read)
    the file is cut back to them. ``step`` 0, a fresh start: no history, and the file is removed.
    A line cut short by a kill is dropped. The run's sink, if any, hears of the cut with ``rewrite``.
    """
    path = Path(path)
    if rewrite and (found := _sink_for(path)):
        sink, prefix = found
        sink.rewind(prefix, step)
    if not step:
        if rewrite:
            path.unlink(missing_ok=True)
        return []
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(record)
    if rewrite:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)
    return kept
