"""Settings of leantune's own methods (specification, adapters, hybrids); no torch."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .config import MethodConfig, NonLinearity


class FullSettings(MethodConfig):
    pass


class FreezeSettings(MethodConfig):
    last_n_layers: int | None = Field(2, ge=0, description="Train the last N transformer blocks.")
    patterns: list[str] = Field(default_factory=list, description="Regexes; matching parameter names also train.")
    train_head: bool = Field(True, description="Also train the output head (lm_head / classifier).")


class LLRDSettings(MethodConfig):
    decay: float = Field(0.9, gt=0, le=1, description="Per-layer factor: depth i gets lr·decay^(L−i).")


class BitFitSettings(MethodConfig):
    add_missing_biases: bool = Field(
        False, description="Add zero-initialised biases to targeted linear layers that lack one (Llama, T5).")
    targets: str | list[str] = Field(
        "auto", description="Layers that get added biases (auto, all-linear or name patterns); only with add_missing_biases.")
    include_norms: bool = Field(True, description="Also train LayerNorm biases (the paper trains every bias).")


class EmbeddingSettings(MethodConfig):
    new_tokens_only: bool = Field(False, description="Train only the rows of ids ≥ first_new_token.")
    first_new_token: int | None = Field(None, ge=0, description="Id of the first added token (needed with new_tokens_only).")

    @model_validator(mode="after")
    def _needs_first(self):
        if self.new_tokens_only and self.first_new_token is None:
            raise ValueError("new_tokens_only needs first_new_token (the id of the first added token)")
        return self


class AdapterSettings(MethodConfig):
    kind: Literal["houlsby", "pfeiffer", "parallel"] = Field(
        "houlsby", description="houlsby: after attention and MLP; pfeiffer: after the MLP; parallel: beside the MLP.")
    reduction_factor: float = Field(16, ge=1, le=4096, description="Bottleneck width r = hidden size / reduction_factor.")
    non_linearity: NonLinearity = Field("relu", description="Activation between down- and up-projection.")
    scaling: float = Field(1.0, gt=0, le=100, description="Multiplier of the adapter output (parallel adapters; He et al. use 4).")


class CompacterSettings(MethodConfig):
    kind: Literal["houlsby", "pfeiffer", "parallel"] = Field("pfeiffer", description="Adapter placement, as for `adapter`.")
    reduction_factor: float = Field(4, ge=1, le=4096, description="Bottleneck r = hidden size / reduction_factor.")
    phm_dim: int = Field(4, ge=1, le=64, description="n: number of Kronecker summands; must divide hidden size and r.")
    rank_one: bool = Field(True, description="B_i = s_i t_iᵀ (Compacter); false: full B_i (PHM-Adapter).")
    shared_phm: bool = Field(True, description="Share the A_i across all adapter layers (Compacter); false: one set per layer.")
    non_linearity: NonLinearity = Field("gelu", description="Activation between the projections.")
    scaling: float = Field(1.0, gt=0, le=100, description="Output multiplier (parallel placement).")


class AdaMixSettings(MethodConfig):
    num_experts: int = Field(4, ge=1, le=64, description="M: adapter experts per site.")
    kind: Literal["houlsby", "pfeiffer"] = Field("houlsby", description="Adapter placement, as for `adapter`.")
    reduction_factor: float = Field(16, ge=1, le=4096, description="Bottleneck r = hidden size / reduction_factor.")
    non_linearity: NonLinearity = Field("gelu", description="Activation between the projections.")


class LSTSettings(MethodConfig):
    reduction_factor: float = Field(8, ge=1, le=4096, description="Side width d_s = hidden size / reduction_factor.")
    non_linearity: NonLinearity = Field("gelu", description="Activation inside the side blocks.")
    gate_temperature: float = Field(0.1, gt=0, le=10, description="T in the ladder gates μ = σ(α/T).")


class MAMSettings(MethodConfig):
    prefix_length: int = Field(16, ge=1, le=1024, description="P: key/value prefix vectors per attention layer.")
    reduction_factor: float = Field(4, ge=1, le=4096, description="Parallel adapter bottleneck r = hidden / reduction_factor.")
    scaling: float = Field(4.0, gt=0, le=100, description="s: multiplier of the parallel adapter's output.")
    non_linearity: NonLinearity = Field("relu", description="Activation inside the adapter.")


class UniPELTSettings(MethodConfig):
    lora_r: int = Field(8, ge=1, le=1024, description="Rank of the gated LoRA update.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scale numerator (update × alpha / r).")
    lora_targets: str | list[str] = Field("qv", description="qv (query and value, as in the paper), auto, all-linear or patterns.")
    prefix_length: int = Field(10, ge=0, le=1024, description="P: gated prefix vectors per attention layer (0: no prefix).")
    reduction_factor: float = Field(16, ge=1, le=4096, description="Adapter bottleneck r = hidden / reduction_factor.")
    non_linearity: NonLinearity = Field("relu", description="Activation inside the adapter.")
