"""What every method run through PEFT shares: the wrapped model, PEFT's saved format, merging.

``apply`` wraps the base model in a PeftModel built from the method's ``peft_config``;
``save`` writes PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``),
which PEFT, vLLM and others load directly, with a ``base_model_name_or_path`` they can resolve
(:data:`~leantune.methods.delta.BASE_NAME`) and, for a classification head, ``labels.json``
(:func:`save_labels`; a ``config.json`` in the adapter folder would make transformers take it
for a whole model); ``load`` reads it back frozen; ``merge`` folds the update into the base
weights (for the methods whose math allows it).
"""
from __future__ import annotations

import json
from pathlib import Path

from peft import PeftConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from .base import Method
from .delta import base_name

# The task type PEFT gets for each head; heads not listed get None (PEFT's plain PeftModel).
TASK_TYPES = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS, "seq2seq": TaskType.SEQ_2_SEQ_LM}
LABELS_FILE = "labels.json"


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
        name_base(path, base_name(model))
        if any(c.task_type == TaskType.SEQ_CLS for c in model.peft_config.values()):
            save_labels(model.config, path)

    def load(self, model: nn.Module, path: Path, head: str) -> nn.Module:
        return PeftModel.from_pretrained(model, path, is_trainable=False)

    def merge(self, model: nn.Module) -> nn.Module:
        if not type(self).mergeable:  # e.g. prompt learning: the prompts are not weights
            return super().merge(model)
        return model.merge_and_unload()


def name_base(path: Path, name: str | None) -> None:
    """Write ``name`` as ``base_model_name_or_path`` of the saved adapter(s). After saving, not
    before: while saving, PEFT looks the base up by that name to compare vocabularies, which for
    a hub id would mean asking the hub."""
    for file in Path(path).rglob("adapter_config.json"):
        config = json.loads(file.read_text())
        config["base_model_name_or_path"] = name
        file.write_text(json.dumps(config, indent=2, sort_keys=True))


def save_labels(config, path: Path) -> None:
    """``labels.json``: the label names in class order. Given as ``id2label`` and ``label2id``
    (integer ids: JSON would make them strings), ``AutoPeftModelForSequenceClassification`` or
    transformers' ``AutoModelForSequenceClassification`` builds the head the adapter was trained on."""
    names = [str(config.id2label[i]) for i in range(len(config.id2label))]
    (Path(path) / LABELS_FILE).write_text(json.dumps(names, indent=2) + "\n")
