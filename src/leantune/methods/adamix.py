"""AdaMix: a mixture of adapters per layer with stochastic routing, averaged for inference.

Wang et al. 2022, AdaMix: Mixture-of-Adaptations for Parameter-efficient Model
Tuning (arXiv:2205.12410). Each adapter site holds M down-projections and M
up-projections; every training forward pass routes through one randomly chosen
down and one randomly chosen up expert (no router parameters). In eval mode the
experts' weights are averaged into a single adapter ("merging"), so inference
costs one adapter. Up-projections start at zero (identity at the start).
Simplification: the paper's consistency regularisation between two routings is
not applied.
"""
from __future__ import annotations

import torch
from torch import nn

from ..recipe.method_settings import AdaMixSettings
from .adapter import bottleneck_size, like_model
from .injection import InjectedMethod, activation, adapter_sites, hidden_size, wrap_after
from .registry import register


class MixAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, experts: int, non_linearity: str):
        super().__init__()
        down = torch.empty(experts, bottleneck, dim)
        for e in range(experts):
            nn.init.kaiming_uniform_(down[e], a=5 ** 0.5)
        self.down_weight = nn.Parameter(down)
        self.down_bias = nn.Parameter(torch.zeros(experts, bottleneck))
        self.up_weight = nn.Parameter(torch.zeros(experts, dim, bottleneck))
        self.up_bias = nn.Parameter(torch.zeros(experts, dim))
        self.act = activation(non_linearity)

    def weights(self):
        """(down W, down b, up W, up b): one random expert each in training, the average in eval."""
        if self.training:
            m = self.down_weight.shape[0]
            i, j = torch.randint(m, (2,)).tolist()
            return self.down_weight[i], self.down_bias[i], self.up_weight[j], self.up_bias[j]
        return (self.down_weight.mean(0), self.down_bias.mean(0), self.up_weight.mean(0), self.up_bias.mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw, db, uw, ub = self.weights()
        x = x.to(dw.dtype)
        return nn.functional.linear(self.act(nn.functional.linear(x, dw, db)), uw, ub)


@register
class AdaMix(InjectedMethod):
    name = "adamix"
    Config = AdaMixSettings

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        cfg = self.config
        dim = hidden_size(model)
        r = bottleneck_size(dim, cfg.reduction_factor, self.name)
        made = wrap_after(model, adapter_sites(model, cfg.kind, self.name),
                          lambda: like_model(MixAdapter(dim, r, cfg.num_experts, cfg.non_linearity), model))
        return [p for m in made for p in m.parameters()]
