"""Ladder side tuning (LST): a small side network beside a frozen backbone.

Sung, Cho & Bansal 2022, LST: Ladder Side-Tuning for Parameter and Memory
Efficient Transfer Learning (arXiv:2206.06522). The backbone runs under
``torch.no_grad`` — no activations are kept for it and no gradient reaches it.
Its hidden states ``h_0..h_L`` are down-projected to width ``d_s = d / r`` and fed,
layer by layer, into a side network through learned gates
``s ← μ_i s + (1 − μ_i) D_i h_i`` with ``μ_i = σ(α_i / T)``; each side block is
``s ← s + W_2 f(W_1 LN(s))``. Finally ``h_L + U s_L`` (``U = 0`` at the start)
replaces the backbone's last hidden state before the head.

Reduced form (documented): the side blocks are position-wise feed-forward blocks
(no side attention and no pruned-backbone initialisation); context reaches the
side network through the ladder of backbone states. Defined for decoder-only and
encoder-only models (causal_lm, masked_lm, seq_cls); not for encoder-decoder.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import LSTSettings
from .adapter import bottleneck_size, like_model
from .injection import InjectedMethod, activation, attach, hidden_size
from .registry import register


class SideBlock(nn.Module):
    def __init__(self, width: int, non_linearity: str):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.act = activation(non_linearity)
        self.fc2 = nn.Linear(width, width)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s + self.fc2(self.act(self.fc1(self.norm(s))))


class SideNetwork(nn.Module):
    def __init__(self, dim: int, width: int, layers: int, non_linearity: str, temperature: float):
        super().__init__()
        self.downs = nn.ModuleList(nn.Linear(dim, width) for _ in range(layers + 1))
        self.gates = nn.Parameter(torch.zeros(layers))
        self.blocks = nn.ModuleList(SideBlock(width, non_linearity) for _ in range(layers))
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.temperature = temperature

    def forward(self, states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        dtype = self.up.weight.dtype
        s = self.downs[0](states[0].to(dtype))
        for i, block in enumerate(self.blocks):
            mu = torch.sigmoid(self.gates[i] / self.temperature)
            s = block(mu * s + (1 - mu) * self.downs[i + 1](states[i + 1].to(dtype)))
        return self.up(s)


class Ladder:
    """Hooks on the backbone: run it without gradients and with all hidden states, then
    add the side network's output to its last hidden state (and recompute BERT's pooler)."""

    def __init__(self, backbone: nn.Module, side: SideNetwork):
        self.backbone, self.side, self.grad_was = backbone, side, []

    def before(self, module, args, kwargs):
        kwargs["output_hidden_states"] = True
        kwargs["return_dict"] = True
        self.grad_was.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)
        return args, kwargs

    def after(self, module, args, kwargs, out):
        torch.set_grad_enabled(self.grad_was.pop() if self.grad_was else True)
        if out is None:  # the backbone raised; grad mode is restored, nothing to add
            return None
        states = out.hidden_states
        if len(states) != len(self.side.downs):
            raise MethodError(f"method 'lst': backbone gave {len(states)} hidden states, "
                              f"side network expects {len(self.side.downs)}")
        last = out.last_hidden_state
        out.last_hidden_state = last + self.side(states).to(last.dtype)
        pooler = getattr(module, "pooler", None)
        if pooler is not None and getattr(out, "pooler_output", None) is not None:
            out.pooler_output = pooler(out.last_hidden_state)
        return out


SIDE_CHILD = "leantune_side"


def backbone_name(model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(model, prefix, None), nn.Module):
        raise MethodError(f"method 'lst': cannot find the backbone of {type(model).__name__}")
    return prefix


@register
class LadderSideTuning(InjectedMethod):
    name = "lst"
    Config = LSTSettings

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        if getattr(model.config, "is_encoder_decoder", False) or head not in ("causal_lm", "masked_lm", "seq_cls"):
            raise MethodError(f"method 'lst' is defined for causal_lm, masked_lm and seq_cls models, not {head} "
                              f"({model.config.model_type})")
        prefix = backbone_name(model)
        dim = hidden_size(model)
        layers = model.config.num_hidden_layers
        side = like_model(SideNetwork(dim, bottleneck_size(dim, self.config.reduction_factor, self.name), layers,
                                      self.config.non_linearity, self.config.gate_temperature), model)
        backbone = getattr(model, prefix)
        ladder = Ladder(backbone, side)
        attach(backbone, SIDE_CHILD, side,
               backbone.register_forward_pre_hook(ladder.before, with_kwargs=True),
               backbone.register_forward_hook(ladder.after, with_kwargs=True, always_call=True))
        return list(side.parameters())
