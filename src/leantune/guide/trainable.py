"""Trainable and total parameters of a method on a model, for the memory estimate: exact where the
method can be applied to the model built on the ``meta`` device (no memory, no weights read), else
closed forms per method; and what the causal-LM loss will do with the output head."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..methods.registry import build_method
from ..models.loading import count_parameters
from ..training.losses import fast_path, unwrap
from .model_shape import ModelShape, formula_block_linear, meta_model

# methods that train (some of) the base weights: those trainable tensors keep the weight dtype
BASE_TRAINING = {"full", "freeze", "bitfit", "ln_tuning", "llrd", "embedding"}
PROMPT_METHODS = {"prompt_tuning", "p_tuning"}  # PEFT prompt learning: the model computes its own loss


def method_names(method: list[dict]) -> list[str]:
    return [m["name"] for m in method]


@dataclass
class Counts:
    """Trainable and total parameters, and what the causal-LM loss will do with the output head."""

    trainable: int
    total: int
    source: str                      # meta (exact) | formula
    head_trains: bool = False        # the output projection's weight is trained
    tiled_loss: bool = True          # the engine's tiled cross-entropy applies (plain nn.Linear head)


_CACHE: dict[tuple, Counts] = {}
_CACHE_SIZE = 32


def count_trainable(shape: ModelShape, method: list[dict], head: str, num_labels: int = 2) -> Counts:
    """Applies the method to the meta model when possible, else closed forms. Remembered for the last
    few (shape, method, head) asked: searches over the batch size ask for the same counts many times."""
    key = (repr(shape), type(shape.config).__name__, json.dumps(method, sort_keys=True, default=str), head, num_labels)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _count_trainable(shape, method, head, num_labels)
    return replace(_CACHE[key])


def _count_trainable(shape: ModelShape, method: list[dict], head: str, num_labels: int = 2) -> Counts:
    names = set(method_names(method))
    if shape.config is not None:
        try:
            model = meta_model(shape.config, head, num_labels)
            built = build_method(method)
            built.set_total_steps(100)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.device("meta"):
                    model = built.apply(model, head)
            trainable, total = count_parameters(model)
            if trainable > 0:
                path = fast_path(unwrap(model)) if head == "causal_lm" else None
                out = path[1] if path else None
                return Counts(trainable, total, "meta",
                              head_trains=bool(out is not None and out.weight.requires_grad),
                              tiled_loss=type(out) is nn.Linear and not names & (PROMPT_METHODS | {"adalora"}))
        except Exception:
            pass
    trainable = formula_trainable(shape, method, head, num_labels)
    head_trains = "full" in names or any(m["name"] == "freeze" and m.get("train_head", True) for m in method)
    return Counts(trainable, shape.params + (0 if names & BASE_TRAINING else trainable), "formula",
                  head_trains=head_trains, tiled_loss=not names & (PROMPT_METHODS | {"adalora"}))


def formula_trainable(s: ModelShape, method: list[dict], head: str, num_labels: int = 2) -> int:
    """Closed forms per method (defaults of each method's config), summed over a composition."""
    h, L, kv = s.hidden, s.layers, s.kv_hidden
    head_params = (h * num_labels + (h * h if s.encoder else 0)) if head == "seq_cls" else 0
    total = 0
    for m in method:
        name = m["name"]
        r = int(m.get("r", 8))
        if name == "full":
            return s.params + head_params
        if name in ("lora", "qlora", "adalora"):
            shapes = [(h, h), (h, kv), (h, kv), (h, h)] + [(h, s.intermediate)] * (2 if s.gated_mlp else 1) \
                + [(s.intermediate, h)]
            n = L * sum(r * (a + b) for a, b in shapes)
            if m.get("dora"):
                n += L * sum(b for _, b in shapes)
            total += n + head_params
        elif name == "freeze":
            k = m.get("last_n_layers", 2) or 0
            total += int(formula_block_linear(s) / max(L, 1) * k) + (s.vocab * h if m.get("train_head", True) else 0)
        elif name == "bitfit":
            total += L * (4 * h + (2 if s.gated_mlp else 1) * s.intermediate + 4 * h) + head_params
        elif name in ("ln_tuning",):
            total += L * 2 * h * (2 if s.norm == "layer" else 1) + head_params
        elif name in ("prompt_tuning", "p_tuning"):
            total += int(m.get("num_virtual_tokens", 20)) * h + head_params
        elif name in ("prefix_tuning", "p_tuning_v2"):
            total += int(m.get("num_virtual_tokens", 20)) * L * 2 * kv + head_params
        elif name in ("adapter", "compacter", "adamix"):
            bott = max(1, int(h / float(m.get("reduction_factor", 16))))
            total += L * 2 * (2 * h * bott + bott + h) + head_params
        elif name == "ia3":
            total += L * (2 * kv + s.intermediate) + head_params
        else:  # unknown closed form: about LoRA r=8 on attention
            total += L * 4 * 8 * 2 * h + head_params
    return total
