"""A real ``leantune train`` process killed with SIGKILL mid-run and resumed with
``--resume`` ends exactly where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

LEANTUNE = Path(sys.executable).parent / "leantune"
STEPS, SAVE_STEPS, KILL_AT = 12, 2, 4

QA = [
    ("What is the capital of France?", "Paris."),
    ("List files in a directory.", "ls -la"),
    ("Add two and two.", "4"),
    ("Say hello.", "Hello!"),
    ("Copy a file.", "cp src dst"),
    ("What colour is the sky?", "Blue."),
    ("Name a prime number.", "7"),
    ("Print the working directory.", "pwd"),
]

SLOW_STEPS = Path(__file__).parent / "slow_steps"  # sitecustomize.py: a delay per micro-batch



def child_env(tmp_path: Path, delay: float | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("LEANTUNE_TEST_STEP_DELAY", None)
    if delay is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SLOW_STEPS), env.get("PYTHONPATH")]))
        env["LEANTUNE_TEST_STEP_DELAY"] = str(delay)
        env["LEANTUNE_TEST_HOOK_MARK"] = str(tmp_path / "hook-loaded")
    return env


def write_recipe(tmp_path: Path, model_dir: Path) -> Path:
    rows = [{"instruction": q, "output": a} for q, a in QA] * 2
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "model": str(model_dir),
        "method": {"name": "lora", "r": 4},
        "stage": "sft",
        "data": {"train": "train.jsonl", "format": "alpaca", "eval_split": 0.125},
        "train": {"max_steps": STEPS, "save_steps": SAVE_STEPS, "save_total_limit": 2, "logging_steps": 1,
                  "eval_steps": 4, "batch_size": 2, "lr": 5e-3, "scheduler": "linear", "warmup_ratio": 0.2,
                  "precision": "fp32", "max_length": 128},
        "eval": {"before": False},
        "output": {"dir": "runs", "name": "killed"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_cli(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(LEANTUNE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"leantune {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    assert LEANTUNE.is_file(), LEANTUNE
    recipe = write_recipe(tmp_path, tiny_model_dir("llama"))
    killed_dir, straight_dir = tmp_path / "runs" / "killed", tmp_path / "runs" / "straight"

    # the uninterrupted reference run, in the background meanwhile
    straight_log = (tmp_path / "straight.log").open("w")
    straight_proc = subprocess.Popen([str(LEANTUNE), "train", str(recipe), "output.name=straight"], cwd=tmp_path,
                                     env=child_env(tmp_path, None), stdout=straight_log, stderr=subprocess.STDOUT)

    # 1. start a real training process and SIGKILL it once checkpoint step-4 exists
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([str(LEANTUNE), "train", str(recipe)], cwd=tmp_path, env=child_env(tmp_path, 0.3),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (killed_dir / "checkpoints" / f"step-{KILL_AT}").is_dir():
            assert proc.poll() is None, f"training ended before step {KILL_AT}:\n" + \
                (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint step-4 after 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "hook-loaded").exists()  # the slowing hook really ran in the child
    assert not (killed_dir / "adapter").exists()  # it did not finish
    from leantune.training.checkpoint import list_checkpoints

    ckpts = list_checkpoints(killed_dir / "checkpoints")
    resumed_from = int(ckpts[-1].name.split("-")[1])
    assert KILL_AT <= resumed_from < STEPS
    lines_before = (killed_dir / "metrics.jsonl").read_text().splitlines()

    # 2. resume it to the end (at full speed)
    run_cli(["train", str(recipe), "--resume"], tmp_path, child_env(tmp_path, None))
    try:
        straight_proc.wait(timeout=300)
    finally:
        if straight_proc.poll() is None:
            os.kill(straight_proc.pid, signal.SIGKILL)
            straight_proc.wait(timeout=30)
        straight_log.close()
    assert straight_proc.returncode == 0, (tmp_path / "straight.log").read_text()

    resumed, straight = metrics(killed_dir), metrics(straight_dir)
    train_steps = [r["step"] for r in resumed if "loss" in r]
    eval_steps = [r["step"] for r in resumed if "eval_loss" in r]
    assert train_steps == list(range(1, STEPS + 1))  # every step exactly once, in order
    assert len(eval_steps) == len(set(eval_steps)) and eval_steps == [4, 8]
    # the records up to the checkpoint are the killed process's own: it resumed, not restarted
    kept = [ln for ln in lines_before if json.loads(ln)["step"] <= resumed_from]
    assert (killed_dir / "metrics.jsonl").read_text().splitlines()[: len(kept)] == kept

    last_resumed = [r["loss"] for r in resumed if "loss" in r][-1]
    last_straight = [r["loss"] for r in straight if "loss" in r][-1]
    assert abs(last_resumed - last_straight) <= 1e-6, (last_resumed, last_straight)
    for a, b in zip([r for r in resumed if "loss" in r], [r for r in straight if "loss" in r]):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and a["lr"] == b["lr"], (a, b)
    eval_resumed = json.loads((killed_dir / "eval.json").read_text())["after"]
    eval_straight = json.loads((straight_dir / "eval.json").read_text())["after"]
    assert eval_resumed == pytest.approx(eval_straight, rel=1e-6)

    wa = load_file(killed_dir / "adapter" / "adapter_model.safetensors")
    wb = load_file(straight_dir / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6, rtol=0), key
    assert any(v.abs().max() > 0 for k, v in wa.items() if "lora_B" in k)  # the adapter trained
    assert not [p for p in (killed_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
