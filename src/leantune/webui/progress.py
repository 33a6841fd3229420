"""How far a run has got, read from its folder while it trains and after: ``metrics.jsonl``
(appended step by step), its checkpoints, ``summary.json`` (written last by a finished run),
and the tail of the job's log (the progress lines ``step N/M`` and the memory estimate)."""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..run_dir import FINISHED_MARK, RUN_META
from .jobs import Job

STEP_DIR = re.compile(r"^(?:step|checkpoint)-(\d+)$")
PROGRESS_LINE = re.compile(r"\bstep (\d+)/(\d+)\b")  # training/progress.py's "train step 12/40 (30%) …"
ESTIMATE_LINE = re.compile(r"estimated peak memory: ([\d,.]+) MB")  # pipeline._estimate_before
EVAL_TIMING = ("runtime", "samples_per_second", "steps_per_second")  # TRL's eval bookkeeping, not metrics
MAIN_METRICS = ("accuracy", "macro_f1", "f1", "loss", "perplexity")
STOP_CODES = {-2, -15, 130, 143}  # ended by SIGINT/SIGTERM (before the loop: by the signal itself)


@dataclass
class Progress:
    status: str                                   # not started | running | stopped | finished | failed
    step: int = 0
    max_steps: int | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, str, float]] = field(default_factory=list)
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    memory_kind: str | None = None
    estimate_mb: float | None = None
    eval_after: dict | None = None
    checkpoints: int = 0
    detail: str = ""
    wall_s: float | None = None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``; a line still being written (or cut short) is skipped."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints: the engine's ``step-N``, TRL's ``checkpoint-N`` with its state."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := STEP_DIR.match(p.name))
                  and (p.name.startswith("step-") or (p / "trainer_state.json").is_file()))


def _planned_steps(train: dict, records: list[dict], log: str) -> int | None:
    """The total of an epochs-based run before it ends: the log's progress lines give it exactly,
    else epochs × steps per epoch as the latest logged ``epoch`` fraction gives it."""
    if found := PROGRESS_LINE.findall(log):
        return int(found[-1][1])
    for r in reversed(records):
        if isinstance(r.get("epoch"), (int, float)) and r["epoch"] > 0 and train.get("epochs"):
            return max(1, math.ceil(train["epochs"] * round(r["step"] / r["epoch"])))
    return None


def _status(run_dir: Path, job: Job | None, job_dir: Path | None, finished: bool, checkpoints: int) -> str:
    if finished:
        return "finished"
    own = job_dir == run_dir
    covered = job_dir is not None and run_dir.is_relative_to(job_dir)  # e.g. advise --prove's runs
    if covered and job.alive():
        return "running" if own or (run_dir / RUN_META).is_file() else "not started"
    if checkpoints:
        return "stopped"
    if covered and (own or run_dir.is_dir()) and job.exit_code != 0:
        return "failed"
    return "not started"


