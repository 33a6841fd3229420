"""Gradient reversal (Ganin et al. 2016, Domain-Adversarial Training of Neural Networks,
arXiv:1505.07818): identity on the way forward, −λ · gradient on the way back."""
from __future__ import annotations

import math

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambd * grad, None


def reverse_gradient(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return _ReverseGrad.apply(x, float(lambd))


class GradientReversal(nn.Module):
    """``y = x``; ``∂L/∂x = −λ ∂L/∂y``. Set ``lambd`` between steps for a schedule."""

    def __init__(self, lambd: float = 1.0):
        super().__init__()
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.lambd)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin et al.'s schedule λ_p = 2 / (1 + exp(−γ p)) − 1, p ∈ [0, 1] the training progress:
    0 at the start (the domain classifier's noisy signal is kept away from the features), → 1."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainClassifier(nn.Module):
    """Features → GRL → MLP → one logit (source vs target)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.grl = GradientReversal(0.0)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.grl(features.to(self.net[0].weight.dtype))).squeeze(-1)
