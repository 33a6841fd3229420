"""What every method run through PEFT shares: the wrapped model, PEFT's saved format, merging.

``apply`` wraps the base model in a PeftModel built from the method's ``peft_config``;
``save`` writes PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``),
which PEFT, vLLM and others load directly; ``load`` reads it back frozen; ``merge``
folds the update into the base weights (for the methods whose math allows it).
"""
from __future__ import annotations

from pathlib import Path

from peft import PeftConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from .base import Method

# The task type PEFT gets for each head; heads not listed get None (PEFT's plain PeftModel).
TASK_TYPES = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS, "seq2seq": TaskType.SEQ_2_SEQ_LM}


def fan_in_fan_out(model: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight transposed (in × out): PEFT must be told."""
    return getattr(model.config, "model_type", "") == "gpt2"


class PeftMethod(Method):
    """A method whose ``apply`` wraps the model in PEFT's PeftModel; subclasses give
    ``peft_config`` and override only what differs."""

    def peft_config(self, model: nn.Module, head: str) -> PeftConfig:
        raise NotImplementedError

    def apply(self, model: nn.Module, head: str) -> nn.Module:
        return get_peft_model(model, self.peft_config(model, head))

    def save(self, model: nn.Module, path: Path) -> None:
        model.save_pretrained(path, safe_serialization=True)

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        return PeftModel.from_pretrained(model, path, is_trainable=False)

    def merge(self, model: nn.Module) -> nn.Module:
        if not type(self).mergeable:  # e.g. prompt learning: the prompts are not weights
            return super().merge(model)
        return model.merge_and_unload()
