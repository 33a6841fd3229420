"""(IA)³ through PEFT: learned vectors that rescale keys, values and the feed-forward activations.

Liu et al. 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning (arXiv:2205.05638). For a targeted layer y = W x, attention targets become
y = l ⊙ (W x) (l ∈ R^out) and feed-forward targets y = W (l ⊙ x) (l ∈ R^in, on the
input of the MLP's second layer); l starts at 1, so the model starts unchanged, and
folding l into W merges it exactly.
"""
from __future__ import annotations

from peft import IA3Config
from torch import nn

from ..errors import MethodError
from ..recipe.method_settings import IA3Settings
from .peft_backed import TASK_TYPES, PeftMethod, fan_in_fan_out
from .registry import register
from .targets import resolve_targets

# Per architecture: (targets, feed-forward targets) — keys, values, and the MLP's second
# (down) projection, as in the paper. GPT-2 fuses q/k/v into c_attn, so its queries are
# rescaled too. BERT's pattern picks the FFN output dense, not the attention output dense.
_LLAMA = (["k_proj", "v_proj", "down_proj"], ["down_proj"])
_BERT = (["key", "value", r".*\.layer\.\d+\.output\.dense"], [r".*\.layer\.\d+\.output\.dense"])
IA3_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA,
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "bert": _BERT, "roberta": _BERT,
    "t5": (["k", "v", "wo"], ["wo"]),
}


@register
class IA3(PeftMethod):
    name = "ia3"
    Config = IA3Settings

    def peft_config(self, model: nn.Module, head: str) -> IA3Config:
        cfg = self.config
        model_type = getattr(model.config, "model_type", "")
        defaults = IA3_DEFAULTS.get(model_type)
        if defaults is None and "auto" in (cfg.targets, cfg.feedforward):
            raise MethodError(
                f"method 'ia3' has no default targets for model type {model_type!r}; set targets and "
                f"feedforward to layer-name patterns (keys, values and the MLP's second layer)"
            )
        targets = resolve_targets(model, defaults[0] if cfg.targets == "auto" else cfg.targets, self.name)
        ff_patterns = defaults[1] if cfg.feedforward == "auto" else cfg.feedforward
        feedforward = resolve_targets(model, ff_patterns, self.name) if ff_patterns else []
        outside = [n for n in feedforward if n not in targets]
        if outside:
            raise MethodError(f"method 'ia3': feedforward layers {outside[:3]} are not among the targets")
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=TASK_TYPES.get(head),
                         fan_in_fan_out=fan_in_fan_out(model))
