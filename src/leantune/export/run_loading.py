"""Reload a finished run: the base model plus the trained method, ready to use."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..methods.base import Method
from ..methods.registry import build_method
from ..models.loading import load_model, load_tokenizer, resolve_model_path
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


def load_run(run_dir: str | Path, quantized: bool = True) -> LoadedRun:
    """``quantized=False`` loads the base in full precision even for a QLoRA run."""
    run_dir = Path(run_dir)
    meta = read_run_files(run_dir)
    adapter = run_dir / "adapter"
    recipe = Recipe.model_validate(meta["recipe"])
    method = build_method(recipe.method)  # several entries: a Composite
    base_path = Path(meta["model_path"])
    if not base_path.is_dir():  # the model cache or folder moved: find the model by the name the recipe gave
        base_path = resolve_model_path(recipe.model.name)
    tokenizer = load_tokenizer(base_path, recipe.model.trust_remote_code)
    base = load_model(base_path, meta["head"], recipe.model.dtype, recipe.model.trust_remote_code,
                      method.load_kwargs() if quantized else {}, labels=meta.get("labels"),
                      pad_token_id=tokenizer.pad_token_id)
    model = method.load(base, adapter, meta["head"])
    return LoadedRun(model, tokenizer, recipe, method, meta["head"], meta.get("labels"), run_dir)
