"""Partial fine-tuning: freeze the backbone and train only the top N blocks and/or
parameters matching name patterns (Lee et al. 2019, "What would Elsa do? Freezing
layers during transformer fine-tuning", arXiv:1911.03090)."""
from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import FreezeSettings
from .base import Method, ensure_not_empty
from .delta import load_delta, save_delta
from .registry import register
from .targets import HEAD_NAMES, layer_index


@register
class Freeze(Method):
    name = "freeze"
    Config = FreezeSettings

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        cfg = self.config
        names = [n for n, _ in model.named_parameters()]
        layers = sorted({i for n in names if (i := layer_index(n)) is not None})
        keep = set(layers[-cfg.last_n_layers:]) if cfg.last_n_layers else set()
        regexes = [re.compile(p) for p in cfg.patterns]
        for pat, rx in zip(cfg.patterns, regexes):
            if not any(rx.search(n) for n in names):
                raise MethodError(f"method 'freeze': pattern {pat!r} matches no parameter. Parameters look like: {names[:6]}")
        tied_head = head == "causal_lm" and getattr(model.config, "tie_word_embeddings", False)
        for n, p in model.named_parameters():
            in_head = any(part in HEAD_NAMES for part in n.split("."))
            p.requires_grad = (
                layer_index(n) in keep
                or any(rx.search(n) for rx in regexes)
                or (cfg.train_head and in_head and not tied_head)
            )
        ensure_not_empty(model, self.name)
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        save_delta(model, path, {"name": self.name, **self.config.model_dump()})

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        model = self.apply(model, head)
        load_delta(model, path)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        return model
