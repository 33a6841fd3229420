"""Bottleneck adapters: small down-project → non-linearity → up-project modules.

* ``houlsby`` (Houlsby et al. 2019, arXiv:1902.00751): after the attention output
  projection and after the MLP of every block, ``h ← h + U f(D h)``;
* ``pfeiffer`` (Pfeiffer et al. 2021, AdapterFusion, arXiv:2005.00247): after the MLP only;
* ``parallel`` (He et al. 2022, Towards a Unified View of Parameter-Efficient
  Transfer Learning, arXiv:2110.04366): beside the MLP, ``h ← MLP(x) + s · U f(D x)``.

``D ∈ R^{r×d}``, ``U ∈ R^{d×r}``, ``r = d / reduction_factor``; U and its bias start at
zero, so the adapted model starts out computing exactly what the base did.
Not mergeable: the non-linearity between D and U cannot be folded into a weight.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import AdapterSettings
from .injection import (
    InjectedMethod,
    activation,
    adapter_sites,
    hidden_size,
    wrap_after,
    wrap_parallel,
)
from .registry import register


class Bottleneck(nn.Module):
    """``scaling · U f(D x)`` with U = 0 at the start."""

    def __init__(self, dim: int, bottleneck: int, non_linearity: str, scaling: float = 1.0):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = activation(non_linearity)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.down.weight.dtype)
        return self.scaling * self.up(self.act(self.down(x)))


def bottleneck_size(dim: int, reduction_factor: float, method: str) -> int:
    r = int(dim // reduction_factor)
    if r < 1:
        raise MethodError(f"method '{method}': reduction_factor {reduction_factor} leaves no bottleneck for width {dim}")
    return r


def like_model(module: nn.Module, model: nn.Module) -> nn.Module:
    ref = next(model.parameters())
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    return module.to(device=ref.device, dtype=dtype)


@register
class Adapter(InjectedMethod):
    name = "adapter"
    Config = AdapterSettings

    def make(self, dim: int) -> nn.Module:
        cfg = self.config
        scaling = cfg.scaling if cfg.kind == "parallel" else 1.0
        return Bottleneck(dim, bottleneck_size(dim, cfg.reduction_factor, self.name), cfg.non_linearity, scaling)

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        dim = hidden_size(model)
        make = lambda: like_model(self.make(dim), model)  # noqa: E731
        if self.config.kind == "parallel":
            made = wrap_parallel(model, self.name, make)
        else:
            made = wrap_after(model, adapter_sites(model, self.config.kind, self.name), make)
        return [p for m in made for p in m.parameters()]
