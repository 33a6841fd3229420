"""TRL stages checkpoint, resume and stop like the shared engine: a dpo run killed with SIGKILL
after its step-4 checkpoint and resumed ends with exactly the adapter of an uninterrupted run;
SIGTERM checkpoints the current step and raises; ``--resume`` without a checkpoint starts over.
GRPO samples its completions, so its exact resume also needs the restored RNG states."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from leantune.alignment.preference import build_preference_pairs
from leantune.data.builtin import dialog_pairs, write_jsonl
from leantune.pipeline import train
from leantune.recipe import load_recipe
from leantune.training.interrupt import TrainingInterrupted

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_single_thread")]

STEPS, SAVE_STEPS = 6, 2

# The child trains the "killed" recipe and SIGKILLs itself once step 5 is logged: checkpoint-4
# is then complete, metrics.jsonl already holds step 5, and checkpoint-6 does not exist.
KILLER = r"""
import json, os, signal, sys
import torch, trl
from transformers import TrainerCallback
from leantune.pipeline import train
from leantune.recipe import load_recipe

class Kill(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 5 and "loss" in (logs or {}):
            os.kill(os.getpid(), signal.SIGKILL)

original = trl.DPOTrainer.train
def train_then_die(self, *a, **kw):
    self.add_callback(Kill())  # after leantune's callbacks: step 5 reaches metrics.jsonl first
    return original(self, *a, **kw)
trl.DPOTrainer.train = train_then_die
torch.set_num_threads(1)
train(load_recipe(raw=json.loads(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trl-resume-data") / "pref.jsonl"
    pairs = [p for p in dialog_pairs() if len(p["prompt"]) < 60 and len(p["completion"]) < 60]
    write_jsonl(build_preference_pairs(pairs, seed=0, limit=24), path)
    return path


def raw_recipe(model_dir, data, out, name, **train_kw) -> dict:
    train_cfg = {"max_steps": STEPS, "save_steps": SAVE_STEPS, "batch_size": 4, "max_length": 64, "lr": 1e-2,
                 "precision": "fp32", "device": "cpu", "logging_steps": 1, **train_kw}
    return {"model": str(model_dir), "stage": {"name": "dpo", "beta": 0.1}, "method": {"name": "lora", "r": 4},
            "data": {"template": "chatml", "train": str(data)}, "train": train_cfg,
            "eval": {"before": False}, "output": {"dir": str(out), "name": name}}


def adapter(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name


def metric_steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, pref_file, tmp_path_factory):
    """(uninterrupted run dir, killed run's recipe): the killed child runs while the reference trains."""
    out = tmp_path_factory.mktemp("trl-runs")
    killed = raw_recipe(tiny_model_dir("llama"), pref_file, out, "killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen([sys.executable, "-c", KILLER, json.dumps(killed)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        train(load_recipe(raw=raw_recipe(tiny_model_dir("llama"), pref_file, out, "straight")))
        log, _ = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL, log
    return out / "straight", killed


def test_sigkill_then_resume_matches_uninterrupted(runs):
    straight, killed = runs
    run_dir = straight.parent / "killed"
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5]

    summary = train(load_recipe(raw=killed), resume=True)
    assert summary.steps == STEPS
    assert_same_adapter(adapter(straight), adapter(run_dir))
    assert metric_steps(run_dir) == metric_steps(straight) == list(range(1, STEPS + 1))
    assert [h["step"] for h in summary.history] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-4", "checkpoint-6"]  # save_total_limit 2
    assert not (run_dir / "trl").exists() and not (ckpts / "README.md").exists()


def sigterm_during_step_3(monkeypatch, trainer_cls) -> None:
    """``trainer_cls.train`` sends this process SIGTERM as step 3 begins (leantune's handler catches it)."""
    from transformers import TrainerCallback

    class Term(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # never the default: death
                os.kill(os.getpid(), signal.SIGTERM)

    original = trainer_cls.train

    def train_with_term(self, *a, **kw):
        self.add_callback(Term())
        return original(self, *a, **kw)

    monkeypatch.setattr(trainer_cls, "train", train_with_term)


def interrupt_then_resume(raw: dict, run_dir, monkeypatch, trainer_cls) -> None:
    """SIGTERM at step 3 (no save_steps): checkpoint-3 and TrainingInterrupted; then ``--resume``."""
    with monkeypatch.context() as m:
        sigterm_during_step_3(m, trainer_cls)
        with pytest.raises(TrainingInterrupted, match=r"SIGTERM: checkpoint saved at step 3 in .*checkpoints") as err:
            train(load_recipe(raw=raw))
    assert err.value.exit_code == 128 + signal.SIGTERM
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (run_dir / "adapter").exists()
    train(load_recipe(raw=raw), resume=True)


def test_sigterm_checkpoints_the_current_step_and_resumes_exactly(runs, monkeypatch):
    import trl

    straight, killed = runs
    raw = {**killed, "train": {**killed["train"], "save_steps": None},
           "output": {**killed["output"], "name": "termed"}}
    run_dir = straight.parent / "termed"
    interrupt_then_resume(raw, run_dir, monkeypatch, trl.DPOTrainer)
    assert_same_adapter(adapter(straight), adapter(run_dir))
    assert metric_steps(run_dir) == list(range(1, STEPS + 1))


def test_grpo_resume_restores_sampling(tiny_model_dir, pref_file, tmp_path, monkeypatch):
    import trl

    (tmp_path / "rewards.py").write_text("def r(prompts, completions, **kw):\n"
                                         "    return [float(sum(map(ord, c)) % 7) for c in completions]\n")
    raw = raw_recipe(tiny_model_dir("llama"), pref_file, tmp_path, "straight", max_steps=4, save_steps=None)
    raw["stage"] = {"name": "grpo", "reward": f"{tmp_path / 'rewards.py'}:r", "max_new_tokens": 6,
                    "num_generations": 2}
    train(load_recipe(raw=raw))
    a = adapter(tmp_path / "straight")
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 0  # it did learn
    termed = {**raw, "output": {**raw["output"], "name": "termed"}}
    interrupt_then_resume(termed, tmp_path / "termed", monkeypatch, trl.GRPOTrainer)
    assert_same_adapter(a, adapter(tmp_path / "termed"))


def test_resume_without_checkpoint_starts_from_zero(tiny_model_dir, pref_file, tmp_path):
    raw = raw_recipe(tiny_model_dir("llama"), pref_file, tmp_path, "early", max_steps=2, save_steps=None)
    train(load_recipe(raw=raw))
    run_dir = tmp_path / "early"
    assert not (run_dir / "checkpoints").exists()
    (run_dir / "summary.json").unlink()  # as if killed before it finished
    said: list[str] = []
    summary = train(load_recipe(raw=raw), resume=True, say=said.append)
    assert any("no" in m and "checkpoint" in m and "step 0" in m for m in said), said
    assert summary.steps == 2 and metric_steps(run_dir) == [1, 2]
