"""Choosing the layers a method acts on: name patterns with per-architecture defaults, and
what a parameter's name says of it (its block, whether weight decay skips it)."""
from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import MethodError

# Linear projections inside the transformer blocks, per architecture (config.model_type).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "t5": ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"],
}

# Output heads are never LoRA targets by default.
HEAD_NAMES = ("lm_head", "classifier", "score", "cls", "pooler", "qa_outputs")

# Parameters whose names contain one of these (and every vector) are exempt from weight decay.
NO_DECAY_HINTS = ("bias", "norm", "ln_", "layernorm")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear / GPT-2 Conv1D in the model."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]


def _in_head(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def resolve_targets(model: nn.Module, targets: str | list[str], method: str) -> list[str]:
    """Turn ``auto``, ``all-linear`` or a list of patterns into matching layer names.

    A pattern matches a layer whose last name component equals it, or, if the
    pattern contains regex characters, whose full name matches it. A pattern
    that matches nothing is an error listing the model's linear layers.
    """
    linear = [n for n in linear_layer_names(model) if not _in_head(n)]
    if targets == "all-linear":
        chosen = linear
    else:
        if targets == "auto":
            model_type = getattr(getattr(model, "config", None), "model_type", "")
            patterns = DEFAULT_TARGETS.get(model_type)
            if patterns is None:
                chosen = linear
                patterns = []
        else:
            patterns = [targets] if isinstance(targets, str) else list(targets)
        if targets != "auto" or patterns:
            chosen, missing = [], []
            for pat in patterns:
                hits = [n for n in linear if _matches(n, pat)]
                if not hits and targets != "auto":
                    missing.append(pat)
                chosen += [h for h in hits if h not in chosen]
            if missing:
                raise MethodError(
                    f"method '{method}': target pattern(s) {missing} match no linear layer of this model. "
                    f"Its linear layers end in: {sorted({n.rsplit('.', 1)[-1] for n in linear})} "
                    f"(e.g. {linear[:3]})"
                )
    if not chosen:
        raise MethodError(f"method '{method}': no linear layers found to target in this model")
    return chosen


def _matches(name: str, pattern: str) -> bool:
    if re.fullmatch(r"[\w.]+", pattern):
        return name == pattern or name.endswith("." + pattern)
    return re.fullmatch(pattern, name) is not None


def layer_index(name: str) -> int | None:
    """The transformer block a parameter belongs to (``…layers.3.…`` → 3)."""
    m = re.search(r"\.(?:layers|layer|h|block)\.(\d+)\.", "." + name + ".")
    return int(m.group(1)) if m else None


def skips_weight_decay(name: str, p: nn.Parameter) -> bool:
    """Biases, norms and every other vector train without weight decay."""
    return p.ndim < 2 or any(h in name.lower() for h in NO_DECAY_HINTS)
