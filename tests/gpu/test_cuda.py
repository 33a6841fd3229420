"""What only a GPU can show: the run's device for every model, bf16 and fp16 with loss
scaling, fp32 master weights under a half-precision load, QLoRA's 4-bit model on the local
GPU with a paged optimizer, peak CUDA memory. Marked ``cuda``: ``make test`` deselects them
and ``benchmarks/gpu_check.sh`` runs them on a GPU machine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.cuda

QA = [("What is the capital of France?", "Paris."), ("List files.", "ls -la"), ("Add two and two.", "4"),
      ("Say hello.", "Hello!"), ("Copy a file.", "cp src dst"), ("Sky colour?", "Blue."),
      ("A prime number?", "7"), ("Working directory?", "pwd")] * 2


@pytest.fixture(autouse=True)
def needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("the cuda tests need a GPU: run them with benchmarks/gpu_check.sh")
    torch.cuda.reset_peak_memory_stats()


def recipe(model_dir: Path, tmp_path: Path, method, name: str, **train):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in QA))
    return load_recipe(raw={
        "model": str(model_dir), "method": method, "stage": "sft",
        "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0},
        "train": {"batch_size": 4, "max_steps": 12, "lr": 5e-3, "logging_steps": 1, "max_length": 64, **train},
        "eval": {"before": False}, "output": {"dir": str(tmp_path / "runs"), "name": name}})


def losses(summary) -> list[float]:
    return [h["loss"] for h in summary.history if "loss" in h]


def test_auto_device_and_precision_train_lora_on_the_gpu(tiny_model_dir, tmp_path):
    s = train(recipe(tiny_model_dir("llama"), tmp_path, [{"name": "lora", "r": 4}], "lora"))
    assert s.device.startswith("cuda") and s.precision == "bf16"
    assert s.memory_kind == "peak CUDA allocated" and s.peak_memory_mb > 0
    assert losses(s)[-1] < losses(s)[0]


def test_fp16_scales_the_loss_and_keeps_fp32_master_weights(tiny_model_dir, tmp_path):
    """fp16 weights (model.dtype: auto under fp16) with full fine-tuning: the trainable copy is
    fp32 and the loss scaler keeps small gradients from flushing to zero."""
    from leantune.training.engine import Engine

    seen = {}
    fit = Engine.fit

    def spy(self, resume=False):
        out = fit(self, resume)
        seen["scaler"] = self.runtime.accelerator.scaler
        seen["dtypes"] = {p.dtype for p in self.model.parameters() if p.requires_grad}
        return out

    Engine.fit = spy
    try:
        s = train(recipe(tiny_model_dir("llama"), tmp_path, "full", "fp16", precision="fp16"))
    finally:
        Engine.fit = fit
    assert s.precision == "fp16" and seen["scaler"] is not None
    assert seen["dtypes"] == {torch.float32}
    assert all(map(lambda x: x == x, losses(s))) and losses(s)[-1] < losses(s)[0]


def test_qlora_puts_the_4bit_model_on_the_local_gpu_with_a_paged_optimizer(tiny_model_dir, tmp_path):
    s = train(recipe(tiny_model_dir("llama"), tmp_path, [{"name": "qlora", "r": 4}], "qlora",
                     optimizer="paged_adamw_8bit"))
    assert s.device.startswith("cuda") and losses(s)[-1] < losses(s)[0]


def test_bf16_lora_matches_fp32_closely(tiny_model_dir, tmp_path):
    """Mixed precision changes rounding, not the result: bf16 and fp32 losses stay close."""
    m = tiny_model_dir("llama")
    a = train(recipe(m, tmp_path, [{"name": "lora", "r": 4}], "fp32", precision="fp32", max_steps=6))
    b = train(recipe(m, tmp_path, [{"name": "lora", "r": 4}], "bf16", precision="bf16", max_steps=6))
    for x, y in zip(losses(a), losses(b)):
        assert abs(x - y) < 0.05 * abs(x)
