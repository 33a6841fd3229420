"""LoRA through PEFT: W' = W + (alpha / r) · B A, with A ∈ R^{r×k}, B ∈ R^{d×r}, B = 0 at start.

Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685).
Options: DoRA (Liu et al. 2024, arXiv:2402.09353) splits W into magnitude and
direction; rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) scales by alpha/√r.
Saved in PEFT's format, so PEFT, vLLM and others load the adapter directly.
"""
from __future__ import annotations

from peft import LoraConfig
from torch import nn

from ..recipe.method_settings import LoraSettings
from .peft_backed import TASK_TYPES, PeftMethod, fan_in_fan_out
from .registry import register
from .targets import resolve_targets


def peft_lora_config(cfg: LoraSettings, model: nn.Module, head: str, method: str) -> LoraConfig:
    targets = resolve_targets(model, cfg.targets, method)
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=cfg.dora,
        use_rslora=cfg.rslora,
        bias=cfg.bias,
        task_type=TASK_TYPES.get(head),
        fan_in_fan_out=fan_in_fan_out(model),
    )


@register
class LoRA(PeftMethod):
    name = "lora"
    Config = LoraSettings

    def peft_config(self, model: nn.Module, head: str) -> LoraConfig:
        return peft_lora_config(self.config, model, head, self.name)
