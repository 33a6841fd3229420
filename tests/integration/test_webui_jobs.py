"""Trainings started from the web page: a real `leantune train` process, detached, watched
through its run folder, stopped with a checkpoint and resumed to the end; a record that a
new server finds again; other commands through `launch`."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from leantune.errors import LeantuneError
from leantune.webui.jobs import Jobs
from leantune.webui.progress import read_progress
from leantune.webui.workspace import Workspace

pytestmark = pytest.mark.integration

SLOW_STEPS = Path(__file__).parent / "slow_steps"  # sitecustomize.py: a delay per micro-batch
STEPS = 12
QA = [("What is the capital of France?", "Paris."), ("List files.", "ls -la"), ("Add two and two.", "4"),
      ("Say hello.", "Hello!"), ("Copy a file.", "cp src dst"), ("Name a prime.", "7"), ("Where am I?", "pwd"),
      ("What colour is the sky?", "Blue.")]


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    """A workspace whose jobs run one thread each."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("LEANTUNE_TEST_STEP_DELAY", raising=False)
    return Workspace(tmp_path / "ws")


@pytest.fixture
def slow_steps(monkeypatch):
    """Trainings started from now on wait 0.4 s per micro-batch, so a test can stop one mid-run."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SLOW_STEPS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("LEANTUNE_TEST_STEP_DELAY", "0.4")


def write_recipe(ws: Workspace, model: str, name: str = "webui", method: str = "lora") -> Path:
    rows = [{"instruction": q, "output": a} for q, a in QA] * 2
    (ws.root / "data").mkdir(exist_ok=True)
    (ws.root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": model, "method": {"name": method, "r": 4}, "stage": "sft",
              "data": {"train": "data/train.jsonl", "format": "alpaca", "eval_split": 0.125},
              "train": {"max_steps": STEPS, "save_steps": 2, "logging_steps": 1, "eval_steps": 4, "batch_size": 2,
                        "lr": 5e-3, "precision": "fp32", "max_length": 64},
              "eval": {"before": False}, "output": {"dir": "runs", "name": name}}
    path = ws.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def wait_for(check, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"gave up after {timeout} s waiting for {what}")


def progress(jobs: Jobs, run_dir: Path):
    return read_progress(run_dir, jobs.get(run_dir), jobs.log_tail(run_dir))


def test_start_stop_resume(ws, tiny_model_dir, slow_steps, monkeypatch):
    recipe = write_recipe(ws, str(tiny_model_dir("llama")))
    run_dir = ws.root / "runs" / "webui"
    jobs = Jobs(ws)
    job = jobs.start(recipe, run_dir)
    assert (job.recipe, job.args, job.resume) == (recipe, ["train", str(recipe)], False)
    with pytest.raises(LeantuneError, match=rf"^runs/webui: a training of this run is already going \(pid {job.pid}\)"):
        jobs.start(recipe, run_dir)
    assert run_dir in ws.runs()  # listed at once, before the run writes run.json

    first = wait_for(lambda: (p := progress(jobs, run_dir)).step >= 2 and p, "step 2")
    assert (first.status, first.max_steps) == ("running", STEPS)
    later = wait_for(lambda: (p := progress(jobs, run_dir)).step > first.step and p, "a later step")
    assert later.status == "running" and later.losses[0][0] == 1
    assert later.detail.startswith(f"step {later.step} of {STEPS} · ")

    fresh = Jobs(ws)  # a server started later finds the job, not its child
    assert fresh.running(run_dir).pid == job.pid and [j.pid for j in fresh.all()] == [job.pid]

    assert jobs.stop(run_dir, timeout=60) is True
    assert not job.alive() and jobs.exit_code(run_dir) == 143  # 128 + SIGTERM: checkpointed and stopped
    stopped = progress(jobs, run_dir)
    assert stopped.status == "stopped" and stopped.checkpoints >= 1 and stopped.step < STEPS, stopped
    assert "SIGTERM: checkpoint saved" in jobs.log_tail(run_dir)
    assert jobs.stop(run_dir) is False

    monkeypatch.delenv("LEANTUNE_TEST_STEP_DELAY")  # the rest at full speed
    resumed = jobs.start(recipe, run_dir, resume=True)
    assert resumed.resume and resumed.args[-1] == "--resume"
    wait_for(lambda: jobs.exit_code(run_dir) is not None, "the resumed run to end", timeout=180)
    assert not resumed.alive() and jobs.exit_code(run_dir) == 0, jobs.log_tail(run_dir)
    done = progress(jobs, run_dir)
    assert (done.status, done.step, done.max_steps) == ("finished", STEPS, STEPS), done
    assert [step for step, _ in done.losses] == list(range(1, STEPS + 1))
    assert [e[:2] for e in done.evals] == [(4, "loss"), (4, "perplexity"), (8, "loss"), (8, "perplexity")]
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == list(range(1, STEPS + 1))  # each step once, across the stop
    tail = jobs.log_tail(run_dir)
    assert tail.startswith("=== leantune train") and "--resume" in tail.splitlines()[0]
    assert "SIGTERM" not in tail and "SIGTERM" in resumed.log.read_text()  # the tail is this job's part
    assert Jobs(ws).exit_code(run_dir) == 0  # recorded for the next server


def test_failed_start_is_listed_with_its_error(ws):
    recipe = write_recipe(ws, "unused", name="broken", method="no-such-method")
    run_dir = ws.root / "runs" / "broken"
    jobs = Jobs(ws)
    job = jobs.start(recipe, run_dir)
    wait_for(lambda: jobs.exit_code(run_dir) is not None, "the failing run to end", timeout=60)
    assert jobs.exit_code(run_dir) == 2 and not job.alive()
    failed = progress(jobs, run_dir)
    assert failed.status == "failed" and "no-such-method" in failed.detail and failed.detail.startswith("error:")
    assert ws.runs() == [run_dir]


def test_launch_another_command(ws):
    write_recipe(ws, "unused")
    jobs = Jobs(ws)
    out = ws.root / "checks"
    job = jobs.launch(out, ["data", "check", "data/train.jsonl"], ws.root, "check data")
    assert job.recipe is None and job.log.name.startswith("check_data-")
    wait_for(lambda: jobs.exit_code(out) is not None, "leantune data check to end", timeout=60)
    assert jobs.exit_code(out) == 0 and not job.alive()
    rows = {cells[1].strip(): cells[2].strip() for line in jobs.log_tail(out).splitlines()
            if len(cells := line.split("│")) == 4}
    assert (rows["rows"], rows["invalid"], rows["format"]) == ("16", "0", "alpaca (chat)")
    assert ws.runs() == []  # not a training: no run listed
