"""Prompt tuning through PEFT: n trainable "soft prompt" vectors prepended to the input embeddings.

Lester, Al-Rfou & Constant 2021, The Power of Scale for Parameter-Efficient Prompt Tuning
(arXiv:2104.08691). The frozen model sees [P; E(x)] with P ∈ R^{n×d}; only P trains.
Initialised at random or from the embeddings of a text (e.g. a task description).

This module also holds what every PEFT prompt-learning method here shares (prompt
tuning, prefix tuning, P-tuning v1/v2): the heads they serve, saving in PEFT's format
(``adapter_config.json`` + ``adapter_model.safetensors``) and reloading.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from peft import PeftConfig, PromptTuningConfig, PromptTuningInit, get_peft_model
from torch import nn
from transformers import AutoTokenizer

from ..errors import MethodError
from ..recipe.method_settings import PromptTuningSettings
from .peft_backed import TASK_TYPES, PeftMethod
from .registry import register

# Heads PEFT's prompt learning serves: the virtual tokens are prepended (prompt tuning,
# P-tuning) or live in the attention cache (prefix tuning), and PEFT pads the labels
# accordingly for these task types only.
PROMPT_HEADS = {
    "masked_lm": "PEFT has no masked-LM task type for prompt learning: the virtual tokens would not be "
                 "fed to the model (task_type None) or would misalign the per-token MLM labels",
    "encoder": "a bare encoder has no loss for the virtual tokens to learn from",
}


def check_prompt_head(head: str, method: str) -> None:
    if head in PROMPT_HEADS or head not in TASK_TYPES:
        why = PROMPT_HEADS.get(head, f"PEFT prompt learning supports only the {sorted(TASK_TYPES)} heads")
        raise MethodError(
            f"method '{method}' cannot be used with a {head} head: {why}. "
            f"Use a causal_lm, seq2seq or seq_cls stage, or a method that does not add virtual tokens "
            f"(lora, ia3, ln_tuning, …)."
        )


def token_dim(model: nn.Module) -> int:
    cfg = model.config
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    raise MethodError(f"cannot tell the embedding size of {type(model).__name__}")


class PromptLearning(PeftMethod):
    """Shared apply/load of PEFT's prompt-learning tuners (never mergeable); saved as every
    PEFT method is (``PeftMethod.save``)."""

    family = "addition"
    mergeable = False

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        check_prompt_head(head, self.name)
        config = self.peft_config(model, head)
        try:
            return get_peft_model(model, config)
        except (ValueError, TypeError, KeyError) as exc:  # PEFT's own refusals, as a user error
            raise MethodError(f"method '{self.name}': PEFT cannot apply it to {type(model).__name__}: {exc}") from None

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        check_prompt_head(head, self.name)
        model = super().load(model, path, head)
        model.requires_grad_(False)  # PEFT leaves prompt encoders trainable even for inference
        return model


def model_tokenizer(model: nn.Module, method: str):
    """(path, tokenizer) of the folder the model was loaded from, for text initialisations."""
    source = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
    try:
        return source, AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise MethodError(
            f"method '{method}': init: text needs the model's tokenizer, which could not be loaded "
            f"from {source!r} ({type(exc).__name__}); use init: random"
        ) from None


@register
class PromptTuning(PromptLearning):
    name = "prompt_tuning"
    Config = PromptTuningSettings

    def peft_config(self, model: nn.Module, head: str) -> PeftConfig:
        cfg = self.config
        kwargs = {}
        if cfg.init == "text":
            source, _ = model_tokenizer(model, self.name)
            kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.init_text,
                      "tokenizer_name_or_path": source}
        return PromptTuningConfig(task_type=TASK_TYPES[head], num_virtual_tokens=cfg.num_virtual_tokens, **kwargs)


def backbone_takes_cache(model: nn.Module) -> bool:
    """True when the model (or its backbone) accepts ``past_key_values``, where PEFT puts the prefix."""
    candidates = [model, getattr(model, getattr(model, "base_model_prefix", ""), None)]
    return any(isinstance(m, nn.Module) and "past_key_values" in inspect.signature(m.forward).parameters
               for m in candidates)
