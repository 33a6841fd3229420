"""Every method's settings and description, without torch: a recipe is checked here
before any model library is imported.

``METHOD_INFO`` maps each method name to its settings class (the ``Config`` of the
method class, which ``registry.register`` gives the class together with the
description) and what ``leantune methods`` lists. ``validate_method_settings`` checks
a recipe's method entries and their combination (``composite.py``) from this module
alone; ``tests/unit/test_settings_torch_free.py`` keeps it in step with the classes.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import RecipeError
from ..validation import format_validation_error

Family = Literal["specification", "addition", "reparameterization", "hybrid"]
ALL_ARCHITECTURES = "all (Llama, Qwen2, GPT-2, BERT, T5)"
NonLinearity = Literal["relu", "gelu", "silu", "tanh"]


class MethodConfig(BaseModel):
    """Settings of one method; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


# --------------------------------------------------------------------------- through PEFT

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


# --------------------------------------------------------------------------- our own

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


# --------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class MethodInfo:
    """A method as the recipe and ``leantune methods`` see it; ``peft``: its ``apply`` wraps the
    model in a PeftModel (a composition holds at most one such method)."""

    settings: type[MethodConfig]
    family: Family
    mergeable: bool
    summary: str
    paper: str
    architectures: str = ALL_ARCHITECTURES
    peft: bool = False


PROMPT_ARCHITECTURES = "causal LM, seq2seq, classification; not masked LM"
HE_2022 = "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv:2110.04366)"

