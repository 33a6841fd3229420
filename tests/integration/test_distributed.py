"""Several processes: `leantune train --nproc 2` on CPU processes (gloo on 127.0.0.1).

A 2-process DDP run equals a 1-process run with the same global batch, step by step and in
its final weights, also with the layers compiled (train.compile); a 2-process run killed
with SIGKILL and resumed equals the uninterrupted one; bad launches are refused with a
sentence before anything starts.
"""
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

ROOT = Path(__file__).resolve().parents[2]
QA = [("What is the capital of France?", "Paris."), ("List files in a directory.", "ls -la"),
      ("Add two and two.", "4"), ("Say hello.", "Hello!"), ("Copy a file.", "cp src dst"),
      ("What colour is the sky?", "Blue."), ("Name a prime number.", "7"),
      ("Print the working directory.", "pwd"), ("Show the date.", "date"), ("Count to three.", "1 2 3"),
      ("Make a folder named x.", "mkdir x")]
TEXTS = [("great film, loved it", "pos"), ("terrible and boring", "neg"), ("it was fine", "mid"),
         ("wonderful acting", "pos"), ("awful plot", "neg"), ("average at best", "mid"),
         ("a joy to watch", "pos"), ("waste of time", "neg"), ("neither good nor bad", "mid"),
         ("brilliant", "pos"), ("dreadful", "neg")]

SLOW_STEPS = Path(__file__).parent / "slow_steps"  # sitecustomize.py: a delay per micro-batch



def child_env(tmp_path: Path, delay: float | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if delay is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(SLOW_STEPS), env.get("PYTHONPATH", "")])
        env["LEANTUNE_TEST_STEP_DELAY"] = str(delay)
    return env


