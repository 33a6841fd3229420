"""Layer-wise learning-rate decay (LLRD), an optimizer option for methods that train backbone weights.

Howard & Ruder 2018, Universal Language Model Fine-tuning for Text Classification
(arXiv:1801.06146), "discriminative fine-tuning": lower layers change less. With L
transformer blocks, a parameter at depth i gets ``lr · decay^(L − i)``: the
embeddings are depth 0, block k is depth k + 1, everything after the blocks (final
norm, head, modules a method adds) depth L and the full lr.

Design: ``llrd`` is a registered entry of its own so it composes with any method
without every method growing an option: ``method: [full, {name: llrd, decay: 0.9}]``
or ``[freeze, llrd]``, ``[lora, llrd]``. It changes no parameter's trainability in
a composition; it only hands the engine its parameter groups (``Method.param_groups``).
Alone, ``method: {name: llrd, decay: 0.9}`` means full fine-tuning with LLRD.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..training.optim import layerwise_param_groups
from .full import Full
from .registry import register
from .settings import LLRDSettings


@register
class LayerwiseLRDecay(Full):
    name = "llrd"
    modifier = True  # in a Composite: only shapes the optimizer, trains nothing of its own
    Config = LLRDSettings

    def __init__(self, config):
        super().__init__(config)
        self.standalone = True  # a Composite sets False: then apply/save/load touch nothing

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        return super().apply(model, head) if self.standalone else model

    def save(self, model: nn.Module, path: Path) -> None:
        if self.standalone:
            return super().save(model, path)
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "llrd.json").write_text(f'{{"decay": {self.config.decay}}}\n')

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        return super().load(model, path, head) if self.standalone else model

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        return layerwise_param_groups(model, lr, weight_decay, self.config.decay)
