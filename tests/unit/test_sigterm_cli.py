"""SIGTERM to a real `leantune train` process (what `timeout`, Slurm and Kubernetes send):
it checkpoints and exits 143, and `--resume` ends bit-identical to a run never stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

ROWS = [{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("hi", "yes", "no", "ok", "bye", "up", "go", "on")]


def leantune(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "leantune", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def recipe_file(folder: Path, model_dir: Path, name: str, max_steps: int) -> Path:
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    raw = {"model": str(model_dir), "method": {"name": "lora", "r": 2}, "stage": "sft",
           "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0},
           "train": {"max_steps": max_steps, "batch_size": 2, "precision": "fp32", "max_length": 64,
                     "scheduler": "constant", "logging_steps": 1, "lr": 1e-3},
           "eval": {"before": False}, "output": {"dir": str(folder / "runs"), "name": name}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wait_for_step(metrics: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no training step within the time limit")


def test_sigterm_checkpoints_exits_143_and_resume_is_bit_identical(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    stopped = recipe_file(tmp_path, model_dir, "stopped", max_steps=100_000)
    proc = leantune("train", stopped)
    wait_for_step(tmp_path / "runs" / "stopped" / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM: checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    ckpts = sorted((tmp_path / "runs" / "stopped" / "checkpoints").iterdir())
    assert len(ckpts) == 1
    step = int(ckpts[0].name.removeprefix("step-"))

    total = step + 3
    resumed = leantune("train", stopped, f"train.max_steps={total}", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    straight = leantune("train", recipe_file(tmp_path, model_dir, "straight", max_steps=total))
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    a = load_file(tmp_path / "runs" / "stopped" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "runs" / "straight" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("args", [["train", "missing.yaml"], ["eval", "no-such-run"]])
def test_errors_from_a_real_process_are_one_sentence_and_fast(tmp_path, args):
    """No torch import before the input is checked: a bad input is answered in seconds."""
    t0 = time.monotonic()
    proc = leantune(*args, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err and err.startswith("error: ")
    assert time.monotonic() - t0 < 5  # several times less than importing torch and transformers
