"""The base of every method's settings, and the vocabulary they share (no torch)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Family = Literal["specification", "addition", "reparameterization", "hybrid"]
ALL_ARCHITECTURES = "all (Llama, Qwen2, GPT-2, BERT, T5)"
NonLinearity = Literal["relu", "gelu", "silu", "tanh"]


class MethodConfig(BaseModel):
    """Settings of one method; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
