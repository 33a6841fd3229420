"""LN tuning through PEFT: train only the gains (and biases) of the normalisation layers.

Zhao et al. 2023, Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning
(arXiv:2312.11420); PEFT's ``LNTuningConfig``. Every LayerNorm / RMSNorm outside the
output head gets a trainable copy; merging puts the tuned copy in place of the original,
so the merged model is a plain model with new norm weights.
"""
from __future__ import annotations

from peft import LNTuningConfig
from peft.utils import ModulesToSaveWrapper
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import LNTuningSettings
from .peft_backed import TASK_TYPES, PeftMethod
from .registry import register
from .targets import _in_head, _matches


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the architectures' own variants (LlamaRMSNorm, T5LayerNorm, …)."""
    return isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) or type(
        module).__name__.endswith(("LayerNorm", "RMSNorm"))


def norm_layer_names(model: nn.Module) -> list[str]:
    """Normalisation layers with parameters, outside the output head."""
    return [n for n, m in model.named_modules()
            if is_norm(m) and any(True for _ in m.parameters(recurse=False)) and not _in_head(n)]


def resolve_norm_targets(model: nn.Module, targets: str | list[str], method: str) -> list[str]:
    """``auto`` → every norm layer; patterns as in :func:`targets.resolve_targets`, over norm layers."""
    norms = norm_layer_names(model)
    if not norms:
        raise MethodError(f"method '{method}': {type(model).__name__} has no LayerNorm/RMSNorm layers to tune")
    if targets == "auto":
        return norms
    patterns = [targets] if isinstance(targets, str) else list(targets)
    missing = [p for p in patterns if not any(_matches(n, p) for n in norms)]
    if missing:
        raise MethodError(
            f"method '{method}': target pattern(s) {missing} match no normalisation layer of this model. "
            f"Its norm layers end in: {sorted({n.rsplit('.', 1)[-1] for n in norms})} (e.g. {norms[:3]})"
        )
    return [n for n in norms if any(_matches(n, p) for p in patterns)]


@register
class LNTuning(PeftMethod):
    name = "ln_tuning"
    Config = LNTuningSettings

    def peft_config(self, model: nn.Module, head: str) -> LNTuningConfig:
        targets = resolve_norm_targets(model, self.config.targets, self.name)
        return LNTuningConfig(target_modules=targets, task_type=TASK_TYPES.get(head))

    def merge(self, model: nn.Module) -> nn.Module:
        merged = super().merge(model)
        # PEFT 0.21's LN-tuning unload leaves ``modules_to_save`` wrappers (the trained classifier
        # copy of seq_cls) in place; unwrap them the way the other tuners do.
        for name, module in list(merged.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                parent_name, _, child = name.rpartition(".")
                parent = merged.get_submodule(parent_name) if parent_name else merged
                setattr(parent, child, module.unload_and_optionally_merge_module(
                    merge=True, safe_merge=False, adapter_names=None))
        return merged
