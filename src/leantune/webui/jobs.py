"""Trainings (and other long commands) started from the page, as `leantune …` processes that
outlive the browser tab and the web server.

Each job runs in its own session (process group), so closing the page or stopping the server
leaves it running; its output goes to a log under ``.leantune-webui/logs`` and its record to
``.leantune-webui/jobs/<key>.json``, so a server started later finds it again. One job at a
time per target folder. Stopping sends SIGTERM to the job's group: a training saves a
checkpoint and exits (training/interrupt.py), and ``--resume`` continues it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import LeantuneError
from .workspace import Workspace

TAIL_BYTES = 256 * 1024  # at most this much of a log is read for its tail
UNSAFE_NAME = re.compile(r"[^\w.-]")  # replaced in log file names


@dataclass
class Job:
    run_dir: Path            # the folder the job writes: a run, or an advise --prove output
    recipe: Path | None      # the recipe of a training; None for other commands
    pid: int
    log: Path
    started: float
    resume: bool
    args: list[str] = field(default_factory=list)  # after `python -m leantune`
    log_offset: int = 0      # where this job's part of the log begins
    exit_code: int | None = None  # once a server has seen it end

    def alive(self) -> bool:
        """The process exists and is this job: a leantune command started when the job was (not a
        later process given the same pid)."""
        proc = Path("/proc") / str(self.pid)
        if not proc.parent.is_dir():
            return _exists(self.pid)
        try:
            cmdline = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if _started_at(stat) > self.started + 5:
                return False
            if stat[0] in ("Z", "X"):  # its main thread has ended; the process ends with its last thread
                return len(list((proc / "task").iterdir())) > 1
        except (OSError, IndexError, ValueError, StopIteration):
            return False
        return not cmdline or b"leantune" in cmdline  # no command line yet: in the middle of exec

    def to_json(self) -> str:
        record = asdict(self)
        record.update(run_dir=str(self.run_dir), log=str(self.log), recipe=str(self.recipe) if self.recipe else None)
        return json.dumps(record, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Job:
        record = json.loads(text)
        record.update(run_dir=Path(record["run_dir"]), log=Path(record["log"]),
                      recipe=Path(record["recipe"]) if record.get("recipe") else None)
        return cls(**record)


def _started_at(stat: list[str]) -> float:
    """When a process started (epoch seconds), from the fields of ``/proc/PID/stat`` after its name."""
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def job_key(target_dir: Path) -> str:
    return hashlib.sha1(str(Path(target_dir).resolve()).encode("utf-8")).hexdigest()[:12]


class Jobs:
    def __init__(self, workspace: Workspace, python: str = sys.executable):
        self.workspace, self.python = workspace, python
        self.records = workspace.state_dir / "jobs"
        self.logs = workspace.state_dir / "logs"
        self._children: dict[str, subprocess.Popen] = {}  # started by this server: reaped here
        self._lock = threading.Lock()

    def start(self, recipe: Path, run_dir: Path, resume: bool = False, cwd: Path | None = None,
              nproc: int = 1) -> Job:
        """``leantune train RECIPE [--nproc N] [--resume]`` in ``cwd`` (default: the recipe's folder),
        writing ``run_dir``."""
        recipe = Path(recipe).resolve()
        args = ["train", str(recipe), *(["--nproc", str(nproc)] if nproc > 1 else []),
                *(["--resume"] if resume else [])]
        return self.launch(run_dir, args, cwd or recipe.parent, Path(run_dir).name)

    def launch(self, target_dir: Path, args: list[str], cwd: Path, log_name: str) -> Job:
        """``python -m leantune ARGS`` in ``cwd``, detached, logged to ``logs/<log_name>-<key>.log``;
        refused while a job of ``target_dir`` is running."""
        target_dir = Path(target_dir).resolve()
        recipe = (Path(cwd) / args[1]).resolve() if args[:1] == ["train"] and len(args) > 1 else None
        key = job_key(target_dir)
        with self._lock:
            if (job := self.running(target_dir)) is not None:
                what = "a training of this run" if job.args[:1] == ["train"] else f"`leantune {job.args[0]}`"
                raise LeantuneError(f"{self.workspace.rel(target_dir)}: {what} is already going (pid {job.pid}); "
                                    f"stop it first")
            self.logs.mkdir(parents=True, exist_ok=True)
            log = self.logs / f"{UNSAFE_NAME.sub('_', log_name)}-{key}.log"
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
            with open(log, "ab") as out:
                offset = out.tell()
                out.write(f"=== leantune {' '.join(args)} · {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
                out.flush()
                proc = subprocess.Popen([self.python, "-m", "leantune", *args], cwd=cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            self._children[key] = proc
            job = Job(run_dir=target_dir, recipe=recipe, pid=proc.pid, log=log, started=time.time(),
                      resume="--resume" in args, args=list(args), log_offset=offset)
            atomic_write_text(self.records / f"{key}.json", job.to_json())
            return job

    def get(self, run_dir: Path) -> Job | None:
        """The last job recorded for ``run_dir``, running or not."""
        self._reap()
        return self._read(self.records / f"{job_key(run_dir)}.json")

    def running(self, run_dir: Path) -> Job | None:
        job = self.get(run_dir)
        return job if job is not None and job.alive() else None

    def stop(self, run_dir: Path, timeout: float = 60) -> bool:
        """SIGTERM to the job's process group and wait up to ``timeout`` s for it to end; True
        if it was running."""
        job = self.running(run_dir)
        if job is None:
            return False
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not job.alive() and job_key(run_dir) not in self._children:  # ended, and reaped if ours
                break
            time.sleep(0.2)
        return True

    def exit_code(self, run_dir: Path) -> int | None:
        """The exit status of the last job of ``run_dir``, when this server (or an earlier one)
        saw it end."""
        job = self.get(run_dir)
        return job.exit_code if job is not None else None

    def log_tail(self, run_dir: Path, lines: int = 200) -> str:
        """The last ``lines`` lines of the last job's log (from its start line on)."""
        job = self.get(run_dir)
        if job is None or not job.log.is_file():
            return ""
        with open(job.log, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(job.log_offset, size - TAIL_BYTES))
            text = fh.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def all(self) -> list[Job]:
        """Every recorded job, newest first."""
        self._reap()
        jobs = [job for path in self.records.glob("*.json") if (job := self._read(path)) is not None]
        return sorted(jobs, key=lambda j: j.started, reverse=True)

    def _read(self, path: Path) -> Job | None:
        try:
            return Job.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _reap(self) -> None:
        """Collect the children of this server that ended and record their exit status."""
        for key, proc in list(self._children.items()):
            code = proc.poll()
            if code is None or self._children.pop(key, None) is not proc:  # running, or reaped by another thread
                continue
            record = self.records / f"{key}.json"
            job = self._read(record)
            if job is not None and job.pid == proc.pid:
                job.exit_code = code
                atomic_write_text(record, job.to_json())
