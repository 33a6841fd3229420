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

from ..recipe.method_settings import LLRDSettings
from .full import Full
from .registry import register
from .targets import layer_index, skips_weight_decay

EMBEDDING_HINTS = ("embed", "wte", "wpe", "shared", "word_embeddings", "position_embeddings", "token_type_embeddings")


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for embeddings, k+1 for block k,
    ``num_layers`` for everything after the blocks (final norm, head, added modules)."""
    k = layer_index(name)
    if k is not None:
        return k + 1
    if any(h in name.lower() for h in EMBEDDING_HINTS):
        return 0
    return num_layers


def layerwise_param_groups(model: nn.Module, lr: float, weight_decay: float, decay: float) -> list[dict]:
    """Layer-wise lr decay (Howard & Ruder 2018): depth i gets ``lr · decay^(L − i)``,
    L = number of blocks; biases and norms still skip weight decay. T5's encoder and
    decoder block k share depth k+1."""
    names = [n for n, _ in model.named_parameters()]
    indices = [i for n in names if (i := layer_index(n)) is not None]
    num_layers = max(indices) + 1 if indices else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_depth(name, num_layers)
        no_decay = skips_weight_decay(name, p)
        group = groups.setdefault((depth, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": lr * decay ** (num_layers - depth), "depth": depth})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


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
