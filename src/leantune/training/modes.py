"""Switching between training and evaluation without tripping bitsandbytes.

bitsandbytes 0.50 on CPU repacks a 4-bit layer's weights into an inference-only
layout the first time it runs in eval mode without gradients; afterwards the
gradients through that layer are silently dropped. Evaluation therefore turns
off dropout module by module and leaves 4-bit layers in training mode.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def _is_4bit(module: nn.Module) -> bool:
    return type(module).__name__ in {"Linear4bit", "LinearNF4", "LinearFP4"}


def set_eval_mode(model: nn.Module) -> None:
    model.eval()
    for m in model.modules():
        if _is_4bit(m):
            m.training = True  # keep the trainable layout; 4-bit layers have no dropout


@contextmanager
def evaluating(model: nn.Module):
    """Evaluation mode and no gradients, restoring the previous mode afterwards."""
    was_training = model.training
    set_eval_mode(model)
    try:
        with torch.no_grad():
            yield model
    finally:
        if was_training:
            model.train()
