"""Key/value prefixes for our own hybrids (MAM, UniPELT), on the injection mechanism.

Prefix tuning (Li & Liang 2021, arXiv:2101.00190) prepends P trainable key and
value vectors to every self-attention layer: ``softmax(q [P_K; K]ᵀ) [P_V; V]``.

How: every self-attention module of transformers 5 computes q, k, v (with RoPE
already applied) and hands them to an *attention interface* looked up by
``config._attn_implementation``. We register ``leantune_prefix_sdpa`` /
``leantune_prefix_eager`` (with the matching mask functions) which prepend the
module's prefix (a child ``leantune_prefix``) to key and value, widen the mask —
and T5's position bias — by P columns that every query may attend to, then call
the original sdpa/eager function. Modules without a prefix pass straight through.
Works for llama/qwen2/gpt2/bert/t5 (T5: encoder and decoder self-attention).
"""
from __future__ import annotations

import sys

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ..errors import MethodError
from .injection import find_modules, in_out

PREFIX_CHILD = "leantune_prefix"
IMPL_PREFIX = "leantune_prefix_"
INIT_STD = 0.02


class KVPrefix(nn.Module):
    """P key and P value vectors for one attention module, optionally behind a gate
    ``σ(W·mean_t(h) + b)`` computed per example from the layer input (UniPELT)."""

    def __init__(self, length: int, kv_dim: int, gate_dim: int | None = None):
        super().__init__()
        self.key = nn.Parameter(torch.randn(length, kv_dim) * INIT_STD)
        self.value = nn.Parameter(torch.randn(length, kv_dim) * INIT_STD)
        self.gate = nn.Linear(gate_dim, 1) if gate_dim else None
        self.gate_input: torch.Tensor | None = None

    def capture(self, module, args, kwargs):  # forward pre-hook on the attention module
        if self.gate is not None:
            h = args[0] if args else kwargs.get("hidden_states")
            self.gate_input = h.mean(dim=1)

    def gate_value(self) -> torch.Tensor | None:
        if self.gate is None or self.gate_input is None:
            return None
        return torch.sigmoid(self.gate(self.gate_input.to(self.gate.weight.dtype)))  # (b, 1)

    def expand(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, heads, P, head_dim) key and value prefixes shaped like ``like``."""
        b, heads, _, dim = like.shape
        if heads * dim != self.key.shape[1]:
            raise MethodError(f"prefix width {self.key.shape[1]} does not fit {heads} heads × {dim}")
        def shape(t):
            return t.to(like.dtype).view(-1, heads, dim).transpose(0, 1).unsqueeze(0).expand(b, -1, -1, -1)
        k, v = shape(self.key), shape(self.value)
        g = self.gate_value()
        if g is not None:
            g = g.to(like.dtype).view(b, 1, 1, 1)
            k, v = k * g, v * g
        return k, v


def _inner(module: nn.Module, name: str):
    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _widen(t: torch.Tensor | None, n: int, fill) -> torch.Tensor | None:
    if t is None:
        return None
    pad = torch.full((*t.shape[:-1], n), fill, dtype=t.dtype, device=t.device)
    if t.dtype != torch.bool and fill == 0:
        pad = torch.zeros_like(pad)
    return torch.cat([pad.expand(*t.shape[:-1], n), t], dim=-1)


def _make_interface(inner_name: str):
    def prefixed_attention(module, query, key, value, attention_mask, **kwargs):
        prefix = module._modules.get(PREFIX_CHILD)
        inner = _inner(module, inner_name)
        if prefix is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        pk, pv = prefix.expand(key)
        n = pk.shape[2]
        q_len, k_len = query.shape[2], key.shape[2]
        if attention_mask is None and getattr(module, "is_causal", False) and q_len > 1:
            causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
            attention_mask = causal.view(1, 1, q_len, k_len)
            if inner_name == "eager":
                attention_mask = torch.zeros(1, 1, q_len, k_len, dtype=query.dtype, device=query.device
                                             ).masked_fill(~causal, torch.finfo(query.dtype).min)
        if attention_mask is not None:
            attention_mask = _widen(attention_mask, n, True if attention_mask.dtype == torch.bool else 0)
        if kwargs.get("position_bias") is not None:  # T5
            kwargs["position_bias"] = _widen(kwargs["position_bias"], n, 0)
        kwargs.pop("is_causal", None)
        return inner(module, query, torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2),
                     attention_mask, **kwargs)

    return prefixed_attention


def _register() -> None:
    for inner in ("sdpa", "eager"):
        name = IMPL_PREFIX + inner
        AttentionInterface.register(name, _make_interface(inner))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])


def _kv_dim(attn: nn.Module) -> int:
    for child in ("k_proj", "key", "k"):
        if hasattr(attn, child):
            return in_out(getattr(attn, child))[1]
    if hasattr(attn, "c_attn"):  # GPT-2: fused q, k, v
        return in_out(attn.c_attn)[1] // 3
    raise MethodError(f"cannot find the key projection of {type(attn).__name__}")


def add_prefixes(model: nn.Module, length: int, method: str, gate_dim: int | None = None) -> list[KVPrefix]:
    """Give every self-attention module a ``KVPrefix`` and switch the attention
    implementation to the prefix-aware one."""
    _register()
    configs = {id(m.config): m.config for m in model.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation")}
    for cfg in configs.values():
        impl = cfg._attn_implementation or "eager"
        if impl.startswith(IMPL_PREFIX):
            continue
        if impl not in ("sdpa", "eager"):
            raise MethodError(f"method '{method}': prefixes need eager or sdpa attention, the model uses {impl!r} "
                              f"(set model.attn_implementation or load without it)")
        cfg._attn_implementation = IMPL_PREFIX + impl
    made = []
    for name in find_modules(model, "attn", method):
        attn = model.get_submodule(name)
        if PREFIX_CHILD in attn._modules:
            raise MethodError(f"method '{method}': {name} already has a prefix (two prefix methods composed?)")
        prefix = KVPrefix(length, _kv_dim(attn), gate_dim)
        attn.add_module(PREFIX_CHILD, prefix)
        attn.register_forward_pre_hook(prefix.capture, with_kwargs=True)
        made.append(prefix)
    return made
