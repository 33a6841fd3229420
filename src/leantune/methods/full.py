"""Full fine-tuning: every parameter trains (Howard & Ruder 2018, ULMFiT; the baseline)."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from ..recipe.method_settings import FullSettings
from .base import Method
from .registry import register


@register
class Full(Method):
    name = "full"
    Config = FullSettings

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        model.requires_grad_(True)
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        # the model's own parameter names, which :meth:`load` reads back; by default transformers
        # writes a checkpoint's legacy names (BERT-tiny's LayerNorm gamma/beta), which it would skip
        model.save_pretrained(path, safe_serialization=True, save_original_format=False)

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        files = sorted(Path(path).glob("*.safetensors"))
        state = {}
        for f in files:
            state.update(load_file(f))
        model.load_state_dict(state, strict=False)
        return self.apply(model, head)

    def merge(self, model: nn.Module) -> nn.Module:
        return model