METHOD_INFO: dict[str, MethodInfo] = {
    "lora": MethodInfo(
        LoraSettings, "reparameterization", True,
        "Low-rank update B·A beside frozen linear layers; the default choice for most tasks.",
        "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)", peft=True),
    "qlora": MethodInfo(
        QLoraSettings, "reparameterization", True,
        "LoRA over a 4-bit NF4 base: the least memory for a given model; merge goes into de-quantized weights.",
        "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs (arXiv:2305.14314)", peft=True),
    "adalora": MethodInfo(
        AdaLoraSettings, "reparameterization", True,
        "LoRA whose rank budget is reallocated to the most important matrices during training; "
        "use it when one fixed LoRA rank for every layer is a poor fit.",
        "Zhang et al. 2023, AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning "
        "(arXiv:2303.10512)", peft=True),
    "ia3": MethodInfo(
        IA3Settings, "addition", True,
        "Learned rescaling of keys, values and FFN activations: ~10x fewer parameters than LoRA, "
        "strong in few-shot settings, merges exactly.",
        "Liu et al. 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than "
        "In-Context Learning (arXiv:2205.05638)", peft=True),
    "krona": MethodInfo(
        KronASettings, "reparameterization", True,
        "Kronecker-product update A ⊗ B that merges exactly: full-rank updates for as few parameters "
        "as a low-rank LoRA, for tasks where LoRA's rank limits quality.",
        "Edalati et al. 2022, KronA: Parameter Efficient Tuning with Kronecker Adapter (arXiv:2212.10650)",
        "nn.Linear models (Llama, Qwen2, BERT, T5); not GPT-2 Conv1D", peft=True),
    "ln_tuning": MethodInfo(
        LNTuningSettings, "specification", True,
        "Train only the LayerNorm/RMSNorm gains and biases: a tiny, cheap baseline that is "
        "surprisingly strong for domain or modality shifts.",
        "Zhao et al. 2023, Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning "
        "(arXiv:2312.11420)", peft=True),
    "prompt_tuning": MethodInfo(
        PromptTuningSettings, "addition", False,
        "Learn only n soft-prompt embeddings before the input; the fewest parameters of all, "
        "competitive once the model has billions of parameters.",
        "Lester, Al-Rfou & Constant 2021, The Power of Scale for Parameter-Efficient Prompt Tuning "
        "(arXiv:2104.08691)", PROMPT_ARCHITECTURES, peft=True),
    "prefix_tuning": MethodInfo(
        PrefixTuningSettings, "addition", False,
        "Trainable key/value prefixes in every layer through a small MLP; for generation "
        "(table-to-text, summarisation) with a frozen LM and ~0.1% of its parameters.",
        "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation (arXiv:2101.00190)",
        PROMPT_ARCHITECTURES, peft=True),
    "p_tuning": MethodInfo(
        PTuningSettings, "addition", False,
        "Input-layer virtual tokens from an LSTM/MLP prompt encoder; steadier than plain prompt "
        "tuning on small and mid-sized models.",
        "Liu et al. 2021, GPT Understands, Too (arXiv:2103.10385)", PROMPT_ARCHITECTURES, peft=True),
    "p_tuning_v2": MethodInfo(
        PTuningV2Settings, "addition", False,
        "Deep prompts in every layer without an MLP; the prompt method for NLU "
        "(classification with a task head), close to fine-tuning even on small models.",
        "Liu et al. 2022, P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally "
        "Across Scales and Tasks (arXiv:2110.07602)", PROMPT_ARCHITECTURES, peft=True),
    "full": MethodInfo(
        FullSettings, "specification", True,
        "Train every weight. Best with ample data and memory; the reference the others are measured against.",
        "Howard & Ruder 2018, Universal Language Model Fine-tuning (arXiv:1801.06146)"),
    "freeze": MethodInfo(
        FreezeSettings, "specification", True,
        "Train only the last N transformer blocks (and/or name patterns); the rest stays frozen.",
        "Lee, Tang & Lin 2019, What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning "
        "(arXiv:1911.03090)"),
    "llrd": MethodInfo(
        LLRDSettings, "specification", True,
        "Layer-wise lr decay lr·decay^(L−i); alone = full fine-tuning with LLRD, or composed with another method.",
        "Howard & Ruder 2018, Universal Language Model Fine-tuning for Text Classification (arXiv:1801.06146)"),
    "bitfit": MethodInfo(
        BitFitSettings, "specification", True,
        "Train only the bias vectors (plus the classification head); tiny, mergeable, strongest on encoders.",
        "Ben Zaken, Ravfogel & Goldberg 2022, BitFit: Simple Parameter-efficient Fine-tuning for "
        "Transformer-based Masked Language-models (arXiv:2106.10199)",
        "all; models without biases (Llama, T5) need add_missing_biases: true"),
    "embedding": MethodInfo(
        EmbeddingSettings, "specification", True,
        "Train only the input embeddings, or only the rows of newly added tokens.",
        "Embedding-only tuning as in vocabulary extension; cf. Lester et al. 2021 (arXiv:2104.08691) "
        "for the soft-prompt variant"),
    "adapter": MethodInfo(
        AdapterSettings, "addition", False,
        "Bottleneck modules after (houlsby/pfeiffer) or beside (parallel) the sub-layers; starts as identity.",
        "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv:1902.00751); "
        f"Pfeiffer et al. 2021, AdapterFusion (arXiv:2005.00247); {HE_2022}"),
    "compacter": MethodInfo(
        CompacterSettings, "addition", False,
        "Adapters with Kronecker-factored (PHM) weights and shared slow matrices: adapter quality at a "
        "fraction of the parameters.",
        "Mahabadi, Henderson & Ruder 2021, Compacter: Efficient Low-Rank Hypercomplex Adapter Layers "
        "(arXiv:2106.04647)"),
    "adamix": MethodInfo(
        AdaMixSettings, "addition", False,
        "Several adapters per layer, randomly routed in training and weight-averaged for inference.",
        "Wang et al. 2022, AdaMix: Mixture-of-Adaptations for Parameter-efficient Model Tuning "
        "(arXiv:2205.12410)"),
    "lst": MethodInfo(
        LSTSettings, "addition", False,
        "A small side network reads the frozen backbone's states; no backprop through the backbone, "
        "least activation memory.",
        "Sung, Cho & Bansal 2022, LST: Ladder Side-Tuning for Parameter and Memory Efficient Transfer "
        "Learning (arXiv:2206.06522)",
        "decoder-only and encoder-only; not encoder-decoder (T5)"),
    "mam": MethodInfo(
        MAMSettings, "hybrid", False,
        "Prefix tuning in attention plus a scaled parallel adapter beside the MLP (the paper's best combination).",
        HE_2022),
    "unipelt": MethodInfo(
        UniPELTSettings, "hybrid", False,
        "LoRA + prefix + adapter, each behind a learned gate that picks what helps per input.",
        "Mao et al. 2022, UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning "
        "(arXiv:2110.07577)"),
}


