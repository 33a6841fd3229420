"""BitFit: train only the bias terms (and, for classification, the task head).

Ben Zaken, Ravfogel & Goldberg 2022, BitFit: Simple Parameter-efficient
Fine-tuning for Transformer-based Masked Language-models (arXiv:2106.10199).

Architectures without biases (Llama, Mistral, T5) are refused with a clear error
by default. With ``add_missing_biases: true`` the targeted linear layers that have
no bias get a zero-initialised one, which then trains (the model starts unchanged).
Merging a model with such added biases sets the config flags that give those layers a
bias (Llama: ``attention_bias``, ``mlp_bias``; any config with these keys), so that a plain
Hugging Face folder holds them; layers a flag covers that trained none get a zero bias.
Where no flag covers an added bias (T5, Mistral) merging is refused.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import MethodError, NotMergeable
from ..recipe.method_settings import BitFitSettings
from .injection import InjectedMethod, in_out, select_linear
from .registry import register
from .targets import HEAD_NAMES

# config keys that give a family of linear layers a bias (LlamaConfig and the configs derived from it)
BIAS_FLAGS = ("attention_bias", "mlp_bias")


@register
class BitFit(InjectedMethod):
    name = "bitfit"
    Config = BitFitSettings

    def inject(self, model: nn.Module, head: str) -> list[nn.Parameter]:
        cfg = self.config
        self.added: list[str] = []
        if cfg.add_missing_biases:
            for name in select_linear(model, cfg.targets, self.name):
                layer = model.get_submodule(name)
                if getattr(layer, "bias", None) is None and not isinstance(layer, Conv1D):
                    ref = layer.weight
                    layer.bias = nn.Parameter(torch.zeros(in_out(layer)[1], dtype=ref.dtype, device=ref.device))
                    self.added.append(name)
        own = []
        for n, p in model.named_parameters():
            parts = n.split(".")
            if parts[-1] != "bias" or any(x in HEAD_NAMES for x in parts) or "leantune_" in n:
                continue
            if not cfg.include_norms and any(k in n.lower() for k in ("norm", "ln_")):
                continue
            own.append(p)
        if not own:
            raise MethodError(
                f"method 'bitfit': this {model.config.model_type} model has no bias terms to train; set "
                f"add_missing_biases: true to add zero-initialised biases to its linear layers, or choose another method")
        return own

    def merge(self, model: nn.Module) -> nn.Module:
        if getattr(self, "added", None):
            express_added_biases(model, self.added)
        model.requires_grad_(False)
        return model


def _bias_layers(model_class: type, config, **flags: bool) -> set[str]:
    """Names of the layers with a bias in a model built from ``config`` with ``flags`` set (on the
    meta device: no memory)."""
    config = copy.deepcopy(config)
    for flag, value in flags.items():
        setattr(config, flag, value)
    with torch.device("meta"):
        built = model_class(config)
    return {n.rsplit(".", 1)[0] for n, _ in built.named_parameters() if n.endswith(".bias")}


def express_added_biases(model: nn.Module, added: list[str]) -> None:
    """Turn on the config flags whose layers include the ``added`` biases and give the flags'
    other layers a zero bias, so the saved config builds exactly this model."""
    config = model.config
    flags = [f for f in BIAS_FLAGS if getattr(config, f, None) is False]
    without = _bias_layers(type(model), config)
    covered = {flag: _bias_layers(type(model), config, **{flag: True}) - without for flag in flags}
    needed = [f for f in flags if covered[f] & set(added)]
    missing = sorted(set(added) - set().union(*(covered[f] for f in needed)))
    if missing:
        covering = f" (it has {' and '.join(flags)}: target only the layers they cover)" if flags else ""
        raise NotMergeable(
            f"method 'bitfit': biases were added (add_missing_biases) to {len(missing)} layer(s), e.g. "
            f"{missing[0]}, that no key of the {config.model_type} config can express{covering}; use the "
            f"run's adapter with the base model instead of merging")
    for flag in needed:
        setattr(config, flag, True)
        for name in sorted(covered[flag] - set(added)):
            layer = model.get_submodule(name)
            layer.bias = nn.Parameter(torch.zeros(in_out(layer)[1], dtype=layer.weight.dtype,
                                                  device=layer.weight.device))
