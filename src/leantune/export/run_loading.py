"""Reload a finished run: the base model plus the trained method, ready to use."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..methods.base import Method
from ..methods.qlora import recorded_quantization
from ..methods.registry import build_method
from ..models.loading import load_model, load_tokenizer
from ..models.reference import resolve_base
from ..recipe import Recipe
from ..run_dir import read_run_files


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


def load_run(run_dir: str | Path, quantized: bool = True, base: str | Path | None = None) -> LoadedRun:
    """``quantized=False`` loads the base in full precision even for a QLoRA run (else under the
    quantization recorded beside its adapter); ``base``: the base model's name or folder, where the
    run does not find it by itself (:func:`~leantune.models.reference.resolve_base`)."""
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
    return LoadedRun(model, tokenizer, recipe, method, meta["head"], meta.get("labels"), run_dir,
                     meta.get("precision") or "fp32")
