"""KronA through PEFT's LoKr: a full-rank Kronecker-product update ΔW = s · (A ⊗ B).

Edalati et al. 2022, KronA: Parameter Efficient Tuning with Kronecker Adapter (arXiv:2212.10650).
For a layer W ∈ R^{out×in}: A ∈ R^{a1×a2}, B ∈ R^{b1×b2} with a1·b1 = out, a2·b2 = in,
so each layer trains a1·a2 + b1·b2 numbers, yet A ⊗ B can have full rank.

How PEFT's LoKr expresses it exactly (peft/tuners/lokr/layer.py, ``update_layer``):
``lokr_w1`` (= A) is a full matrix unless ``decompose_both`` is set and r is small, so
``decompose_both=False``; ``lokr_w2`` (= B) is a full matrix when r ≥ max(b1, b2)/2,
otherwise LoKr factorises it into rank-r pieces — so r is set to the largest targeted
dimension, where it means nothing else; the scale is alpha/r, so alpha = s·r. The factor
shapes come from ``factorization(dim, decompose_factor)`` applied to out and in alike:
a1 = f, a2 = f (b1 = out/f, b2 = in/f) for a factor f dividing both, or with -1 the
divisor pair of each dimension closest to its square root (a ≤ b). A starts at zero,
B at Kaiming-uniform, so ΔW = 0 at the start. Dropout of LoKr is off (not in KronA).
LoKr serves ``nn.Linear`` only (not GPT-2's ``Conv1D``).
"""
from __future__ import annotations

from peft import LoKrConfig
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import KronASettings
from .peft_backed import TASK_TYPES, PeftMethod
from .registry import register
from .targets import resolve_targets


@register
class KronA(PeftMethod):
    name = "krona"
    Config = KronASettings

    def peft_config(self, model: nn.Module, head: str) -> LoKrConfig:
        cfg = self.config
        targets = resolve_targets(model, cfg.targets, self.name)
        layers = {n: model.get_submodule(n) for n in targets}
        other = [f"{n} ({type(m).__name__})" for n, m in layers.items() if not isinstance(m, nn.Linear)]
        if other:
            raise MethodError(
                f"method '{self.name}' (PEFT LoKr) supports nn.Linear layers only; these targets are not: "
                f"{other[:3]}{' …' if len(other) > 3 else ''}. Choose other targets or use lora."
            )
        dims = [d for m in layers.values() for d in (m.in_features, m.out_features)]
        if cfg.factor > 0 and (bad := sorted({d for d in dims if d % cfg.factor})):
            raise MethodError(f"method '{self.name}': factor {cfg.factor} does not divide the targeted "
                              f"dimension(s) {bad[:5]}; choose a common divisor or -1")
        r = max(dims)  # ≥ max(b1, b2)/2, so LoKr keeps B as one full matrix
        return LoKrConfig(target_modules=targets, r=r, alpha=cfg.scale * r, decompose_both=False,
                          decompose_factor=cfg.factor, rank_dropout=0.0, module_dropout=0.0,
                          task_type=TASK_TYPES.get(head))

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        model = super().apply(model, head)
        for n, m in model.named_modules():  # guard: exactly one full A and one full B per layer
            if hasattr(m, "lokr_w1") and ("default" not in m.lokr_w1 or "default" not in m.lokr_w2):
                raise MethodError(f"method '{self.name}': PEFT LoKr decomposed a Kronecker factor of {n}")
        return model
