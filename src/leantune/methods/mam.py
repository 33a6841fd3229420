"""MAM adapter ("Mix-And-Match"): prefix tuning on attention + a scaled parallel adapter beside the MLP.

He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning
(arXiv:2110.04366): ``attn = softmax(q [P_K; K]ᵀ) [P_V; V]`` in every self-attention
layer and ``h ← MLP(x) + s · U f(D x)`` beside every MLP. Both parts are built on
the injection mechanism (:mod:`.kv_prefix`, :mod:`.adapter`); prefixes are direct
parameters (no reparameterisation MLP), initialised N(0, 0.02²), so the model does
*not* start exactly as the base. Not mergeable.
"""
from __future__ import annotations

from torch import nn

from ..recipe.method_settings import MAMSettings
from .adapter import Bottleneck, bottleneck_size, like_model
from .injection import InjectedMethod, hidden_size, wrap_parallel
from .kv_prefix import add_prefixes
from .registry import register


@register
class MAM(InjectedMethod):
    name = "mam"
    starts_as_identity = False
    Config = MAMSettings

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        cfg = self.config
        dim = hidden_size(model)
        r = bottleneck_size(dim, cfg.reduction_factor, self.name)
        adapters = wrap_parallel(model, self.name,
                                 lambda: like_model(Bottleneck(dim, r, cfg.non_linearity, cfg.scaling), model))
        prefixes = [like_model(p, model) for p in add_prefixes(model, cfg.prefix_length, self.name)]
        return [p for m in adapters + prefixes for p in m.parameters()]
