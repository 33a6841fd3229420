"""The memory estimate of a recipe (before training: ``pipeline``, ``leantune compare``).

The arithmetic, its components and its calibration: ``peak_memory.py``; parameter counts:
``trainable.py``; saved tensors: ``activations.py``; shapes from configs, names and numbers:
``model_shape.py``.
"""
from __future__ import annotations

import torch

from ..training.device import cpu_has_native_bf16
from .model_shape import load_shape, shape_from_config
from .peak_memory import Estimate, Setting, estimate


def setting_from_recipe(recipe, *, device: str | None = None, label_fraction: float | None = None,
                        seq_len: int | None = None, num_labels: int | None = None, head: str | None = None,
                        precision: str | None = None) -> Setting:
    """The estimator's setting for a recipe's training (default device: CUDA when there is one)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    prec = precision or recipe.train.precision
    if prec == "auto":
        if device == "cuda":
            prec = "mixed"
        else:
            prec = "mixed" if cpu_has_native_bf16() else "fp32"
    elif prec in ("bf16", "fp16") and device == "cpu":
        prec = "mixed"  # the engine's bf16 is autocast over the fp32 weights CPU loads (models/loading.py)
    if recipe.model.dtype in ("bfloat16", "float16") and prec != "fp32":
        prec = "bf16" if recipe.model.dtype == "bfloat16" else "fp16"
    qcfg = next((m for m in recipe.method if m["name"] == "qlora"), None)
    return Setting(
        method=[dict(m) for m in recipe.method], precision=prec,
        quant="nf4" if qcfg else "none", double_quant=bool(qcfg.get("double_quant", True)) if qcfg else True,
        optimizer=recipe.train.optimizer, batch_size=recipe.train.batch_size, grad_accum=recipe.train.grad_accum,
        seq_len=seq_len or recipe.train.max_length, gradient_checkpointing=recipe.train.gradient_checkpointing,
        label_fraction=1.0 if label_fraction is None else label_fraction, head=head,
        num_labels=num_labels or 2, device=device,
    )


def estimate_recipe(recipe, config=None, **kw) -> Estimate:
    """The estimate for a recipe (``config``: the loaded model config, else read from the model name)."""
    head = kw.get("head")
    shape = shape_from_config(config, recipe.model.name, head) if config is not None \
        else load_shape(recipe.model.name, head)
    return estimate(shape, setting_from_recipe(recipe, **kw))


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
