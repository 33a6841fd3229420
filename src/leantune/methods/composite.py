"""Composition: ``method: [prefix_tuning, {name: adapter, kind: parallel}]``.

A ``Composite`` applies its members in turn. At most one member may be PEFT-based
(PEFT wraps the model in a PeftModel; two different PEFT tuners cannot share one
wrapper here): it is applied first, whatever its place in the list, and our own
members inject into the PeftModel's base model (``get_base_model()``), so PEFT's
module names stay untouched. Every member freezes what it does not train, so the
union of all members' trainable parameters is re-enabled at the end; only one
member trains the task head of a seq_cls model. Each member saves its own part
into ``<path>/<i>-<name>/`` (i = its place in the recipe list) and reloads from it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import NotMergeable
from ..recipe.method_settings import HE_2022, MethodConfig, check_combination
from .base import Method, wraps_model

MANIFEST = "composite.json"


class Composite(Method):
    name = "composite"
    family = "hybrid"
    paper = HE_2022
    summary = "Several methods on one model, each saving its own part."
    wraps_model = None
    Config = MethodConfig

    def __init__(self, members: list[Method], source: str = "recipe"):
        super().__init__(MethodConfig())
        check_combination([(m.name, wraps_model(m)) for m in members], source)  # at most one PEFT-based, …
        self.members = members
        peft = [m for m in members if wraps_model(m)]
        names = [m.name for m in members]
        self.peft = peft[0] if peft else None
        self.mergeable = all(type(m).mergeable for m in members if not getattr(m, "modifier", False))
        for m in members:
            if getattr(m, "modifier", False):
                m.standalone = False
        claimed = self.peft is not None
        for m in members:  # one member trains the seq_cls head (PEFT does it itself)
            if hasattr(m, "claim_head"):
                m.claim_head, claimed = not claimed, True
        self.name = "+".join(names)

    # ---- helpers
    def order(self) -> list[tuple[int, Method]]:
        """(place in the list, member): the PEFT member first, the others in list order."""
        indexed = list(enumerate(self.members))
        return sorted(indexed, key=lambda im: im[1] is not self.peft)

    @staticmethod
    def inner(model: nn.Module) -> nn.Module:
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def folder(self, path: Path, i: int, m: Method) -> Path:
        return Path(path) / f"{i}-{m.name}"

    # ---- method interface
    def set_total_steps(self, n: int) -> None:
        for m in self.members:
            m.set_total_steps(n)

    def load_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.members:
            out.update(m.load_kwargs())
        return out

    def _run(self, model: nn.Module, head: str, step) -> nn.Module:
        trainable: dict[int, nn.Parameter] = {}
        for i, m in self.order():
            target = model if m is self.peft else self.inner(model)
            result = step(i, m, target)
            if m is self.peft:
                model = result
            trainable.update({id(p): p for p in model.parameters() if p.requires_grad})
        for p in trainable.values():
            p.requires_grad_(True)
        return model

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        return self._run(model, head, lambda i, m, target: m.apply(target, head))

    def save(self, model: nn.Module, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, m in self.order():
            m.save(model if m is self.peft else self.inner(model), self.folder(path, i, m))
        manifest = [{"folder": self.folder(path, i, m).name, "name": m.name, "peft": m is self.peft}
                    for i, m in enumerate(self.members)]
        (path / MANIFEST).write_text(json.dumps({"methods": manifest}, indent=2))

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        return self._run(model, head, lambda i, m, target: m.load(target, self.folder(path, i, m), head))

    def merge(self, model: nn.Module) -> nn.Module:
        if not self.mergeable:
            blocked = [m.name for m in self.members if not type(m).mergeable]
            raise NotMergeable(f"composition {self.name}: {', '.join(blocked)} cannot be merged into the base weights")
        for _, m in reversed(self.order()):  # ours first (inside), the PEFT wrapper last
            if m is not self.peft:
                m.merge(self.inner(model))
        return self.peft.merge(model) if self.peft is not None else model

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        for m in self.members:
            m.after_optimizer_step(model if m is self.peft else self.inner(model), step)

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        for m in self.members:
            groups = m.param_groups(model, lr, weight_decay)
            if groups:
                return groups
        return None
