"""BitFit: train only the bias terms (and, for classification, the task head).

Ben Zaken, Ravfogel & Goldberg 2022, BitFit: Simple Parameter-efficient
Fine-tuning for Transformer-based Masked Language-models (arXiv:2106.10199).

Architectures without biases (Llama, Mistral, T5) are refused with a clear error
by default. With ``add_missing_biases: true`` the targeted linear layers that have
no bias get a zero-initialised one, which then trains (the model starts unchanged).
Merging a model with such added biases is refused: the architecture's config has
no place for them, so a plain Hugging Face folder could not hold the result.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import MethodError, NotMergeable
from ..recipe.method_settings import BitFitSettings
from .injection import InjectedMethod, in_out, select_linear
from .registry import register
from .targets import HEAD_NAMES


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
            raise NotMergeable(
                f"method 'bitfit': biases were added to {len(self.added)} layers (add_missing_biases) that this "
                f"architecture's config cannot express; keep the delta instead of merging")
        model.requires_grad_(False)
        return model
