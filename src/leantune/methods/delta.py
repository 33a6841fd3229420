"""Saving methods that train a subset of the base weights (or add small modules of
their own) as a *delta*: ``delta_config.json`` + ``delta.safetensors``.

Only the trainable tensors are written, so a delta of a 135M model is a few MB.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import MethodError

CONFIG_FILE = "delta_config.json"
WEIGHTS_FILE = "delta.safetensors"
# attribute the model loader sets on a base model: the name other tools resolve it by (a hub id
# where there is one, else its folder); saved adapters record it as their base
BASE_NAME = "leantune_base_name"


def base_name(model: nn.Module) -> str | None:
    """The base model's name for other tools, seen through a PEFT wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, BASE_NAME, None) or getattr(inner, "name_or_path", None) or None


def trainable_state(model: nn.Module, names: list[str] | None = None) -> dict:
    """The trainable tensors, or exactly the tensors ``names`` (a method's own parameters)."""
    if names is not None:
        own = dict(model.named_parameters())
        missing = [n for n in names if n not in own]
        if missing:
            raise MethodError(f"parameters {missing[:5]} recorded by the method are no longer in the model")
        return {n: own[n].detach().contiguous().cpu() for n in names}
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_delta(model: nn.Module, path: Path, method: dict, names: list[str] | None = None) -> None:
    """``names``: save only these parameters (a method's own, so methods compose); default: all trainable."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model, names), path / WEIGHTS_FILE)
    meta = {"method": method, "base_model": base_name(model), "format": "leantune-delta"}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def load_delta(model: nn.Module, path: Path, expected: list[str] | None = None) -> None:
    """Copy the saved tensors into ``model``; with ``expected``, every one of them must be there."""
    state = load_file(Path(path) / WEIGHTS_FILE)
    if expected is not None and (absent := [k for k in expected if k not in state]):
        raise MethodError(f"{path / WEIGHTS_FILE}: tensors {absent[:5]} of this method are missing from the file")
    own = dict(model.named_parameters())
    unknown = [k for k in state if k not in own]
    if unknown:
        raise MethodError(f"{path / WEIGHTS_FILE}: tensors {unknown[:5]} do not exist in this model")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise MethodError(f"{path / WEIGHTS_FILE}: {k} has shape {tuple(v.shape)}, model has {tuple(own[k].shape)}")
        own[k].data.copy_(v)
