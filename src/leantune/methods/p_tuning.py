"""P-tuning (v1) through PEFT: virtual input tokens produced by a prompt encoder (LSTM or MLP).

Liu et al. 2021, GPT Understands, Too (arXiv:2103.10385). n trainable embeddings pass
through a prompt encoder (the paper's bidirectional LSTM + two-layer MLP, or an MLP
alone) and are prepended to the input embeddings; only the input layer is prompted.
"""
from __future__ import annotations

from peft import PeftConfig, PromptEncoderConfig, PromptEncoderReparameterizationType
from torch import nn

from ..recipe.method_settings import PTuningSettings
from .peft_backed import TASK_TYPES
from .prompt_tuning import PromptLearning
from .registry import register

ENCODERS = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}


@register
class PTuning(PromptLearning):
    name = "p_tuning"
    Config = PTuningSettings

    def peft_config(self, model: nn.Module, head: str) -> PeftConfig:
        cfg = self.config
        return PromptEncoderConfig(
            task_type=TASK_TYPES[head], num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type=ENCODERS[cfg.encoder], encoder_hidden_size=cfg.encoder_hidden_size,
            encoder_num_layers=cfg.encoder_num_layers, encoder_dropout=cfg.encoder_dropout,
        )
