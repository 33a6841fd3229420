"""Stage ``meta`` on the engine's pieces, through ``pipeline.train`` on tiny BERT: a run stopped
by SIGTERM and resumed from a ``save_steps`` checkpoint ends where an uninterrupted run ends,
a NaN loss stops it naming the step, the schedule's warm-up reaches the optimizer, and
``grad_accum`` episodes make one step. Also PPO's gradient accumulation."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leantune.errors import RecipeError
from leantune.pipeline import train
from leantune.recipe import load_recipe
from leantune.stages import meta as meta_module
from leantune.training.checkpoint import list_checkpoints
from leantune.training.guard import TrainingDiverged
from leantune.training.interrupt import TrainingInterrupted

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROWS = [{"text": c * n, "label": c} for c in "abcdef" for n in range(2, 8)]
STAGE = {"name": "meta", "n_way": 2, "k_shot": 2, "n_query": 2, "eval_episodes": 2, "inner_steps": 2}


@pytest.fixture
def meta_recipe(tmp_path, tiny_model_dir):
    """``meta_recipe(name, stage_settings, **train)``: a meta run on tiny BERT + LoRA, in tmp_path/runs/name."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    def make(name: str, stage: dict | None = None, **train_kw):
        return load_recipe(raw={
            "model": str(tiny_model_dir("bert", "masked_lm")), "method": {"name": "lora", "r": 2},
            "stage": {**STAGE, **(stage or {})}, "data": {"train": str(data), "eval": str(data)},
            "train": {"lr": 1e-2, "precision": "fp32", "logging_steps": 1, "max_length": 16, **train_kw},
            "eval": {"batch_size": 8, "before": False},
            "output": {"dir": str(tmp_path / "runs"), "name": name, "overwrite": True}})

    return make


def metrics(summary) -> list[dict]:
    return [json.loads(x) for x in (Path(summary.run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_resume_from_save_steps_checkpoint_matches_uninterrupted(meta_recipe, tmp_path, monkeypatch):
    """SIGTERM during step 3 checkpoints after it; with that checkpoint removed (as if killed),
    ``resume`` continues from step-2 (sampler, optimizer, warm-up schedule, dropout RNG) and ends
    with the adapter and per-step losses of a run never stopped."""
    kw = dict(max_steps=5, grad_accum=2, save_steps=2, warmup_ratio=0.4, scheduler="linear")
    full = train(meta_recipe("full", **kw), progress=False)

    class StopAtStep3(meta_module.TrainProgress):
        def update(self, step, loss, tps):
            super().update(step, loss, tps)
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    stopped = meta_recipe("stopped", **kw)
    with monkeypatch.context() as m:
        m.setattr(meta_module, "TrainProgress", StopAtStep3)
        with pytest.raises(TrainingInterrupted, match="SIGTERM.*meta step 3"):
            train(stopped, progress=False)
    ckpts = tmp_path / "runs" / "stopped" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-2", "step-3"]
    shutil.rmtree(ckpts / "step-3")
    resumed = train(stopped, resume=True, progress=False)

    assert [r["step"] for r in metrics(resumed)] == [1, 2, 3, 4, 5]  # step 3's first record was dropped
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], abs=1e-6)
    a = load_file(tmp_path / "runs" / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "runs" / "stopped" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in a.items() if "lora_B" in k)  # it trained


@pytest.mark.parametrize("algorithm", ["protonet", "reptile"])
def test_nan_loss_stops_naming_the_step(meta_recipe, monkeypatch, algorithm):
    calls = []
    original = meta_module.Meta.episode_loss

    def nan_from_step_2(self, model, features, episode):
        loss, acc = original(self, model, features, episode)
        calls.append(1)
        per_step = 2 if algorithm == "reptile" else 1  # reptile: inner_steps losses per episode
        return (loss * float("nan") if len(calls) > per_step else loss), acc

    monkeypatch.setattr(meta_module.Meta, "episode_loss", nan_from_step_2)
    recipe = meta_recipe(algorithm, {"algorithm": algorithm}, max_steps=4, save_steps=1)
    with pytest.raises(TrainingDiverged, match=r"became nan at step 2; the last good checkpoint is .*step-1"):
        train(recipe, progress=False)


@pytest.mark.parametrize("algorithm, peak", [("protonet", 1e-2), ("reptile", 0.5)])
def test_warmup_and_decay_reach_the_lr(meta_recipe, algorithm, peak):
    """4 steps, warm-up 2 (linear from 0), then linear decay; reptile's meta step β follows it."""
    s = train(meta_recipe(algorithm, {"algorithm": algorithm, "meta_lr": 0.5}, max_steps=4,
                          warmup_ratio=0.5, scheduler="linear"), progress=False)
    assert [r["lr"] for r in metrics(s)] == pytest.approx([0.0, peak / 2, peak, peak / 2])


def test_grad_accum_averages_episodes_per_step(meta_recipe, tmp_path, monkeypatch):
    """Without max_steps, ``episodes`` counts episodes: 6 episodes, 2 per step, 3 steps;
    with max_steps, each of its steps takes grad_accum episodes."""
    sampled = []  # episodes trained on (protonet: one loss per episode)
    original = meta_module.Meta.episode_loss

    def count(self, model, features, episode):
        sampled.extend([1] if model.training else [])
        return original(self, model, features, episode)

    monkeypatch.setattr(meta_module.Meta, "episode_loss", count)
    s = train(meta_recipe("episodes", {"episodes": 6}, grad_accum=2), progress=False)
    assert s.steps == 3 and len(sampled) == 6
    assert [(r["step"], r["episodes"]) for r in metrics(s)] == [(1, 2), (2, 4), (3, 6)]
    sampled.clear()
    s = train(meta_recipe("steps", {"episodes": 6}, grad_accum=2, max_steps=2), progress=False)
    assert s.steps == 2 and len(sampled) == 4


@pytest.mark.parametrize("setting, value", [("weight_decay", 0.01), ("optimizer", "sgd")])
def test_reptile_refuses_settings_it_cannot_use(meta_recipe, setting, value):
    with pytest.raises(RecipeError, match=f"train.{setting}"):
        train(meta_recipe("r", {"algorithm": "reptile"}, max_steps=1, **{setting: value}), progress=False)


def test_ppo_grad_accum_steps_once_per_group_of_mini_batches(tiny_model_dir):
    from leantune.alignment.policy import GenerationSettings
    from leantune.alignment.ppo import PPO, PPOSettings, ValueHead, hidden_size, n_updates
    from leantune.alignment.rewards import RewardFunction
    from leantune.methods.registry import build_method
    from leantune.models.loading import load_model, load_tokenizer

    path = tiny_model_dir("llama")
    tok = load_tokenizer(path)
    model = build_method({"name": "lora", "r": 2}).apply(load_model(path, "causal_lm"), "causal_lm")
    head = ValueHead(hidden_size(model))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(head.parameters()))
    steps = []
    optimizer.register_step_post_hook(lambda *a: steps.append(1))
    settings = PPOSettings(ppo_epochs=2, mini_batch_size=1, grad_accum=2)
    reward = RewardFunction("len", lambda prompts, completions, **kw: [len(c) / 10 for c in completions])
    ppo = PPO(model, head, tok, reward, optimizer, None, settings, GenerationSettings(max_new_tokens=3))
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("hi", "hello", "hey")]
    torch.manual_seed(0)
    ppo.step(prompts, [[{"role": "user", "content": "x"}]] * 3)
    assert len(steps) == n_updates(1, 3, settings) == 4  # 3 mini-batches → 2 steps per epoch
