"""First-order Reptile (Nichol et al. 2018, arXiv:1803.02999): adapt a copy of the trainable
weights to each task with a few SGD steps, then move the weights towards the adapted ones:
θ ← θ + β (mean_i θ'_i − θ) (the batched form, their Algorithm 2). Only trainable parameters
move, so it works with any method."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..training.checkpoint import load_trainable, trainable_state


def adapt(model: nn.Module, task_loss: Callable[[], torch.Tensor], steps: int, lr: float,
          max_grad_norm: float | None = None, scaler: torch.amp.GradScaler | None = None) -> list[float]:
    """``steps`` plain SGD steps on ``task_loss``, gradients clipped at ``max_grad_norm`` and,
    for fp16, scaled by ``scaler``; returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = task_loss()
        scaler.scale(loss).backward()
        if max_grad_norm:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    return losses


def meta_gradient(model: nn.Module, task_losses: list[Callable[[], torch.Tensor]], inner_steps: int,
                  inner_lr: float, max_grad_norm: float | None = None,
                  scaler: torch.amp.GradScaler | None = None) -> float:
    """Adapt from θ on each task in turn, put θ back, and leave θ − mean_i θ'_i in each trainable
    parameter's ``.grad``: one SGD step of size β on it is the Reptile update. Returns the mean
    inner loss (NaN when any inner loss was)."""
    before = trainable_state(model)
    adapted = {n: torch.zeros_like(v) for n, v in before.items()}
    losses = []
    for task_loss in task_losses:
        losses += adapt(model, task_loss, inner_steps, inner_lr, max_grad_norm, scaler)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in adapted:
                    adapted[n] += p
        load_trainable(model, before)
    for n, p in model.named_parameters():
        if n in before:
            p.grad = before[n] - adapted[n] / len(task_losses)
    return sum(losses) / max(len(losses), 1)