def _last_line(log_tail: str) -> str:
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def read_progress(run_dir: Path, job: Job | None = None, log_tail: str = "") -> Progress:
    """The state of the run in ``run_dir``; ``job`` is the job writing it (or a folder above it,
    as ``advise --prove`` writes ``OUT/runs/<approach>``) and ``log_tail`` the end of its log."""
    run_dir = Path(run_dir).resolve()
    job_dir = Path(job.run_dir).resolve() if job is not None else None
    own = job_dir == run_dir
    log = log_tail if job is None or own else ""  # the log of a job above the run tells of other runs too
    meta, summary = _read_json(run_dir / RUN_META), _read_json(run_dir / FINISHED_MARK)
    finished = (run_dir / FINISHED_MARK).is_file()
    records = read_metrics(run_dir)
    losses = {r["step"]: float(r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))}
    evals = [(r["step"], key[5:], float(value)) for r in records for key, value in r.items()
             if key.startswith("eval_") and isinstance(value, (int, float)) and not key.endswith(EVAL_TIMING)]
    speeds = [r["tokens_per_s"] for r in records if isinstance(r.get("tokens_per_s"), (int, float))]
    steps = checkpoint_steps(run_dir)
    logged = [int(m[0]) for m in PROGRESS_LINE.findall(log)]
    step = max([r["step"] for r in records] + steps + logged + [int(summary.get("steps") or 0)])
    train = (meta.get("recipe") or {}).get("train") or {}
    if train.get("max_steps"):
        max_steps = int(train["max_steps"])
    else:
        max_steps = step if finished else _planned_steps(train, records, log)
    estimate = summary.get("estimate_mb")
    if estimate is None and (found := ESTIMATE_LINE.findall(log)):
        estimate = float(found[-1].replace(",", ""))
    status = _status(run_dir, job, job_dir, finished, len(steps))
    wall = summary.get("wall_time_s") if finished else (
        time.time() - job.started if status == "running" and own else None)
    progress = Progress(
        status=status, step=step, max_steps=max_steps, losses=sorted(losses.items()), evals=evals,
        tokens_per_s=summary.get("tokens_per_s") if finished else (speeds[-1] if speeds else None),
        peak_memory_mb=summary.get("peak_memory_mb"), memory_kind=summary.get("memory_kind"),
        estimate_mb=estimate, eval_after=summary.get("eval_after"), checkpoints=len(steps), wall_s=wall)
    progress.detail = _detail(progress, job.exit_code if job is not None else None, log)
    return progress


def _detail(p: Progress, exit_code: int | None, log: str) -> str:
    at = f"step {p.step} of {p.max_steps}" if p.max_steps else f"step {p.step}"
    saved = f"{p.checkpoints} checkpoint{'s' if p.checkpoints != 1 else ''}"
    if p.status == "finished":
        wall = f" in {p.wall_s:.0f} s" if isinstance(p.wall_s, (int, float)) else ""
        return f"finished: {p.step} steps{wall}"
    if p.status == "running":
        return f"{at} · {saved}" if p.step else "starting: loading the model and data"
    error = exit_code not in (None, 0, *STOP_CODES)
    if p.status == "stopped":
        cause = f" by an error: {_last_line(log) or f'exit code {exit_code}'}" if error else ""
        return f"stopped at {at}{cause} · {saved}; resume to continue"
    if p.status == "failed":
        if not error and exit_code is not None:
            return "stopped before its first checkpoint; start it again"
        return _last_line(log) or (f"failed (exit code {exit_code})" if exit_code is not None else "failed")
    return "not started"


def main_metric(eval_after: dict | None) -> tuple[str, float] | None:
    """The metric a run is judged by: accuracy, macro F1, … loss, else the first numeric one."""
    scores = {k: v for k, v in (eval_after or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name in (*MAIN_METRICS, *scores):
        if name in scores:
            return name, float(scores[name])
    return None


def run_row(run_dir: Path, progress: Progress) -> dict:
    """One row of the runs table."""
    recipe = _read_json(Path(run_dir) / RUN_META).get("recipe") or {}
    methods = "+".join(m.get("name", "?") for m in recipe.get("method") or [] if isinstance(m, dict))
    stage = recipe.get("stage")
    metric = main_metric(progress.eval_after)
    return {
        "name": Path(run_dir).name,
        "method": methods,
        "stage": stage.get("name", "") if isinstance(stage, dict) else str(stage or ""),
        "model": (recipe.get("model") or {}).get("name", ""),
        "status": progress.status,
        "step": f"{progress.step}/{progress.max_steps}" if progress.max_steps else str(progress.step),
        "metric": metric[0] if metric else "",
        "value": round(metric[1], 4) if metric else None,
        "wall_s": round(progress.wall_s, 1) if isinstance(progress.wall_s, (int, float)) else None,
        "peak_mb": round(progress.peak_memory_mb) if isinstance(progress.peak_memory_mb, (int, float)) else None,
    }
