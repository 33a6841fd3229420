"""The advisor's recipes: which model each approach runs on, how long it trains (optimizer
steps scaled to the examples, not a fixed number of epochs) and at what learning rate.

Few labelled examples need many passes: 64 examples at batch 8 are 8 steps an epoch, so
"3 epochs" is 24 steps, too few for a freshly initialised classification head. The recipes
train for ``epochs_for(n)`` passes (20 for a few dozen examples, falling to 3 for thousands)
and at least ``MIN_STEPS`` optimizer steps, with a 10 % warm-up and a linear decay.
"""
from __future__ import annotations

import math

from ..models.catalog import PACKAGED
from .model_shape import load_shape
from .situation import Situation

MIN_STEPS = 80
MAX_EPOCHS, MIN_EPOCHS = 20.0, 3.0
EXAMPLES_FOR_MIN_EPOCHS = 1600     # epochs = clamp(1600 / n, 3, 20): n ≤ 80 → 20, n ≥ 534 → 3
SMALL_MODEL = 400_000_000          # parameters below which full fine-tuning is cheap
FALLBACK_LM = "smollm2-135m"       # runs ICL and PET when the chosen model has no LM head
LM_APPROACHES = ("icl", "pet", "self_training")  # score label words through a masked- or causal-LM head

# stage an approach trains with, per data kind (None: the approach cannot read that kind)
STAGE_FOR_KIND = {"classification": "cls", "chat": "sft", "text": "pt", "preference": "dpo"}


def default_model(situation: Situation) -> str:
    return situation.model or ("minilm-l6" if situation.is_cls else "smollm2-135m")


def model_facts(model: str) -> tuple[tuple[str, ...], int | None, bool]:
    """(heads the model can run with, parameter count, is an encoder). The heads of a packaged
    model come from the catalog; otherwise from the config's ``architectures``: a
    ``…ForMaskedLM`` has a masked-LM head, ``…ForCausalLM``/``…LMHeadModel`` a causal one; a
    bare encoder (``BertModel``) or a classifier has neither."""
    shape = load_shape(model)
    if model in PACKAGED:
        return PACKAGED[model].heads, shape.params or None, shape.encoder
    archs = tuple(getattr(shape.config, "architectures", None) or ())
    heads = {"seq_cls"}
    for a in archs:
        if "MaskedLM" in a:
            heads.add("masked_lm")
        if "CausalLM" in a or "LMHead" in a or "ConditionalGeneration" in a:
            heads.add("causal_lm")
    if not archs and not shape.encoder:  # a decoder without recorded architectures: its LM head loads
        heads.add("causal_lm")
    if shape.encoder:
        heads.add("encoder")
    return tuple(sorted(heads)), shape.params or None, shape.encoder


def model_for(approach: str, situation: Situation) -> str | None:
    """The model the approach's recipe runs on: the situation's, or for ICL/PET the packaged
    causal LM when the situation's model has no LM head and none was asked for; None when the
    approach cannot run (a model was named and has no LM head)."""
    model = default_model(situation)
    if approach in LM_APPROACHES and situation.lm_head is False:
        return None if situation.model else FALLBACK_LM
    return model


def epochs_for(n: int) -> float:
    return max(MIN_EPOCHS, min(MAX_EPOCHS, EXAMPLES_FOR_MIN_EPOCHS / max(n, 1)))


def batch_for(n: int) -> int:
    return max(1, min(8, n // 4 or 1))


def steps_for(n: int, batch: int | None = None) -> int:
    """Optimizer steps for ``n`` training examples: ``epochs_for(n)`` passes, at least MIN_STEPS."""
    batch = batch or batch_for(n)
    return max(MIN_STEPS, math.ceil(epochs_for(n) * max(n, 1) / batch))


def max_length_for(situation: Situation) -> int:
    """The 95th percentile of the examples' tokens, rounded up to 64, within [64, cap]."""
    if situation.tokens_p95 is None:
        return min(256, situation.max_length_cap)
    return int(max(64, min(situation.max_length_cap, 64 * math.ceil(situation.tokens_p95 / 64))))


def lr_for(approach: str, situation: Situation) -> float:
    """Learning rate per method: whole-model updates small (1e-4 for small encoders, 2e-5 for
    larger or causal models), low-rank and bottleneck modules and prefixes ~1e-3 (their head
    trains too); for generation LoRA 2e-4, prefixes 5e-4."""
    small_encoder = bool(situation.encoder) and (situation.params or 0) < SMALL_MODEL
    if approach in ("full", "llrd"):
        return 1e-4 if small_encoder or (situation.encoder is None and situation.is_cls) else 2e-5
    if approach == "prefix_tuning":  # 1e-2 left MiniLM at chance on 20NG (loss ln 8 after 160 steps)
        return 1e-3 if situation.is_cls else 5e-4
    if approach in ("pet", "self_training", "adapter") or (situation.is_cls and approach in ("lora", "qlora")):
        return 1e-3
    return 2e-4


def recipe_for(approach: str, situation: Situation, data: str = "train.jsonl") -> dict | None:
    """A recipe dict for an approach; None when leantune has no stage for it (advice only) or it
    cannot run on this data or model."""
    model = model_for(approach, situation)
    if model is None:
        return None
    cls = situation.is_cls
    kind = situation.data_kind or ("classification" if cls else "chat")
    fmt = {"classification": "classification", "chat": None, "text": "text", "preference": "preference"}[kind]
    if kind == "chat" and situation.data_kind is None:
        fmt = "alpaca"
    n = situation.labelled or 100
    batch = batch_for(n)
    train = {"max_steps": steps_for(n, batch), "batch_size": batch, "lr": lr_for(approach, situation),
             "warmup_ratio": 0.1, "scheduler": "linear", "max_length": max_length_for(situation)}
    data_section = {"train": data, **({"format": fmt} if fmt else {})}
    base = {"model": model, "data": data_section, "train": train, "eval": {"before": False},
            "output": {"name": f"advise-{approach}"}}
    stage = STAGE_FOR_KIND[kind]
    if approach == "icl":
        if kind not in ("classification", "chat"):
            return None
        return {**base, "stage": {"name": "icl"}, "data": {**data_section, "shots": 4},
                "train": {k: v for k, v in train.items() if k in ("batch_size", "max_length")}}
    if approach in ("pet", "self_training"):
        if kind != "classification" or (approach == "self_training" and not situation.unlabelled):
            return None
        return {**base, "method": "lora", "stage": {"name": "pet", "verbalizer": "auto"},
                "data": {**data_section, **({"unlabeled": "keep"} if situation.unlabelled else {})}}
    if approach == "dpo":
        return {**base, "method": "lora", "stage": "dpo"} if kind == "preference" else None
    if approach == "continued_pretraining":
        text = data if kind == "text" else "unlabelled.jsonl"
        return {**base, "method": "lora", "stage": "pt", "data": {"train": text, "format": "text"}}
    if kind in ("text", "preference"):
        return None  # the training approaches below need labelled (chat or classification) data
    if approach in ("adapter", "prefix_tuning", "lora", "qlora", "full"):
        return {**base, "method": approach, "stage": stage}
    if approach == "llrd":
        return {**base, "method": [{"name": "full"}, {"name": "llrd", "decay": 0.9}], "stage": stage} if cls else None
    return None  # active_learning, replay, retrieval: advice without a recipe
