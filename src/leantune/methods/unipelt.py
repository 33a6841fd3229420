"""UniPELT: LoRA, prefix tuning and a bottleneck adapter in every layer, each behind a learned gate.

Mao et al. 2022, UniPELT: A Unified Framework for Parameter-Efficient Language
Model Tuning (arXiv:2110.07577). All three submodules are our own, on the
injection mechanism:

* gated LoRA on the targeted projections (default: query and value):
  ``y = W x + σ(w_L·x + b_L) · (α/r) B A x`` (B = 0 at the start);
* gated prefix: ``[σ(w_P·mean_t h + b_P) · P_K; K]``, same for V (per example);
* gated adapter after the MLP: ``h ← h + σ(w_A·h + b_A) · U f(D h)`` (U = 0).

With ``prefix_length: 0`` the prefix part is left out and the model starts
exactly as the base; with prefixes it does not (they are initialised N(0, 0.02²)).
Not mergeable: the gates depend on the input.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..recipe.method_settings import UniPELTSettings
from .adapter import Bottleneck, bottleneck_size, like_model
from .injection import InjectedMethod, add_after, attach, find_modules, hidden_size, in_out, select_linear
from .kv_prefix import add_prefixes
from .registry import register

LORA_CHILD = "leantune_lora"

# UniPELT applies LoRA to W_q and W_v
QV_TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
              "gpt2": ["c_attn"], "bert": ["query", "value"], "t5": [r".*SelfAttention\.(q|v)"]}


class GatedLoRA(nn.Module):
    """``σ(w·x + b) · (α/r) B A x``, added to the output of the linear layer it is attached to."""

    def __init__(self, d_in: int, d_out: int, r: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, d_in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r))
        self.gate = nn.Linear(d_in, 1)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.lora_A.dtype)
        return torch.sigmoid(self.gate(h)) * self.scaling * (h @ self.lora_A.t() @ self.lora_B.t())

    def hook(self, module, args, out):
        return out + self(args[0]).to(out.dtype)


class GatedAdapter(nn.Module):
    """``σ(w·h + b) · U f(D h)``, added after the module it is attached to."""

    def __init__(self, adapter: Bottleneck, dim: int):
        super().__init__()
        self.adapter = adapter
        self.gate = nn.Linear(dim, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = y.to(self.gate.weight.dtype)
        return torch.sigmoid(self.gate(h)) * self.adapter(h)


@register
class UniPELT(InjectedMethod):
    name = "unipelt"
    starts_as_identity = False
    Config = UniPELTSettings

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        cfg = self.config
        dim = hidden_size(model)
        made: list[nn.Module] = []
        targets = cfg.lora_targets
        if targets == "qv":
            targets = QV_TARGETS.get(model.config.model_type, "auto")
        for name in select_linear(model, targets, self.name):
            layer = model.get_submodule(name)
            lora = like_model(GatedLoRA(*in_out(layer), cfg.lora_r, cfg.lora_alpha), model)
            made.append(attach(layer, LORA_CHILD, lora, layer.register_forward_hook(lora.hook)))
        r = bottleneck_size(dim, cfg.reduction_factor, self.name)
        for name in find_modules(model, "mlp_out", self.name):
            gated = like_model(GatedAdapter(Bottleneck(dim, r, cfg.non_linearity), dim), model)
            made.append(add_after(model.get_submodule(name), gated))
        if cfg.prefix_length:
            made += [like_model(p, model) for p in add_prefixes(model, cfg.prefix_length, self.name, gate_dim=dim)]
        return [p for m in made for p in m.parameters()]
