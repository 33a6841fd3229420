"""A run's ``metrics.jsonl``: one JSON object per logged step, appended as training goes.

A resumed run continues from a checkpoint at some step: the file is cut back to the records
of the steps up to it (a later one was logged after the checkpoint and will be logged again),
so that the finished file equals an uninterrupted run's. Used by the engine, the custom loops
(PPO, meta-learning) and the TRL trainers.
"""
from __future__ import annotations

import json
from pathlib import Path


def append_metrics(path: Path, record: dict) -> None:
    """``record`` as one line at the end of ``path``."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int, *, rewrite: bool = True) -> list[dict]:
    """The records of ``path`` up to ``step`` (the step a run starts from): the history it continues.

    With ``rewrite`` (the process that writes the file; the others of a distributed run only read)
    the file is cut back to them. ``step`` 0, a fresh start: no history, and the file is removed.
    A line cut short by a kill is dropped.
    """
    path = Path(path)
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
