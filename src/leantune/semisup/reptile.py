"""First-order Reptile (Nichol et al. 2018, arXiv:1803.02999): adapt a copy of the trainable
weights to one task with a few SGD steps, then move the weights towards the adapted ones:
θ ← θ + β (θ' − θ). Only trainable parameters move, so it works with any method."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def adapt(model: nn.Module, task_loss: Callable[[], torch.Tensor], steps: int, lr: float) -> list[float]:
    """``steps`` plain SGD steps on ``task_loss``; returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = task_loss()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    return losses


def reptile_step(model: nn.Module, task_loss: Callable[[], torch.Tensor], inner_steps: int, inner_lr: float,
                 meta_lr: float) -> float:
    """One meta-update on one task; returns the mean inner loss."""
    before = trainable_state(model)
    losses = adapt(model, task_loss, inner_steps, inner_lr)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in before:
                p.copy_(before[n] + meta_lr * (p - before[n]))
    return sum(losses) / max(len(losses), 1)
