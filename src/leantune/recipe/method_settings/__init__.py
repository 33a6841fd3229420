"""Every method's settings and description, without torch: a recipe is checked here
before any model library is imported.

``METHOD_INFO`` maps each method name to its settings class (the ``Config`` of the
method class, which ``registry.register`` gives the class together with the
description) and what ``leantune methods`` lists. ``validate_method_settings`` checks
a recipe's method entries and their combination (``composite.py``) from this package
alone; ``tests/unit/test_settings_torch_free.py`` keeps it in step with the classes.

The settings classes live by concern: ``config.py`` (their base), ``peft_methods.py``
(methods run through PEFT), ``own_methods.py`` (leantune's own), and ``entries.py``
(checking one recipe entry, shared with ``stage_settings``); every name is importable
from ``leantune.recipe.method_settings``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import RecipeError
from ...registry import lookup
from .config import ALL_ARCHITECTURES, Family, MethodConfig, NonLinearity
from .entries import entry_place, split_name, validated
from .own_methods import (
    AdaMixSettings,
    AdapterSettings,
    BitFitSettings,
    CompacterSettings,
    EmbeddingSettings,
    FreezeSettings,
    FullSettings,
    LLRDSettings,
    LSTSettings,
    MAMSettings,
    UniPELTSettings,
)
from .peft_methods import (
    AdaLoraSettings,
    IA3Settings,
    KronASettings,
    LNTuningSettings,
    LoraSettings,
    PrefixTuningSettings,
    PromptCount,
    PromptTuningSettings,
    PTuningSettings,
    PTuningV2Settings,
    QLoraSettings,
    TextInit,
)

__all__ = [  # every name importable from here, whichever file of this package defines it
    "ALL_ARCHITECTURES", "Family", "MethodConfig", "NonLinearity",
    "entry_place", "split_name", "validated",
    "AdaMixSettings", "AdapterSettings", "BitFitSettings", "CompacterSettings", "EmbeddingSettings", "FreezeSettings",
    "FullSettings", "LLRDSettings", "LSTSettings", "MAMSettings", "UniPELTSettings",
    "AdaLoraSettings", "IA3Settings", "KronASettings", "LNTuningSettings", "LoraSettings", "PrefixTuningSettings",
    "PromptCount", "PTuningSettings", "PTuningV2Settings", "PromptTuningSettings", "QLoraSettings", "TextInit",
    "MethodInfo", "METHOD_INFO", "PROMPT_ARCHITECTURES", "HE_2022",
    "method_info", "parse_method", "check_combination", "validate_method_settings",
]


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
