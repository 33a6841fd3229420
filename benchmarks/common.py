"""Helpers shared by the benchmark scripts: machine facts, isolated workers, tables.

Every benchmark compares leantune with the usual baseline *in one run* on the
same machine, so results are only ever compared within one JSON file. The facts
recorded here say what that machine was.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

VERSIONED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes")


def _cpuinfo() -> tuple[str, set[str], int]:
    model, flags, physical = platform.processor() or "unknown", set(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags, 0
    phys_id = core_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
            physical.add((phys_id, core_id))
    return model, flags, len(physical)


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def machine_facts() -> dict:
    """What the numbers were measured on: CPU, cores, bf16/AMX flags, RAM, versions, date, commit."""
    model, flags, physical = _cpuinfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    facts = {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical or None,
        "usable_cpus": affinity,
        "cpu_flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                              "amx_tile", "amx_bf16", "amx_int8")},
        "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "ram_gib": _mem_total_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in VERSIONED},
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    try:
        import torch

        facts["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return facts


# --------------------------------------------------------------------------- measuring

def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# Worker processes print only what the benchmark prints: no library chatter or progress bars.
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
             "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def run_worker(script: Path, args: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run ``python script --worker …`` in a fresh process (separate RSS peak); return its JSON.

    The worker prints one line ``RESULT <json>`` on stdout; everything else is
    passed through to stderr so progress stays visible.
    """
    cmd = [sys.executable, str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **QUIET_ENV, **(env or {})}, cwd=ROOT)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if proc.returncode != 0 or result is None:
        tail = "\n".join((proc.stderr or "").splitlines()[-25:])
        return {"error": f"worker exited with {proc.returncode}", "stderr_tail": tail}
    return result


def emit(result: dict) -> None:
    """Worker side of :func:`run_worker`."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (also readable in a terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def write_results(path: Path, payload: dict) -> Path:
    """Write ``payload`` as JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- lock-step workers
#
# On a shared, noisy machine the load drifts over minutes, so rows measured one after
# another are not comparable. Workers of one group run side by side but take turns
# step by step: the driver lets one worker run one step while the others wait, so
# every row's k-th step sees about the same background load.

class StepClock:
    """Worker side: say ready, then per step wait for the driver's go, time the step, report done;
    :meth:`finish` waits until every worker of the group has finished its steps."""

    def __init__(self, sync: str | None):
        self.fds = tuple(int(x) for x in sync.split(",")) if sync else None
        self.steps: list[dict] = []
        self._t0 = self._r0 = None
        self._ready = False

    def _wait(self) -> None:
        if self.fds and not os.read(self.fds[0], 1):
            raise SystemExit("the driver went away")

    def begin(self) -> None:
        if self.fds and not self._ready:
            os.write(self.fds[1], b"r")  # loaded: the driver starts step 1 once all are
            self._ready = True
        self._wait()
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._t0 = time.perf_counter()

    def end(self, **info) -> None:
        t = time.perf_counter()
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.steps.append({"s": t - self._t0, "user_s": r.ru_utime - self._r0.ru_utime,
                           "sys_s": r.ru_stime - self._r0.ru_stime, "minor_faults": r.ru_minflt - self._r0.ru_minflt,
                           **info})
        if self.fds:
            os.write(self.fds[1], b".")

    def finish(self) -> None:
        """After the last step: wait until the others are done too, so that no post-training
        work (evaluation, teardown) runs beside another worker's timed step."""
        self._wait()


def run_lockstep(script: Path, workers: dict[str, list[str]], steps: int, step_timeout: float = 600,
                 env: dict | None = None, log=print) -> dict[str, dict]:
    """Start every worker (``python script *args --sync R,W``), then hand out steps round-robin.

    Returns each worker's ``RESULT`` JSON (or ``{"error": …}``).
    """
    import select
    import tempfile

    procs = {}
    for name, args in workers.items():
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        out = tempfile.TemporaryFile("w+")
        err = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen([sys.executable, str(script), *args, "--sync", f"{go_r},{done_w}"],
                                stdout=out, stderr=err, pass_fds=(go_r, done_w), cwd=ROOT,
                                env={**os.environ, **QUIET_ENV, **(env or {})})
        os.close(go_r)
        os.close(done_w)
        procs[name] = {"proc": proc, "go": go_w, "done": done_r, "out": out, "err": err, "alive": True}

    def receive(name: str, p: dict, what: str) -> bool:
        ready, _, _ = select.select([p["done"]], [], [], step_timeout)
        if ready and os.read(p["done"], 1):
            return True
        p["alive"] = False
        log(f"  {name}: no {what} ({'timeout' if not ready else 'worker exited'})")
        return False

    for name, p in procs.items():  # every worker loaded before step 1
        receive(name, p, "ready signal")
    t_start = time.perf_counter()
    for step in range(steps):
        for name, p in procs.items():
            if not p["alive"]:
                continue
            try:
                os.write(p["go"], b".")
            except BrokenPipeError:
                p["alive"] = False
                continue
            receive(name, p, f"step {step + 1}")
        log(f"  step {step + 1}/{steps} done ({time.perf_counter() - t_start:.0f} s)")
    for p in procs.values():  # release them all together (StepClock.finish)
        try:
            os.write(p["go"], b".")
        except BrokenPipeError:
            pass
    results = {}
    for name, p in procs.items():
        os.close(p["go"])
        try:
            p["proc"].wait(timeout=step_timeout)
        except subprocess.TimeoutExpired:
            p["proc"].kill()
            p["proc"].wait()
        os.close(p["done"])
        p["out"].seek(0)
        p["err"].seek(0)
        result = None
        for line in p["out"].read().splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        if p["proc"].returncode != 0 or result is None:
            tail = "\n".join(p["err"].read().splitlines()[-25:])
            result = {"error": f"worker exited with {p['proc'].returncode}", "stderr_tail": tail}
        results[name] = result
    return results
