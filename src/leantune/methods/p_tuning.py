"""P-tuning (v1) through PEFT: virtual input tokens produced by a prompt encoder (LSTM or MLP).

Liu et al. 2021, GPT Understands, Too (arXiv:2103.10385). n trainable embeddings pass
through a prompt encoder (the paper's bidirectional LSTM + two-layer MLP, or an MLP
alone) and are prepended to the input embeddings; only the input layer is prompted.
"""
from __future__ import annotations

from typing import Literal

from peft import PeftConfig, PromptEncoderConfig, PromptEncoderReparameterizationType
from pydantic import Field, model_validator
from torch import nn

from .lora import TASK_TYPES
from .prompt_tuning import PromptCount, PromptLearning
from .registry import register

ENCODERS = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}


@register
class PTuning(PromptLearning):
    name = "p_tuning"
    architectures = "causal LM, seq2seq, classification; not masked LM"
    paper = "Liu et al. 2021, GPT Understands, Too (arXiv:2103.10385)"
    summary = ("Input-layer virtual tokens from an LSTM/MLP prompt encoder; steadier than plain prompt "
               "tuning on small and mid-sized models.")

    class Config(PromptCount):
        encoder: Literal["mlp", "lstm"] = Field(
            "mlp", description="Prompt encoder: mlp (3 linear layers; PEFT's recommendation) or lstm "
                               "(the paper's bidirectional LSTM followed by a 2-layer MLP).")
        encoder_hidden_size: int = Field(128, ge=1, le=65536, description="Hidden size of the prompt encoder.")
        encoder_num_layers: int = Field(2, ge=1, le=8, description="LSTM layers (lstm only; the MLP has 3 layers).")
        encoder_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout between LSTM layers (lstm only).")

        @model_validator(mode="after")
        def _lstm_only(self):
            if self.encoder == "mlp" and (self.encoder_num_layers != 2 or self.encoder_dropout):
                raise ValueError("encoder_num_layers and encoder_dropout apply to encoder: lstm only")
            return self

    def peft_config(self, model: nn.Module, head: str) -> PeftConfig:
        cfg = self.config
        return PromptEncoderConfig(
            task_type=TASK_TYPES[head], num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type=ENCODERS[cfg.encoder], encoder_hidden_size=cfg.encoder_hidden_size,
            encoder_num_layers=cfg.encoder_num_layers, encoder_dropout=cfg.encoder_dropout,
        )
