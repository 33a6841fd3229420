"""Elastic weight consolidation (Kirkpatrick et al. 2017, arXiv:1612.00796).

After a task, the diagonal of the Fisher information F_i = E[(∂ log p(y|x) / ∂θ_i)²] is
estimated from per-example squared gradients, and later tasks pay
(λ / 2) Σ_i F_i (θ_i − θ*_i)² for moving the parameters that mattered (one term per
finished task, as in the paper).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

NLL = Callable[[nn.Module, dict], torch.Tensor]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def diagonal_fisher(model: nn.Module, examples: Iterable[dict], nll: NLL,
                    params: dict[str, nn.Parameter] | None = None) -> dict[str, torch.Tensor]:
    """Mean over ``examples`` (each a batch of ONE example) of the squared gradient of
    ``nll(model, example)`` — the negative log-likelihood of that example — for each parameter.

    ``nll`` decides which Fisher: the gold label (the empirical Fisher) or a label sampled
    from the model (the true Fisher). Dropout is off during the estimate."""
    params = params if params is not None else trainable_parameters(model)
    names, tensors = list(params), list(params.values())
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for example in examples:
            loss = nll(model, example)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    fisher[n] += g.detach().float() ** 2
            count += 1
    finally:
        model.train(was_training)
    if count:
        for n in fisher:
            fisher[n] /= count
    return fisher


class EWC:
    """The consolidation penalty of every finished task."""

    def __init__(self, lam: float):
        self.lam = lam
        self.tasks: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []  # (fisher, anchor)

    def consolidate(self, model: nn.Module, fisher: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        anchor = {n: params[n].detach().clone() for n in fisher}
        self.tasks.append((fisher, anchor))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        device = next(model.parameters()).device
        total = torch.zeros((), device=device)
        for fisher, anchor in self.tasks:
            for n, f in fisher.items():
                p = params[n]
                total = total + (f.to(p.device) * (p.float() - anchor[n].to(p.device).float()) ** 2).sum()
        return 0.5 * self.lam * total
