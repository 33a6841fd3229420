"""Settings of the methods run through PEFT (LoRA and its variants, IA³, KronA, LN tuning,
the prompt-learning methods); no torch."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .config import MethodConfig


class LoraSettings(MethodConfig):
    r: int = Field(8, gt=0, le=1024, description="Rank of the update.")
    alpha: float = Field(16, gt=0, description="Scale numerator: the update is multiplied by alpha/r (alpha/√r with rslora).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: str | list[str] = Field("auto", description="auto (per-architecture), all-linear, or layer-name patterns.")
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/√r.")
    bias: str = Field("none", pattern="^(none|all|lora_only)$")


class QLoraSettings(LoraSettings):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class AdaLoraSettings(MethodConfig):
    init_r: int = Field(12, ge=1, le=1024, description="Starting rank of every targeted matrix.")
    target_r: int = Field(8, ge=1, le=1024, description="Average rank per matrix after budget allocation.")
    tinit: int = Field(0, ge=0, description="Warm-up steps before the budget starts shrinking.")
    tfinal: int = Field(0, ge=0, description="Final steps that fine-tune the fixed, allocated ranks.")
    deltaT: int = Field(1, ge=1, description="Steps between two budget allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance (sensitivity) scores.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of their uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, le=100, description="Weight of the orthogonality penalty on P, Q.")
    alpha: float = Field(32, gt=0, description="Scale numerator: the update is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the input of the update.")
    targets: str | list[str] = Field("auto", description="auto (per-architecture), all-linear, or layer-name patterns.")

    @model_validator(mode="after")
    def _ranks(self):
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        return self


class IA3Settings(MethodConfig):
    targets: str | list[str] = Field(
        "auto", description="auto (keys, values, MLP down projection per architecture), all-linear, "
                            "or layer-name patterns.")
    feedforward: str | list[str] = Field(
        "auto", description="Which targets rescale their input (the MLP's second layer): auto, or patterns "
                            "that must select a subset of the targets.")


class KronASettings(MethodConfig):
    targets: str | list[str] = Field("auto", description="auto (per-architecture), all-linear, or layer-name patterns.")
    factor: int = Field(
        -1, ge=-1, le=4096,
        description="Rows and columns of A (a1 = a2 = factor; it must divide every targeted dimension), "
                    "or -1 for the near-square split of each dimension.")
    scale: float = Field(1.0, gt=0, le=1000, description="s in ΔW = s · (A ⊗ B).")

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v in (0, 1):
            raise ValueError("factor must be -1 (near-square) or at least 2 (1 would make B the full matrix)")
        return v


class LNTuningSettings(MethodConfig):
    targets: str | list[str] = Field(
        "auto", description="auto (every norm layer outside the head) or norm-layer name patterns.")


class PromptCount(MethodConfig):
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="Number of virtual tokens (prompt length n).")


class TextInit(PromptCount):
    init: Literal["random", "text"] = Field(
        "random", description="Start the prompt at random, or from init_text (see the method).")
    init_text: str | None = Field(
        None, min_length=1,
        description="Text that initialises the prompt (init: text); repeated or cut to n tokens.")

    @model_validator(mode="after")
    def _text_given(self):
        if self.init == "text" and not self.init_text:
            raise ValueError("init: text needs init_text (e.g. a short description of the task)")
        if self.init == "random" and self.init_text:
            raise ValueError("init_text is only used with init: text")
        return self


class PromptTuningSettings(TextInit):
    """init: text starts the prompt at the token embeddings of init_text."""


class PrefixTuningSettings(PromptCount):
    encoder_hidden_size: int = Field(
        512, ge=1, le=65536, description="Hidden size h of the reparameterisation MLP (d → h → 2·layers·d).")


class PTuningSettings(PromptCount):
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


class PTuningV2Settings(TextInit):
    """init: text starts the prompts at the frozen model's keys and values for init_text
    (causal LMs; recommended for generation)."""
