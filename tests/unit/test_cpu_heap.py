"""train.cpu_heap: what glibc does with freed activations on a CPU run. reuse (the default) keeps them
in its heap, release returns them to the OS; auto picks release only when reuse's estimate would not fit
the RAM available. The estimate counts each regime's heap."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import LlamaConfig

import leantune.guide.estimate as guide_estimate
from leantune.guide.activations import HEAP_REUSED, heap_gradient_bytes, heap_retained_bytes, reused_heap_bytes
from leantune.guide.estimate import RAM_SHARE, choose_cpu_heap
from leantune.guide.model_shape import MB, shape_from_config
from leantune.guide.peak_memory import Estimate, Setting, estimate
from leantune.recipe import load_recipe
from leantune.training import allocator, engine

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _est(total_mb: float) -> Estimate:
    return Estimate("m", "lora", 1, 1, {"weights": total_mb * MB}, "meta", {})


def test_auto_releases_only_when_reuse_would_not_fit():
    reuse, release = _est(1000), _est(800)
    assert choose_cpu_heap(reuse, release, int(1000 * MB / RAM_SHARE) + 1) == "reuse"
    assert choose_cpu_heap(reuse, release, int(1000 * MB / RAM_SHARE) - MB) == "release"
    assert choose_cpu_heap(reuse, release, int(3000 * MB), processes=4) == "release"  # 4 × 1000 MB on the machine
    assert choose_cpu_heap(reuse, release, None) == "reuse"  # RAM unknown
    assert choose_cpu_heap(reuse, _est(1000), 10 * MB) == "reuse"  # release would not help


def test_estimate_counts_each_regime_heap():
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2)
    shape = shape_from_config(cfg)
    for method, precision in (("lora", "fp32"), ("lora", "mixed"), ("full", "fp32")):
        base = dict(method=[{"name": method, "r": 4, "targets": "all-linear"}], batch_size=8, seq_len=128,
                    device="cpu", precision=precision)
        release = estimate(shape, Setting(**base, cpu_heap="release"))
        reuse = estimate(shape, Setting(**base))
        # everything but the heap is the same; reuse's heap keeps a step's transient memory, less the
        # parameters' gradients (all under 32 MiB here) whose holes the next forward fills first
        assert {k: v for k, v in reuse.components.items() if k != "heap"} == \
            {k: v for k, v in release.components.items() if k != "heap"}
        c = release.components
        transient = c["activations"] + c["logits"] + c["heap"]
        assert reuse.components["heap"] == pytest.approx(HEAP_REUSED * (transient - c["trainable"]))
        assert reuse.total > release.total and any("cpu_heap" in n for n in reuse.notes)
    # release's heap: the holes of the small saved tensors only; none when nothing is under the threshold
    assert heap_retained_bytes([(engine.MMAP_THRESHOLD_BYTES, 10.0)], engine.MMAP_THRESHOLD_BYTES) == 0


def test_mapped_tensors_are_not_kept_in_the_reused_heap():
    """Tensors of 32 MiB or more are always mapped by glibc: neither saved activations nor trained
    weights' gradients of that size count in the reused heap."""
    ceiling = 32 << 20
    kept = [(ceiling, 3.0), (ceiling - 1, 2.0)]  # 3 mapped, 2 from the heap
    transient = 3 * ceiling + 2 * (ceiling - 1)
    assert reused_heap_bytes(transient, kept, ceiling) == pytest.approx(HEAP_REUSED * 2 * (ceiling - 1))
    assert reused_heap_bytes(transient, kept, ceiling, refilled=transient) == 0
    big = shape_from_config(LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=8192,
                                        num_hidden_layers=2, num_attention_heads=8))
    embedding = 32000 * 1024 * 4  # 125 MiB: mapped; the MLP's 1024 × 8192 × 4 = 32 MiB weights: mapped
    mlp = 3 * 2 * 1024 * 8192 * 4
    grads = 10 * embedding
    assert heap_gradient_bytes(big, grads, 4, True, ceiling) == grads - embedding - mlp
    assert heap_gradient_bytes(big, grads, 4, False, ceiling) == grads  # adapters' gradients: small tensors


@pytest.fixture()
def sft_raw(tmp_path, tiny_model_dir):
    rows = [{"instruction": f"question {i} " * (1 + i % 5), "output": f"answer {i}"} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": str(tiny_model_dir("llama")), "method": "lora", "stage": "sft",
            "data": {"train": str(tmp_path / "train.jsonl"), "format": "alpaca", "eval_split": 0.0},
            "train": {"max_steps": 2, "batch_size": 4, "precision": "fp32", "max_length": 64, "device": "cpu"},
            "eval": {"before": False},
            "output": {"dir": str(tmp_path / "runs"), "name": "heap"}}


@pytest.mark.parametrize("ram_mb, heap, applied", [(1, "release", True), (10**7, "reuse", False)])
def test_pipeline_resolves_auto_from_the_ram_available(sft_raw, monkeypatch, ram_mb, heap, applied):
    import leantune.pipeline as pipeline

    if allocator._libc() is None:
        pytest.skip("needs glibc malloc (mallopt), which non-Linux platforms lack")
    thresholds = []
    real = allocator._set
    monkeypatch.setattr(allocator, "_set", lambda mmap, trim: thresholds.append(mmap) or real(mmap, trim))
    monkeypatch.setattr(guide_estimate, "available_ram_bytes", lambda: ram_mb * MB)
    said: list[str] = []
    try:
        summary = pipeline.train(load_recipe(raw=sft_raw), progress=False, say=said.append)
    finally:
        allocator.evaluation_setting()
    assert summary.estimate["setting"]["cpu_heap"] == heap
    assert any("cpu_heap auto → release" in s for s in said) == applied
    assert (allocator.TRAINING_MMAP_THRESHOLD in thresholds) == applied  # the engine's training setting
    # the recipe saved with the run is the user's: auto, resolved again on --resume
    assert "cpu_heap: auto" in (Path(summary.run_dir) / "recipe.yaml").read_text()


def test_release_is_the_only_setting_the_engine_applies():
    import torch

    assert not engine.return_freed_memory_to_os(torch.device("cpu"), "reuse")
    assert not engine.return_freed_memory_to_os(torch.device("cpu"), "auto")
    assert not engine.return_freed_memory_to_os(torch.device("meta"), "release")