def write_recipe(tmp_path: Path, model_dir: Path, name: str, kind: str, **train) -> Path:
    data = tmp_path / f"{kind}.jsonl"
    if kind == "sft":
        rows = [{"instruction": q, "output": a} for q, a in QA]
        method = [{"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}]
    else:
        # equal lengths (one token per byte): with padding, a full fine-tune's position and pad
        # embeddings get ~1e-10 gradients in one batching and none in another, which AdamW
        # turns into whole steps; that is padding, not distribution
        rows = [{"text": t.ljust(24, "."), "label": y} for t, y in TEXTS]
        method = [{"name": "full"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": {"name": str(model_dir)}, "method": method, "stage": {"name": kind},
              "data": {"train": str(data), "eval_split": 0.0},
              "train": {"max_steps": 4, "lr": 5e-3, "precision": "fp32", "device": "cpu", "logging_steps": 1,
                        "max_length": 48, "seed": 3, **train},
              "eval": {"before": False}, "output": {"dir": str(tmp_path / "runs"), "name": name}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def leantune(args: list[str], env: dict, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leantune", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run / "adapter").glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    return out


def assert_same_training(a: Path, b: Path, rel: float = 1e-5, atol: float = 1e-5) -> None:
    """The loss at every step within ``rel`` (relative), every trainable tensor within ``atol``
    (AdamW turns float-rounding noise in a near-zero gradient into ~1e-6 moves of that weight)."""
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert abs(x - y) <= rel * abs(x), (la, lb)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=0, atol=atol), k


@pytest.fixture(scope="module")
def cls_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny BERT classifier without dropout: two processes draw different dropout masks."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = tiny_model_dir("bert", "seq_cls")
    out = tmp_path_factory.mktemp("bert-nodrop")
    AutoModelForSequenceClassification.from_pretrained(
        src, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["sft", "cls"])
def test_two_processes_equal_one_with_the_same_global_batch(kind, tiny_model_dir, cls_model_dir, tmp_path):
    """2 processes × batch 2 == 1 process × batch 4 == 1 process × batch 2 × grad_accum 2:
    the loss at every step and the final trainable tensors (sft + lora, cls + full)."""
    model = tiny_model_dir("llama") if kind == "sft" else cls_model_dir
    env = child_env(tmp_path)
    one = write_recipe(tmp_path, model, "one", kind, batch_size=4)
    two = write_recipe(tmp_path, model, "two", kind, batch_size=2)
    accum = write_recipe(tmp_path, model, "accum", kind, batch_size=2, grad_accum=2)
    for recipe, nproc in ((one, "1"), (two, "2"), (accum, "1")):
        done = leantune(["train", str(recipe), "--nproc", nproc], env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = tmp_path / "runs"
    meta = json.loads((runs / "two" / "run.json").read_text())
    assert (meta["processes"], meta["effective_batch"], meta["strategy"]) == (2, 4, "ddp")
    assert_same_training(runs / "one", runs / "two")
    assert_same_training(runs / "one", runs / "accum")


def test_compiled_layers_under_two_processes_train_as_one_eager(tiny_model_dir, tmp_path):
    """train.compile under DDP (the layers compiled in place before the engine wraps the
    model): 2 processes × batch 2 compiled equal 1 process × batch 4 eager."""
    from leantune.errors import RecipeError
    from leantune.training.compile import check_compiler

    try:
        check_compiler(torch.device("cpu"))
    except RecipeError as exc:
        pytest.skip(str(exc))
    env = child_env(tmp_path)
    model = tiny_model_dir("llama")
    one = write_recipe(tmp_path, model, "one", "sft", batch_size=4)
    two = write_recipe(tmp_path, model, "two", "sft", batch_size=2, compile=True)
    for recipe, nproc in ((one, "1"), (two, "2")):
        done = leantune(["train", str(recipe), "--nproc", nproc], env, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train.compile" in done.stdout
    assert_same_training(tmp_path / "runs" / "one", tmp_path / "runs" / "two", rel=1e-4, atol=1e-4)


def rank_pid(parent: int, rank: int) -> int | None:
    """The process of ``rank`` among ``parent``'s descendants (torchrun gives each its RANK)."""
    for pid in descendants(parent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LEANTUNE_TEST_STEP_DELAY=0.4" in env:
            return pid
    return None


def start_slow(recipe: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leantune", "train", str(recipe), "--nproc", "2", *extra],
                            env=child_env(tmp_path, delay=0.4), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def test_two_processes_stopped_killed_and_resumed_equal_uninterrupted(tiny_model_dir, tmp_path):
    """SIGKILL of every process after checkpoint step-4, a resume, SIGTERM to rank 1 alone
    (both ranks checkpoint after the same step and stop), a last resume: the run ends equal
    to an uninterrupted 2-process run."""
    model = tiny_model_dir("llama")
    steps = dict(batch_size=2, max_steps=10, save_steps=2, save_total_limit=5, scheduler="linear",
                 warmup_ratio=0.2)
    whole = write_recipe(tmp_path, model, "whole", "sft", **steps)
    cut = write_recipe(tmp_path, model, "cut", "sft", **steps)
    done = leantune(["train", str(whole), "--nproc", "2"], child_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "runs" / "cut"
    proc = start_slow(cut, tmp_path)
    try:
        wait_for(lambda: (run / "checkpoints" / "step-4").is_dir(), proc, "checkpoint step-4")
    finally:
        for pid in [proc.pid, *descendants(proc.pid)]:  # leantune, torchrun and both ranks at once
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    assert not (run / "summary.json").exists()

    proc = start_slow(cut, tmp_path, "--resume")
    wait_for(lambda: any(s > 5 for s in logged_steps(run)), proc, "step 6 after the resume")
    os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "SIGTERM: checkpoint saved at step" in out, out[-3000:]
    stopped_at = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert 6 <= stopped_at < 10 and not (run / "summary.json").exists()
    assert logged_steps(run)[-1] == stopped_at   # rank 0 stopped after the same step

    resumed = leantune(["train", str(cut), "--nproc", "2", "--resume"], child_env(tmp_path))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert logged_steps(run) == list(range(1, 11))
    assert_same_training(tmp_path / "runs" / "whole", run, rel=1e-6, atol=1e-6)

    # resuming with another number of processes would change the global batch: refused, run kept
    (run / "summary.json").unlink()
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    other = leantune(["train", str(cut), "--nproc", "1", "--resume"], child_env(tmp_path))
    assert other.returncode == 2
    assert "written by a run of 2 process(es)" in other.stdout + other.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("args, overrides, message", [
    (["--nproc", "2"], ["train.device=cuda"], "sees no GPU"),
    ([], ["train.distributed.strategy=deepspeed"], "pip install deepspeed"),
    ([], ["train.distributed.strategy=fsdp"], "fsdp"),
    ([], ["train.precision=fp16"], "fp16 needs a GPU"),
    (["--nnodes", "2"], [], "--master-addr"),
])
def test_bad_launches_are_refused_with_a_sentence(args, overrides, message, tiny_model_dir, tmp_path):
    recipe = write_recipe(tmp_path, tiny_model_dir("llama"), "bad", "sft", batch_size=2)
    done = leantune(["train", str(recipe), *overrides, *args], child_env(tmp_path), timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert message in out and "Traceback" not in out
    assert not (tmp_path / "runs" / "bad").exists()