# --------------------------------------------------------------------------- checking a recipe

def split_name(spec: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """``{"name": n, **settings}`` → (n, settings); ``where`` (e.g. "recipe.yaml: method entry")
    names the entry in the error when there is no name."""
    settings = dict(spec)
    name = settings.pop("name", None)
    if not name:
        raise RecipeError(f"{where} {spec!r} has no 'name'")
    return name, settings


def lookup(table: dict[str, Any], name: str, kind: str, where: str = "") -> Any:
    """``table[name]``; an unknown name is an error (prefixed by ``where``, e.g. "recipe.yaml:3:9: ")
    that suggests the closest one and lists them all."""
    if not isinstance(name, str):
        raise RecipeError(f"{where}the {kind} name must be a string, got {type(name).__name__} {name!r:.60}")
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{where}unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(table))}")
    return table[name]


def entry_place(source: str, marks: dict | None) -> str:
    """``"file:line:column: "`` of a recipe entry, or ``"file: "`` when the marks do not place it."""
    at = (marks or {}).get(("name",)) or (marks or {}).get(())
    return f"{at or source}: "


def validated(model: type[BaseModel], settings: dict[str, Any], source: str, context: str,
              marks: dict | None = None) -> BaseModel:
    """``settings`` validated by ``model``; errors name the file (at the field's line and column
    where the entry's YAML ``marks`` give them), ``context`` (e.g. "method lora"), the field,
    the problem and a suggestion."""
    try:
        return model.model_validate(settings)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, model, source, marks, context=context)) from None


def method_info(name: str, where: str = "") -> MethodInfo:
    """The description of method ``name``; an unknown name suggests the closest one."""
    return lookup(METHOD_INFO, name, "method", where)


def parse_method(spec: dict[str, Any], source: str = "recipe", marks: dict | None = None) -> tuple[str, MethodConfig]:
    """``{"name": "lora", "r": 4}`` → ("lora", its validated ``LoraSettings``)."""
    name, settings = split_name(spec, f"{source}: method entry")
    info = method_info(name, entry_place(source, marks))
    return name, validated(info.settings, settings, source, f"method {name}", marks)


def check_combination(members: list[tuple[str, bool]], source: str) -> None:
    """Methods that can share one model: ``members`` are (name, wraps the model in a PeftModel),
    in recipe order. See ``composite.py``."""
    if len(members) < 2:
        raise RecipeError(f"{source}: a composition needs at least two methods")
    peft = [name for name, wraps in members if wraps]
    if len(peft) > 1:
        raise RecipeError(
            f"{source}: methods {', '.join(peft)} are all PEFT-based; leantune composes at most "
            f"one PEFT method (each wraps the whole model in its own PeftModel) with any number of its own "
            f"methods (adapter, compacter, bitfit, …). Use one of them, or express the rest with leantune's own")
    names = [name for name, _ in members]
    if len(set(names)) != len(names):
        raise RecipeError(f"{source}: method {sorted({n for n in names if names.count(n) > 1})} listed twice")


def validate_method_settings(specs: list[dict[str, Any]], source: str,
                             marks: list[dict] | None = None) -> list[dict[str, Any]]:
    """Validate every method entry and return them with defaults filled in; ``marks[i]`` (from
    the recipe's YAML) places entry i's keys at their line and column."""
    out = []
    for i, spec in enumerate(specs):
        name, config = parse_method(spec, source, marks[i] if marks else None)
        out.append({"name": name, **config.model_dump(mode="json")})
    if len(out) > 1:  # the combination (e.g. at most one PEFT-based method)
        check_combination([(m["name"], METHOD_INFO[m["name"]].peft) for m in out], source)
    return out
