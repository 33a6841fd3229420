"""MAM adapter ("Mix-And-Match"): prefix tuning on attention + a scaled parallel adapter beside the MLP.

He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning
(arXiv:2110.04366): ``attn = softmax(q [P_K; K]ᵀ) [P_V; V]`` in every self-attention
layer and ``h ← MLP(x) + s · U f(D x)`` beside every MLP. Both parts are built on
the injection mechanism (:mod:`.kv_prefix`, :mod:`.adapter`); prefixes are direct
parameters (no reparameterisation MLP), initialised N(0, 0.02²), so the model does
*not* start exactly as the base. Not mergeable.
"""
from __future__ import annotations

from pydantic import Field
from torch import nn

from .adapter import Bottleneck, NonLinearity, bottleneck_size, like_model
from .injection import InjectedMethod, hidden_size, wrap_parallel
from .kv_prefix import add_prefixes
from .registry import MethodConfig, register


@register
class MAM(InjectedMethod):
    name = "mam"
    family = "hybrid"
    mergeable = False
    starts_as_identity = False
    paper = "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv:2110.04366)"
    summary = "Prefix tuning in attention plus a scaled parallel adapter beside the MLP (the paper's best combination)."

    class Config(MethodConfig):
        prefix_length: int = Field(16, ge=1, le=1024, description="P: key/value prefix vectors per attention layer.")
        reduction_factor: float = Field(4, ge=1, le=4096, description="Parallel adapter bottleneck r = hidden / reduction_factor.")
        scaling: float = Field(4.0, gt=0, le=100, description="s: multiplier of the parallel adapter's output.")
        non_linearity: NonLinearity = Field("relu", description="Activation inside the adapter.")

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        cfg = self.config
        dim = hidden_size(model)
        r = bottleneck_size(dim, cfg.reduction_factor, self.name)
        adapters = wrap_parallel(model, self.name,
                                 lambda: like_model(Bottleneck(dim, r, cfg.non_linearity, cfg.scaling), model))
        prefixes = [like_model(p, model) for p in add_prefixes(model, cfg.prefix_length, self.name)]
        return [p for m in adapters + prefixes for p in m.parameters()]
