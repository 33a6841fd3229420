"""The training engine: batch order, learning, the NaN guard, atomic checkpoints,
bit-for-bit resume, the fast causal-LM loss and Ctrl-C handling.

Everything runs on the tiny models of ``tests/conftest.py`` in fp32 on CPU.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from leantune.data.collate import pad_batch
from leantune.data.formats import load_examples
from leantune.data.tokenize import IGNORE
from leantune.methods.registry import build_method
from leantune.models.loading import load_model, load_tokenizer
from leantune.pipeline import train
from leantune.recipe import load_recipe
from leantune.stages.registry import build_stage
from leantune.training import checkpoint as checkpoint_mod
from leantune.training.checkpoint import list_checkpoints
from leantune.training.engine import Engine, TrainingDiverged, batch_plan
from leantune.training.interrupt import TrainingInterrupted
from leantune.training.losses import causal_lm_loss, fast_path, unwrap

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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is faster, and immune to a busy machine's oversubscription."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def write_alpaca(path: Path, repeat: int = 1) -> Path:
    rows = [{"instruction": q, "output": a} for q, a in QA] * repeat
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_recipe(model_dir: Path, tmp_path: Path, method="full", **train_kw):
    train_cfg = {"batch_size": 2, "precision": "fp32", "logging_steps": 1, "lr": 1e-3, "max_length": 128}
    train_cfg.update(train_kw)
    data = write_alpaca(tmp_path / "train.jsonl")
    return load_recipe(raw={
        "model": str(model_dir),
        "method": method,
        "stage": "sft",
        "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0},
        "train": train_cfg,
        "eval": {"before": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "run"},
    })


def make_engine(model_dir: Path, recipe, run_dir: Path, loss_fn=None, method: str | None = None) -> Engine:
    """A fresh model (identical initial weights every time) inside an Engine."""
    stage = build_stage(recipe.stage)
    stage.head_name = "causal_lm"
    tok = load_tokenizer(model_dir)
    examples = load_examples(recipe.data.train, "alpaca").examples
    data = stage.prepare(recipe, tok, examples, [])
    built = build_method({"name": method, "r": 4}) if method else None
    model = load_model(model_dir, "causal_lm", "float32", extra=built.load_kwargs() if built else None)
    if built:
        torch.manual_seed(1234)
        model = built.apply(model, "causal_lm")
    run_dir.mkdir(parents=True, exist_ok=True)
    return Engine(model, data.train, recipe.train, run_dir, stage.collate, loss_fn or stage.loss, progress=False)


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


# --------------------------------------------------------------------------- batch_plan

def padding(plan: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plan)


@pytest.mark.parametrize("group", [False, True])
def test_batch_plan_is_a_pure_function_of_seed_and_epoch(group):
    lengths = [random.Random(0).randint(1, 300) for _ in range(137)]
    snapshot = list(lengths)
    first = batch_plan(lengths, 8, seed=7, epoch=3, group_by_length=group)
    # the global random state does not matter
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    torch.rand(10), np.random.rand(10)
    again = batch_plan(lengths, 8, seed=7, epoch=3, group_by_length=group)
    assert first == again
    assert lengths == snapshot  # input not mutated
    assert batch_plan(lengths, 8, seed=7, epoch=4, group_by_length=group) != first
    assert batch_plan(lengths, 8, seed=8, epoch=3, group_by_length=group) != first


@pytest.mark.parametrize("n,batch_size", [(1, 4), (7, 3), (64, 8), (1001, 16)])
@pytest.mark.parametrize("group", [False, True])
def test_batch_plan_covers_every_index_once_per_epoch(n, batch_size, group):
    lengths = [(i * 37) % 101 + 1 for i in range(n)]
    for epoch in range(3):
        plan = batch_plan(lengths, batch_size, seed=1, epoch=epoch, group_by_length=group)
        flat = [i for b in plan for i in b]
        assert sorted(flat) == list(range(n))
        assert len(plan) == math.ceil(n / batch_size)
        assert all(1 <= len(b) <= batch_size for b in plan)
        assert sum(len(b) < batch_size for b in plan) <= 1


def test_group_by_length_reduces_padding():
    rng = random.Random(3)
    lengths = [rng.randint(5, 500) for _ in range(2000)]
    for epoch in range(2):
        plain = batch_plan(lengths, 8, seed=0, epoch=epoch, group_by_length=False)
        grouped = batch_plan(lengths, 8, seed=0, epoch=epoch, group_by_length=True)
        # windows of 4 batches: a batch is a length quartile of 32 random examples, ~0.27 of random's
        # padding on uniform lengths (mega-batches of 50 reached ~0.02 but made batches that never changed)
        assert padding(grouped, lengths) < 0.35 * padding(plain, lengths)


# --------------------------------------------------------------------------- learning

def test_training_loss_falls(tiny_model_dir, tmp_path):
    # full fine-tuning: with random hidden-32 weights a frozen final norm and head cap how far
    # LoRA alone can move the logits, so the learnability check uses every weight
    model_dir = tiny_model_dir("llama")
    recipe = make_recipe(model_dir, tmp_path, method="full", lr=3e-3, max_steps=40, batch_size=4,
                         scheduler="constant")
    summary = train(recipe, progress=False)
    losses = [r["loss"] for r in summary.history if "loss" in r]
    assert len(losses) == 40
    assert all(math.isfinite(x) for x in losses)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.6 * first, (first, last)
    assert losses == [r["loss"] for r in read_metrics(Path(summary.run_dir)) if "loss" in r]


# --------------------------------------------------------------------------- NaN guard

def test_nan_loss_raises_and_keeps_last_checkpoint(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    recipe = make_recipe(model_dir, tmp_path, max_steps=6, save_steps=2)
    run_dir = tmp_path / "run"
    calls, snapshot = [0], {}

    def loss_fn(model, batch):
        calls[0] += 1
        loss = causal_lm_loss(model, batch)
        if calls[0] == 3:
            snapshot.update(tree_bytes(run_dir / "checkpoints" / "step-2"))
            return loss * float("nan")
        return loss

    engine = make_engine(model_dir, recipe, run_dir, loss_fn)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingDiverged) as exc:
        engine.fit()
    message = str(exc.value)
    last_good = run_dir / "checkpoints" / "step-2"
    assert "step 3" in message
    assert str(last_good) in message
    assert "nan" in message
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    # the checkpoint written before the NaN is untouched, nothing newer exists
    assert snapshot and tree_bytes(last_good) == snapshot
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2"]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


def test_nan_loss_before_any_checkpoint(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    recipe = make_recipe(model_dir, tmp_path, max_steps=3, save_steps=2)

    def loss_fn(model, batch):
        return causal_lm_loss(model, batch) * float("inf")

    engine = make_engine(model_dir, recipe, tmp_path / "run", loss_fn)
    with pytest.raises(TrainingDiverged, match="step 1.*no checkpoint had been written yet"):
        engine.fit()


# --------------------------------------------------------------------------- checkpoints

def test_checkpoints_are_atomic_and_limited(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    recipe = make_recipe(model_dir, tmp_path, max_steps=5, save_steps=1, save_total_limit=2)
    run_dir = tmp_path / "run"
    engine = make_engine(model_dir, recipe, run_dir, method="lora")
    engine.fit()
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-5"]
    for ckpt in root.iterdir():
        assert sorted(p.name for p in ckpt.iterdir()) == ["optimizer.pt", "state.json", "trainable.safetensors"]
    state = json.loads((root / "step-5" / "state.json").read_text())
    assert state["step"] == 5
    weights = load_file(root / "step-5" / "trainable.safetensors")
    live = trainable(engine.model)
    assert weights.keys() == live.keys() and all("lora_" in k for k in weights)
    for k, v in weights.items():
        assert torch.equal(v, live[k])


def test_crash_while_saving_leaves_no_partial_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    model_dir = tiny_model_dir("llama")
    recipe = make_recipe(model_dir, tmp_path, max_steps=6, save_steps=2, save_total_limit=5)
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    real_fsync, calls = checkpoint_mod._fsync_tree, [0]

    def crash_on_second_save(folder):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError("disk full (simulated)")
        real_fsync(folder)

    monkeypatch.setattr(checkpoint_mod, "_fsync_tree", crash_on_second_save)
    with pytest.raises(OSError, match="simulated"):
        make_engine(model_dir, recipe, run_dir).fit()
    names = sorted(p.name for p in root.iterdir())
    assert names == [".tmp-step-4", "step-2"]  # the half-written one never got its final name
    assert list_checkpoints(root) == [root / "step-2"]

    monkeypatch.setattr(checkpoint_mod, "_fsync_tree", real_fsync)
    result = make_engine(model_dir, recipe, run_dir).fit(resume=True)
    assert result.steps == 6
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-4", "step-6"]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------- resume

def _assert_same_run(a, b, model_a, model_b):
    assert a.steps == b.steps
    assert abs(a.final_loss - b.final_loss) <= 1e-6, (a.final_loss, b.final_loss)
    wa, wb = trainable(model_a), trainable(model_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k


@pytest.mark.parametrize("method", [None, "lora"])
def test_resume_after_max_steps_matches_uninterrupted(tiny_model_dir, tmp_path, method):
    """Run N steps vs. run k, then resume to N. With a schedule that does not depend on
    the total (constant), the two runs must agree to the bit."""
    model_dir = tiny_model_dir("llama")
    n, k = 8, 3
    common = dict(batch_size=2, grad_accum=2, scheduler="constant", lr=5e-3, save_steps=1)
    full = make_recipe(model_dir, tmp_path / "a", method="full", max_steps=n, **common)
    eng_a = make_engine(model_dir, full, tmp_path / "a" / "run", method=method)
    res_a = eng_a.fit()

    part = make_recipe(model_dir, tmp_path / "b", method="full", max_steps=k, **common)
    run_b = tmp_path / "b" / "run"
    res_k = make_engine(model_dir, part, run_b, method=method).fit()
    assert res_k.steps == k
    rest = make_recipe(model_dir, tmp_path / "b", method="full", max_steps=n, **common)
    eng_b = make_engine(model_dir, rest, run_b, method=method)
    res_b = eng_b.fit(resume=True)

    _assert_same_run(res_a, res_b, eng_a.model, eng_b.model)
    steps = [r["step"] for r in read_metrics(run_b)]
    assert steps == list(range(1, n + 1))
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "a" / "run")]
    losses_b = [r["loss"] for r in read_metrics(run_b)]
    assert np.allclose(losses_a, losses_b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_resume_after_interrupt_matches_uninterrupted_with_warmup_and_decay(tiny_model_dir, tmp_path, signum):
    """A run stopped by Ctrl-C or SIGTERM (what `timeout`, Slurm and Kubernetes send) mid-way
    and resumed equals one never stopped, also with a linear schedule with warm-up (the
    scheduler state is restored)."""
    model_dir = tiny_model_dir("llama")
    common = dict(batch_size=2, grad_accum=2, scheduler="linear", warmup_ratio=0.25, lr=5e-3, max_steps=8)
    rec_a = make_recipe(model_dir, tmp_path / "a", **common)
    eng_a = make_engine(model_dir, rec_a, tmp_path / "a" / "run", method="lora")
    res_a = eng_a.fit()

    rec_b = make_recipe(model_dir, tmp_path / "b", **common)
    calls = [0]

    def interrupting(model, batch):
        calls[0] += 1
        if calls[0] == 2 * 5:  # last micro-batch of step 5
            os.kill(os.getpid(), signum)
        return causal_lm_loss(model, batch)

    with pytest.raises(TrainingInterrupted, match=signal.Signals(signum).name) as exc:
        make_engine(model_dir, rec_b, tmp_path / "b" / "run", interrupting, method="lora").fit()
    assert exc.value.exit_code == 128 + signum
    eng_b = make_engine(model_dir, rec_b, tmp_path / "b" / "run", method="lora")
    res_b = eng_b.fit(resume=True)
    _assert_same_run(res_a, res_b, eng_a.model, eng_b.model)
    lrs_a = [r["lr"] for r in read_metrics(tmp_path / "a" / "run")]
    lrs_b = [r["lr"] for r in read_metrics(tmp_path / "b" / "run")]
    assert lrs_a == lrs_b


# --------------------------------------------------------------------------- fast causal-LM loss

def _batch(tok, stage_recipe):
    stage = build_stage(stage_recipe.stage)
    stage.head_name = "causal_lm"
    examples = load_examples(stage_recipe.data.train, "alpaca").examples[:3]
    data = stage.prepare(stage_recipe, tok, examples, [])
    batch = pad_batch(data.train, tok.pad_token_id)
    # a ragged batch: padding and prompt positions are both ignored
    assert (batch["attention_mask"] == 0).any() and (batch["labels"] == IGNORE).any()
    return batch


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("lora", [False, True])
def test_causal_lm_loss_equals_model_loss(tiny_model_dir, tmp_path, arch, lora):
    model_dir = tiny_model_dir(arch)
    recipe = make_recipe(model_dir, tmp_path)
    tok = load_tokenizer(model_dir)
    batch = _batch(tok, recipe)
    model = load_model(model_dir, "causal_lm", "float32")
    model.eval()
    with torch.no_grad():
        base = model(**batch).loss
    if lora:
        torch.manual_seed(0)
        model = build_method({"name": "lora", "r": 4}).apply(model, "causal_lm")
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.5)  # a non-zero update, so the adapter matters
        model.eval()
    assert fast_path(unwrap(model)) is not None  # the fast path is the one under test
    with torch.no_grad():
        fast = causal_lm_loss(model, batch)
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    assert torch.isfinite(fast)
    assert abs(fast.item() - reference.item()) <= 1e-5, (fast.item(), reference.item())
    if lora:
        assert abs(fast.item() - base.item()) > 1e-3  # the adapter is in the fast path too
    # gradients flow to the trainable parameters through the fast path
    model.train()
    causal_lm_loss(model, batch).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


# --------------------------------------------------------------------------- Ctrl-C

def test_sigint_checkpoints_and_raises(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    recipe = make_recipe(model_dir, tmp_path, max_steps=6)  # no save_steps: only Ctrl-C saves
    run_dir = tmp_path / "run"
    calls = [0]

    def loss_fn(model, batch):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return causal_lm_loss(model, batch)

    before = signal.getsignal(signal.SIGINT)
    engine = make_engine(model_dir, recipe, run_dir, loss_fn, method="lora")
    with pytest.raises(TrainingInterrupted, match="step 2.*--resume") as exc:
        engine.fit()
    assert exc.value.exit_code == 130
    assert calls[0] == 2  # stopped after the step in progress, no further step
    assert signal.getsignal(signal.SIGINT) is before
    root = run_dir / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-2"]
    assert json.loads((root / "step-2" / "state.json").read_text())["step"] == 2
    saved = load_file(root / "step-2" / "trainable.safetensors")
    live = trainable(engine.model)
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k], live[k]) for k in saved)
