"""The web page's workspace (paths that cannot leave it, uploads, listings) and the progress
read from a run folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leantune.errors import LeantuneError
from leantune.webui.jobs import Job
from leantune.webui.progress import read_progress, run_row
from leantune.webui.workspace import OutsideWorkspace, Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def make_run(folder: Path, *, max_steps: int | None = 8, epochs: float = 1.0) -> Path:
    folder.mkdir(parents=True)
    recipe = {"model": {"name": "tiny"}, "method": [{"name": "lora"}, {"name": "bitfit"}], "stage": {"name": "sft"},
              "train": {"max_steps": max_steps, "epochs": epochs}}
    (folder / "run.json").write_text(json.dumps({"recipe": recipe}))
    return folder


# ------------------------------------------------------------------ paths


def test_paths_inside_resolve_and_show_relative(ws):
    (ws.root / "data").mkdir()
    (ws.root / "data" / "a.jsonl").write_text("{}\n")
    got = ws.path("data/../data/a.jsonl", must_exist=True)
    assert got == ws.root / "data" / "a.jsonl"
    assert ws.path(str(ws.root / "data" / "a.jsonl")) == got
    assert ws.rel(got) == "data/a.jsonl"
    assert ws.path("new/file.yaml") == ws.root / "new" / "file.yaml"  # need not exist


@pytest.mark.parametrize("typed", ["../x.jsonl", "data/../../x.jsonl", "/etc/passwd"])
def test_paths_that_leave_are_refused(ws, typed):
    with pytest.raises(OutsideWorkspace, match="outside the workspace") as err:
        ws.path(typed)
    assert str(err.value).startswith(f"{typed}: ") and str(ws.root) in str(err.value)
    assert err.value.exit_code == 2


def test_symlinks_out_are_refused_and_in_are_followed(ws, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("x")
    (ws.root / "to_file").symlink_to(outside / "key.txt")
    (ws.root / "to_folder").symlink_to(outside)
    (ws.root / "real").mkdir()
    (ws.root / "real" / "d.jsonl").write_text("{}\n")
    (ws.root / "alias").symlink_to(ws.root / "real")
    for typed in ("to_file", "to_folder/key.txt", "to_folder/new.txt", str(ws.root / "to_folder")):
        with pytest.raises(OutsideWorkspace):
            ws.path(typed)
    assert ws.path("alias/d.jsonl", must_exist=True) == ws.root / "real" / "d.jsonl"


def test_empty_and_missing_paths(ws):
    with pytest.raises(LeantuneError, match="^give a data file$"):
        ws.path("  ", what="data file")
    with pytest.raises(LeantuneError, match="^nope.jsonl: no such data file in the workspace$"):
        ws.path("nope.jsonl", must_exist=True, what="data file")


# ------------------------------------------------------------------ uploads


def test_upload_strips_folders_and_never_overwrites(ws, tmp_path):
    src = tmp_path / "upload.tmp"
    src.write_text("first\n")
    first = ws.save_upload(src, "C:\\Users\\me\\train.jsonl")
    assert first == ws.root / "data" / "train.jsonl"
    src.write_text("second\n")
    second = ws.save_upload(src, "../../etc/train.jsonl")
    third = ws.save_upload(src, "train.jsonl")
    assert [second.name, third.name] == ["train-1.jsonl", "train-2.jsonl"]
    assert first.read_text() == "first\n" and second.read_text() == "second\n"
    assert sorted(p.name for p in (ws.root / "data").iterdir()) == ["train-1.jsonl", "train-2.jsonl", "train.jsonl"]


def test_upload_refuses_large_and_unusable_names(ws, tmp_path):
    src = tmp_path / "big.tmp"
    src.write_bytes(b"x" * (3 * 2**20))
    with pytest.raises(LeantuneError, match=r"big.csv: 3\.0 MB is over the upload limit of 2\.0 MB"):
        ws.save_upload(src, "big.csv", limit=2 * 2**20)
    for name in ("", "dir/", ".hidden.jsonl"):
        with pytest.raises(LeantuneError, match="not a usable file name"):
            ws.save_upload(src, name)
    assert not (ws.root / "data").exists() or not any((ws.root / "data").iterdir())


# ------------------------------------------------------------------ listings


def test_data_files_skip_runs_hidden_and_other_files(ws, tmp_path):
    for rel in ("data/a.jsonl", "data/b.CSV", "top.txt", "deep/x/y.parquet", "notes.md", "data/.partial.jsonl",
                ".cache/c.jsonl", "runs/r1/metrics.jsonl", "runs/r1/adapter/x.json", "out/runs/lora/eval.jsonl"):
        (ws.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / rel).write_text("{}\n")
    for run in ("runs/r1", "out/runs/lora"):
        (ws.root / run / "run.json").write_text("{}")
    (tmp_path / "far.jsonl").write_text("{}\n")
    (ws.root / "link.jsonl").symlink_to(tmp_path / "far.jsonl")
    assert ws.data_files() == ["data/a.jsonl", "data/b.CSV", "deep/x/y.parquet", "top.txt"]


def test_runs_newest_first_with_started_jobs(ws):
    old = make_run(ws.root / "runs" / "old")
    new = make_run(ws.root / "prove" / "runs" / "lora")
    make_run(ws.root / ".hidden" / "run")
    make_run(ws.root / "a" / "b" / "c" / "d" / "e" / "too-deep")
    os.utime(old / "run.json", (1_000, 1_000))
    os.utime(new / "run.json", (2_000, 2_000))
    jobs = ws.state_dir / "jobs"
    jobs.mkdir(parents=True)
    pending = ws.root / "runs" / "pending"
    job = Job(run_dir=pending, recipe=ws.root / "r.yaml", pid=1, log=ws.root / "l.log", started=3_000,
              resume=False, args=["train", "r.yaml"])
    (jobs / "a.json").write_text(job.to_json())
    advise = Job(run_dir=ws.root / "prove", recipe=None, pid=1, log=ws.root / "l.log", started=4_000,
                 resume=False, args=["advise", "d.jsonl", "--prove"])
    (jobs / "b.json").write_text(advise.to_json())
    assert ws.runs() == [pending, new, old]


def test_recipes_listed(ws):
    (ws.root / "recipes" / "sub").mkdir(parents=True)
    for name in ("a.yaml", "sub/b.yml", "c.txt", ".d.yaml"):
        (ws.root / "recipes" / name).write_text("x: 1\n")
    assert ws.recipes() == ["recipes/a.yaml", "recipes/sub/b.yml"]


# ------------------------------------------------------------------ progress


def test_progress_while_training_skips_a_half_written_line(tmp_path):
    run = make_run(tmp_path / "run", max_steps=None, epochs=2)
    records = [{"step": 1, "loss": 2.5, "epoch": 0.3333, "tokens_per_s": 10.0},
               {"step": 2, "loss": 2.0, "epoch": 0.6667, "tokens_per_s": 12.0},
               {"step": 2, "eval_accuracy": 0.5, "eval_runtime": 0.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "lo')
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "checkpoints" / ".tmp-step-3").mkdir()
    p = read_progress(run, log_tail="estimated peak memory: 1,234 MB\n")
    assert (p.status, p.step, p.max_steps, p.checkpoints) == ("stopped", 2, 6, 1)  # 2 epochs × 3 steps
    assert p.losses == [(1, 2.5), (2, 2.0)] and p.evals == [(2, "accuracy", 0.5)]
    assert (p.tokens_per_s, p.estimate_mb) == (12.0, 1234.0)
    assert p.detail == "stopped at step 2 of 6 · 1 checkpoint; resume to continue"


def test_progress_status_from_the_job(tmp_path):
    run = make_run(tmp_path / "run").resolve()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "leantune"])
    alive = Job(run_dir=run, recipe=None, pid=proc.pid, log=tmp_path / "l", started=time.time(), resume=False,
                args=["train"])
    try:
        assert alive.alive()  # at once, while exec may not have set its command line yet
        earlier = Job(run_dir=run, recipe=None, pid=proc.pid, log=tmp_path / "l", started=time.time() - 3600,
                      resume=False, exit_code=1)
        assert not earlier.alive()  # a job of an hour ago: its pid now belongs to another process
        assert read_progress(run, earlier).status == "failed"
        p = read_progress(run, alive, "train step 3/8 (38%)  loss 1.0\n")
        assert (p.status, p.step, p.detail) == ("running", 3, "step 3 of 8 · 0 checkpoints")
        nested = read_progress(make_run(run / "runs" / "lora"), alive)
        assert nested.status == "running"  # a job above the run (advise --prove) is writing it
    finally:
        proc.kill()
        proc.wait()
    dead = Job(run_dir=run, recipe=None, pid=alive.pid, log=tmp_path / "l", started=0, resume=False,
               exit_code=2)
    failed = read_progress(run, dead, "loading …\nerror: data.train: no such file\n")
    assert (failed.status, failed.detail) == ("failed", "error: data.train: no such file")
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    diverged = read_progress(run, dead, "error: step 5: the loss is NaN\n")
    assert (diverged.status, diverged.detail) == (
        "stopped",
        "stopped at step 4 of 8 by an error: error: step 5: the loss is NaN · 1 checkpoint; resume to continue")
    assert read_progress(tmp_path / "never", None).status == "not started"


def test_finished_run_row(tmp_path):
    run = make_run(tmp_path / "done")
    summary = {"steps": 8, "wall_time_s": 12.34, "tokens_per_s": 99.0, "peak_memory_mb": 812.6,
               "memory_kind": "peak RSS", "estimate_mb": 700.0, "eval_after": {"loss": 1.5, "accuracy": 0.75}}
    (run / "summary.json").write_text(json.dumps(summary))
    p = read_progress(run)
    assert (p.status, p.step, p.max_steps, p.estimate_mb, p.peak_memory_mb) == ("finished", 8, 8, 700.0, 812.6)
    assert run_row(run, p) == {"name": "done", "method": "lora+bitfit", "stage": "sft", "model": "tiny",
                               "status": "finished", "step": "8/8", "metric": "accuracy", "value": 0.75,
                               "wall_s": 12.3, "peak_mb": 813}


def test_webui_modules_import_without_torch():
    code = ("import sys, leantune.webui.workspace, leantune.webui.jobs, leantune.webui.progress; "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
