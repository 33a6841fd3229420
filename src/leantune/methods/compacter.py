"""Compacter: adapters whose weights are sums of Kronecker products (PHM layers).

Mahabadi, Henderson & Ruder 2021, Compacter: Efficient Low-Rank Hypercomplex
Adapter Layers (arXiv:2106.04647). Each adapter projection is
``W = Σ_{i=1..n} A_i ⊗ B_i`` with ``A_i ∈ R^{n×n}`` shared by every adapter layer of
the model ("slow" weights) and ``B_i ∈ R^{(out/n)×(in/n)}`` per layer ("fast"
weights), which Compacter makes rank one, ``B_i = s_i t_iᵀ``. The up-projection's
``t`` factors and bias start at zero, so the model starts unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import CompacterSettings
from .adapter import bottleneck_size, like_model
from .injection import InjectedMethod, activation, adapter_sites, hidden_size, wrap_after, wrap_parallel
from .registry import register


class SharedA(nn.Module):
    """The n matrices A_i (n×n) shared by every PHM layer of the model."""

    def __init__(self, n: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(n, n, n) * (1.0 / n))


class PHMLinear(nn.Module):
    """``y = (Σ_i A_i ⊗ B_i) x + b`` with B_i = s_i t_iᵀ (rank 1) or a full matrix."""

    def __init__(self, in_dim: int, out_dim: int, shared: SharedA, rank_one: bool, zero: bool):
        super().__init__()
        n = shared.A.shape[0]
        if in_dim % n or out_dim % n:
            raise MethodError(f"method 'compacter': phm_dim {n} must divide the layer sizes {in_dim} and {out_dim}")
        self.shared = [shared]  # a list: not a child, so A is owned (and named) once, by the model
        self.rank_one = rank_one
        if rank_one:
            self.s = nn.Parameter(torch.randn(n, out_dim // n, 1) * 0.1)
            self.t = nn.Parameter(torch.zeros(n, 1, in_dim // n) if zero else torch.randn(n, 1, in_dim // n) * 0.1)
        else:
            b = torch.zeros(n, out_dim // n, in_dim // n) if zero else torch.randn(n, out_dim // n, in_dim // n) * 0.1
            self.B = nn.Parameter(b)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def weight(self) -> torch.Tensor:
        A = self.shared[0].A
        B = self.s @ self.t if self.rank_one else self.B
        return sum(torch.kron(A[i], B[i]) for i in range(A.shape[0]))  # out × in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)


class PHMAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, shared: SharedA, rank_one: bool, non_linearity: str,
                 scaling: float):
        super().__init__()
        self.down = PHMLinear(dim, bottleneck, shared, rank_one, zero=False)
        self.act = activation(non_linearity)
        self.up = PHMLinear(bottleneck, dim, shared, rank_one, zero=True)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(self.act(self.down(x.to(self.down.bias.dtype))))


@register
class Compacter(InjectedMethod):
    name = "compacter"
    Config = CompacterSettings

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        cfg = self.config
        dim = hidden_size(model)
        r = bottleneck_size(dim, cfg.reduction_factor, self.name)
        shared = like_model(SharedA(cfg.phm_dim), model)
        owners: list[nn.Module] = []

        def make():
            a = shared if cfg.shared_phm else like_model(SharedA(cfg.phm_dim), model)
            adapter = like_model(PHMAdapter(dim, r, a, cfg.rank_one, cfg.non_linearity,
                                            cfg.scaling if cfg.kind == "parallel" else 1.0), model)
            if not owners or not cfg.shared_phm:  # the first adapter (or each one) holds A as a child
                adapter.phm = a
            owners.append(adapter)
            return adapter

        if cfg.kind == "parallel":
            made = wrap_parallel(model, self.name, make)
        else:
            made = wrap_after(model, adapter_sites(model, cfg.kind, self.name), make)
        return [p for m in made for p in m.parameters()]
