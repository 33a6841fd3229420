"""LoRA through PEFT: W' = W + (alpha / r) · B A, with A ∈ R^{r×k}, B ∈ R^{d×r}, B = 0 at start.

Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685).
Options: DoRA (Liu et al. 2024, arXiv:2402.09353) splits W into magnitude and
direction; rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) scales by alpha/√r.
Saved in PEFT's format, so PEFT, vLLM and others load the adapter directly.
"""
from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from .registry import Method, register
from .settings import LoraSettings
from .targets import resolve_targets

TASK_TYPES = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS, "seq2seq": TaskType.SEQ_2_SEQ_LM}


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
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )


@register
class LoRA(Method):
    name = "lora"
    Config = LoraSettings

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        return get_peft_model(model, peft_lora_config(self.config, model, head, self.name))

    def save(self, model: nn.Module, path: Path) -> None:
        model.save_pretrained(path, safe_serialization=True)

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        return PeftModel.from_pretrained(model, path, is_trainable=False)

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()
