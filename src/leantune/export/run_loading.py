"""Reload a finished run: the base model plus the trained method, ready to use."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import LeantuneError
from ..methods.registry import Method, build_method
from ..models.loading import load_model, load_tokenizer
from ..recipe import Recipe


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
    meta_file, adapter = run_dir / "run.json", run_dir / "adapter"
    if not meta_file.is_file():
        raise LeantuneError(f"{run_dir}: not a leantune run directory (no run.json)")
    meta = json.loads(meta_file.read_text())
    if not adapter.is_dir():
        stage = (meta.get("recipe") or {}).get("stage") or {}
        if (stage.get("name") if isinstance(stage, dict) else stage) == "icl":
            raise LeantuneError(
                f"{run_dir}: an in-context-learning run (stage icl) trains nothing, so there is no model to "
                f"load; evaluate again by running its recipe with new data: "
                f"leantune train {run_dir / 'recipe.yaml'} data.eval=FILE")
        raise LeantuneError(f"{run_dir}: the run has no adapter/ yet (did training finish? try --resume)")
    recipe = Recipe.model_validate(meta["recipe"])
    method = build_method(recipe.method)  # several entries: a Composite
    tokenizer = load_tokenizer(Path(meta["model_path"]), recipe.model.trust_remote_code)
    base = load_model(Path(meta["model_path"]), meta["head"], recipe.model.dtype, recipe.model.trust_remote_code,
                      method.load_kwargs() if quantized else {}, labels=meta.get("labels"),
                      pad_token_id=tokenizer.pad_token_id)
    model = method.load(base, adapter, meta["head"])
    return LoadedRun(model, tokenizer, recipe, method, meta["head"], meta.get("labels"), run_dir)
