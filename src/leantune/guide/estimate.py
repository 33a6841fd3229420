"""The memory estimate of a recipe (before training: ``pipeline``, ``leantune compare``).

The arithmetic, its components and its calibration: ``peak_memory.py``; parameter counts:
``trainable.py``; saved tensors: ``activations.py``; shapes from configs, names and numbers:
``model_shape.py``.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ..stages.registry import get_stage_class, half_weights_on_cpu
from ..training.device import available_ram_bytes, cpu_has_native_bf16
from .model_shape import MB, load_shape, shape_from_config
from .peak_memory import Estimate, Setting, estimate


def setting_from_recipe(recipe, *, device: str | None = None, label_fraction: float | None = None,
                        seq_len: int | None = None, num_labels: int | None = None, head: str | None = None,
                        precision: str | None = None, gpus: int | None = None) -> Setting:
    """The estimator's setting for a recipe's training (default device: CUDA when there is one).

    On a GPU the pipeline trains under autocast (bf16, fp16 before Ampere) with the frozen weights in
    ``model.dtype`` (``auto``: the autocast type, ``pipeline._model_dtype``) and every trainable parameter
    as an fp32 master weight (``keep_fp32_master_weights``): precision ``mixed`` with ``weight_dtype``.
    On a CPU the same under bf16 (``auto`` where the CPU has it), the frozen weights in bf16 where
    ``stages.registry.half_weights_on_cpu`` says so.
    ``gpus``: the processes (default: ``WORLD_SIZE``), sharded as ``train.distributed`` says."""
    device = device or ("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu")
    device = "cuda" if device.startswith("cuda") else "cpu"
    gpus = gpus or int(os.environ.get("WORLD_SIZE", "1") or 1)  # torchrun / accelerate launch set it
    prec = precision or recipe.train.precision
    weight_dtype = None
    if device == "cuda":
        if prec == "auto":
            prec = "bf16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "fp16"
        if prec in ("bf16", "fp16"):
            loaded = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(recipe.model.dtype, prec)
            prec, weight_dtype = "mixed", (loaded if loaded != "fp32" else None)
    else:
        if prec == "auto":
            prec = "bf16" if cpu_has_native_bf16() else "fp32"
        if prec in ("bf16", "fp16"):  # autocast; model.dtype auto: bf16 frozen weights for engine stages
            auto = "bf16" if half_weights_on_cpu(get_stage_class(recipe.stage["name"]), recipe.method) else "fp32"
            loaded = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(recipe.model.dtype, auto)
            prec, weight_dtype = "mixed", (loaded if loaded != "fp32" else None)
    dist = recipe.train.distributed
    strategy, offload = "ddp", "none"
    if dist is not None:
        strategy = f"zero{dist.zero_stage}" if dist.strategy == "deepspeed" else dist.strategy
        offload = dist.offload
    elif recipe.train.deepspeed:
        strategy = "zero2"  # the JSON's stage is not read here
    qcfg = next((m for m in recipe.method if m["name"] == "qlora"), None)
    return Setting(
        method=[dict(m) for m in recipe.method], precision=prec, weight_dtype=weight_dtype,
        gpus=max(gpus, 1), strategy=strategy if device == "cuda" else "ddp",
        offload=offload if device == "cuda" and strategy != "ddp" else "none",
        quant="nf4" if qcfg else "none", double_quant=bool(qcfg.get("double_quant", True)) if qcfg else True,
        optimizer=recipe.train.optimizer, batch_size=recipe.train.batch_size, grad_accum=recipe.train.grad_accum,
        seq_len=seq_len or recipe.train.max_length, gradient_checkpointing=recipe.train.gradient_checkpointing,
        label_fraction=1.0 if label_fraction is None else label_fraction, head=head,
        num_labels=num_labels or 2, device=device,
        cpu_heap="release" if recipe.train.cpu_heap == "release" else "reuse",
    )


def estimate_recipe(recipe, config=None, **kw) -> Estimate:
    """The estimate for a recipe (``config``: the loaded model config, else read from the model name)."""
    head = kw.get("head")
    shape = shape_from_config(config, recipe.model.name, head) if config is not None \
        else load_shape(recipe.model.name, head)
    return estimate(shape, setting_from_recipe(recipe, **kw))


# train.cpu_heap auto: release when reuse's estimate exceeds this share of the RAM available. The estimate
# under reuse came out 25 % under to 5 % over the measured peak (benchmarks/estimate_accuracy.py, 12 cases):
# a quarter of the RAM is the margin.
RAM_SHARE = 0.75


def choose_cpu_heap(reuse: Estimate, release: Estimate, available_bytes: int | None, processes: int = 1) -> str:
    """``train.cpu_heap: auto`` for a CPU run: ``reuse`` (the faster), or ``release`` when ``processes``
    runs of reuse's estimate would take more than ``RAM_SHARE`` of the RAM available and release's
    estimate is lower. Unknown RAM: reuse."""
    if available_bytes is None or reuse.total * processes <= RAM_SHARE * available_bytes:
        return "reuse"
    return "release" if release.total < reuse.total else "reuse"


def estimate_before_training(recipe, config, features: list[dict], head: str, num_labels: int | None,
                             device_type: str, processes: int, say: Callable[[str], None]) -> tuple[dict | None, Any]:
    """The pipeline's estimate from the recipe and the tokenized training ``features``, and the recipe
    to train with: ``train.cpu_heap: auto`` resolved on a CPU (:func:`choose_cpu_heap`; ``processes``
    on this machine). Never fails: an estimate must never stop training."""
    auto = recipe.train.cpu_heap == "auto" and device_type == "cpu"
    try:
        with torch.random.fork_rng(devices=[]):
            seq, frac = feature_stats(features, recipe.train.batch_size)
            kw = dict(seq_len=min(seq or recipe.train.max_length, recipe.train.max_length), label_fraction=frac,
                      head=head, num_labels=num_labels)
            est = estimate_recipe(recipe, config, **kw)
            if auto:
                lean = recipe.model_copy(update={"train": recipe.train.model_copy(update={"cpu_heap": "release"})})
                release, available = estimate_recipe(lean, config, **kw), available_ram_bytes()
                if choose_cpu_heap(est, release, available, processes) == "release":
                    say(f"[yellow]train.cpu_heap auto → release: the estimate with reuse, {est.total_mb:,.0f} MB "
                        f"per process × {processes}, is over {RAM_SHARE:.0%} of the {available / MB:,.0f} MB of "
                        f"RAM available; freed activations go back to the OS ({release.total_mb:,.0f} MB, slower "
                        f"steps; train.cpu_heap: reuse keeps the speed)")
                    recipe, est = lean, release
        say(f"estimated peak memory: {est.total_mb:,.0f} MB")
        return est.as_dict(), recipe
    except Exception as exc:
        say(f"[dim]memory estimate unavailable: {type(exc).__name__}: {exc}")
        return None, recipe


def feature_stats(features: list[dict], batch_size: int) -> tuple[int, float]:
    """(typical padded sequence length of a batch, share of labelled positions) of tokenized features."""
    lengths = sorted((len(f.get("input_ids", [])) for f in features), reverse=True)
    if not lengths:
        return 0, 1.0
    seq = lengths[0]  # the longest batch sets the peak
    labelled = total = 0
    for f in features:
        labels = f.get("labels")
        if isinstance(labels, list) and len(labels) == len(f.get("input_ids", [])):
            labelled += sum(1 for x in labels if x != -100)
            total += len(labels)
    frac = labelled / total if total else 1.0
    return seq, frac
