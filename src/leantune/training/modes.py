"""Switching between training and evaluation without tripping bitsandbytes.

bitsandbytes 0.50 on CPU repacks a 4-bit layer's weights into an inference-only
layout the first time it runs in eval mode without gradients; afterwards the
gradients through that layer are silently dropped. Evaluation therefore turns
off dropout module by module and leaves 4-bit layers in training mode.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn


def _is_4bit(module: nn.Module) -> bool:
    return type(module).__name__ in {"Linear4bit", "LinearNF4", "LinearFP4"}


def set_eval_mode(model: nn.Module) -> None:
    model.eval()
    for m in model.modules():
        if _is_4bit(m):
            m.training = True  # keep the trainable layout; 4-bit layers have no dropout


HALF_TYPES = (torch.bfloat16, torch.float16)


def mixed_precision(model: nn.Module):
    """Autocast to the model's half type when its floating weights mix a half type with fp32
    (frozen weights loaded in bf16, trainable ones kept fp32): evaluation then computes as
    training did, instead of feeding half activations to fp32 layers. Nothing otherwise."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    half = [d for d in HALF_TYPES if d in dtypes]
    if not half or torch.float32 not in dtypes:
        return nullcontext()
    device = next(p.device for p in model.parameters() if p.dtype == half[0])
    return torch.autocast(device_type=device.type, dtype=half[0])


@contextmanager
def evaluating(model: nn.Module):
    """Evaluation mode and no gradients (under :func:`mixed_precision`), restoring the previous
    mode afterwards."""
    was_training = model.training
    set_eval_mode(model)
    try:
        with torch.no_grad(), mixed_precision(model):
            yield model
    finally:
        if was_training:
            model.train()
