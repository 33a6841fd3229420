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

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import MethodError
from .injection import (
    InjectedMethod,
    activation,
    adapter_sites,
    hidden_size,
    wrap_after,
    wrap_parallel,
)
from .registry import MethodConfig, register

NonLinearity = Literal["relu", "gelu", "silu", "tanh"]


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


class AdapterSettings(MethodConfig):
    kind: Literal["houlsby", "pfeiffer", "parallel"] = Field(
        "houlsby", description="houlsby: after attention and MLP; pfeiffer: after the MLP; parallel: beside the MLP.")
    reduction_factor: float = Field(16, ge=1, le=4096, description="Bottleneck width r = hidden size / reduction_factor.")
    non_linearity: NonLinearity = Field("relu", description="Activation between down- and up-projection.")
    scaling: float = Field(1.0, gt=0, le=100, description="Multiplier of the adapter output (parallel adapters; He et al. use 4).")


@register
class Adapter(InjectedMethod):
    name = "adapter"
    family = "addition"
    mergeable = False
    paper = ("Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv:1902.00751); "
             "Pfeiffer et al. 2021, AdapterFusion (arXiv:2005.00247); "
             "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv:2110.04366)")
    summary = "Bottleneck modules after (houlsby/pfeiffer) or beside (parallel) the sub-layers; starts as identity."
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
