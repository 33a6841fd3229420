"""Reload a finished run: the base model plus the trained method, ready to use."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..methods.base import Method
from ..methods.qlora import recorded_quantization
from ..methods.registry import build_method
from ..models.loading import load_model, load_tokenizer
from ..models.reference import resolve_base
from ..recipe import Recipe
from ..run_dir import read_run_files
from ..training.device import halve_frozen_weights, is_quantized, recorded_precision_on


@dataclass
class LoadedRun:
    model: nn.Module
    tokenizer: object
    recipe: Recipe
    method: Method
    head: str
    labels: list[str] | None
    run_dir: Path
    precision: str = "fp32"  # what the run trained and evaluated in (run.json), fp32 for older runs


def load_run(run_dir: str | Path, quantized: bool = True, base: str | Path | None = None,
             as_trained: bool = False) -> LoadedRun:
    """``quantized=False`` loads the base in full precision even for a QLoRA run (else under the
    quantization recorded beside its adapter); ``base``: the base model's name or folder, where the
    run does not find it by itself (:func:`~leantune.models.reference.resolve_base`);
    ``as_trained``: the frozen weights in the half type the run trained them in (``model_dtype``
    in run.json, for ``model.dtype: auto``), where this machine computes it natively, so that
    evaluation reproduces the run's own numbers (else fp32 on a CPU, as the default)."""
    run_dir = Path(run_dir)
    meta = read_run_files(run_dir)
    adapter = run_dir / "adapter"
    recipe = Recipe.model_validate(meta["recipe"])
    method = build_method(recipe.method)  # several entries: a Composite
    base_path = resolve_base(meta, run_dir, base)
    tokenizer = load_tokenizer(base_path, recipe.model.trust_remote_code)
    load_kwargs = {**method.load_kwargs(), **recorded_quantization(adapter)} if quantized else {}
    base_model = load_model(base_path, meta["head"], recipe.model.dtype, recipe.model.trust_remote_code,
                            load_kwargs, labels=meta.get("labels"), pad_token_id=tokenizer.pad_token_id)
    model = method.load(base_model, adapter, meta["head"])
    precision = meta.get("precision") or "fp32"
    if as_trained and recipe.model.dtype == "auto":
        _frozen_weights_as_trained(model, meta.get("model_dtype"), precision)
    return LoadedRun(model, tokenizer, recipe, method, meta["head"], meta.get("labels"), run_dir, precision)


HALF = {"bfloat16": (torch.bfloat16, "bf16"), "float16": (torch.float16, "fp16")}


def _frozen_weights_as_trained(model: nn.Module, model_dtype: str | None, precision: str) -> None:
    """Halve the frozen weights of a model ``load_model`` loaded in fp32, where the run trained
    with them in ``model_dtype`` and this machine computes that type natively. Trained are the
    parameters that require a gradient after loading and those of PEFT adapters, which carry
    the adapter's name in theirs."""
    half = HALF.get(model_dtype or "")
    device = next(model.parameters()).device
    if (half is None or half[1] != precision or recorded_precision_on(precision, device) != precision
            or is_quantized(model) or next(model.parameters()).dtype != torch.float32):
        return
    adapters = set(getattr(model, "peft_config", None) or ())
    trained = {id(p) for n, p in model.named_parameters() if p.requires_grad or adapters & set(n.split("."))}
    halve_frozen_weights(model, trained, half[0])
