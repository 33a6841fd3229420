"""Which runs `leantune serve` was asked for, checked before any model loads (torch-free).

A run is named ``NAME=RUN`` or plain ``RUN`` (named after its folder), as vLLM's
``--lora-modules NAME=PATH``. Several runs share one base model in memory, so they must
be PEFT adapters of one kind (``adapter/adapter_config.json``) over the same base.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import LeantuneError
from ..recipe import Recipe
from ..run_dir import read_run_files

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass(frozen=True)
class RunSpec:
    name: str
    run_dir: Path
    recipe: Recipe
    model_path: str   # the base as the run names it (for messages)
    base_key: str     # what identifies the base's weights: their fingerprint, else the folder
    peft_type: str | None  # None: not a PEFT adapter (full fine-tuning, freeze, leantune's own deltas)


def parse_spec(text: str) -> tuple[str, Path]:
    """``NAME=RUN`` or ``RUN``; a path that exists as written wins over a split at ``=``."""
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        path = Path(path)
    else:
        path = Path(text)
        name = path.resolve().name
    if not NAME.match(name):
        raise LeantuneError(f"{text}: {name!r} is not a usable model name; give one with NAME=RUN "
                            f"(letters, digits and . _ : / -, starting with a letter or digit)")
    return name, path


def _peft_type(run_dir: Path) -> str | None:
    config = run_dir / "adapter" / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        return str(json.loads(config.read_text(encoding="utf-8"))["peft_type"])
    except (ValueError, KeyError, TypeError):
        raise LeantuneError(f"{config}: damaged (not the JSON PEFT writes, or no peft_type); "
                            f"train the run again") from None


def read_specs(texts: list[str]) -> list[RunSpec]:
    """Every run checked: a finished causal-LM run, unique names, and (for several) one base, one PEFT kind."""
    specs = []
    for text in texts:
        name, run_dir = parse_spec(text)
        meta = read_run_files(run_dir)
        if meta["head"] != "causal_lm":
            raise LeantuneError(f"{run_dir}: serve answers with generated text and needs a causal-LM run; "
                                f"this one has a {meta['head']} head")
        specs.append(RunSpec(name, run_dir, Recipe.model_validate(meta["recipe"]),
                             (meta.get("base_model") or {}).get("name") or meta["model_path"],
                             (meta.get("base_model") or {}).get("fingerprint") or meta["model_path"],
                             _peft_type(run_dir)))
    names = [s.name for s in specs]
    if duplicate := next((n for n in names if names.count(n) > 1), None):
        raise LeantuneError(f"two runs are named {duplicate!r}; name them apart with NAME=RUN")
    if len(specs) > 1:
        _check_shareable(specs)
    base = specs[0].recipe.model.name
    if base in names and specs[0].peft_type:
        raise LeantuneError(f"the run name {base!r} is the base model's name, which serves the base model; "
                            f"give the run another with NAME=RUN")
    return specs


def _base_loading(spec: RunSpec) -> tuple:
    """What decides how the base model is loaded: its folder, dtype and (QLoRA) 4-bit settings."""
    quantization = [(m.get("quant_type"), m.get("double_quant"), m.get("compute_dtype"))
                    for m in spec.recipe.method if m["name"] == "qlora"]
    return spec.base_key, spec.recipe.model.dtype, quantization


def _check_shareable(specs: list[RunSpec]) -> None:
    first = specs[0]
    for spec in specs:
        if spec.peft_type is None:
            methods = "+".join(m["name"] for m in spec.recipe.method)
            raise LeantuneError(
                f"{spec.run_dir}: its method ({methods}) changes the base weights themselves, so it cannot "
                f"share one base model with other runs; serve it alone (leantune serve {spec.run_dir}) "
                f"or merge it first")
        if _base_loading(spec) != _base_loading(first):
            raise LeantuneError(
                f"{spec.run_dir}: trained over {spec.model_path} ({spec.recipe.model.dtype}, methods "
                f"{'+'.join(m['name'] for m in spec.recipe.method)}) but {first.run_dir} over {first.model_path} "
                f"({first.recipe.model.dtype}, {'+'.join(m['name'] for m in first.recipe.method)}); one server "
                f"loads one base model one way: start one server per base model")
        if spec.peft_type != first.peft_type:
            raise LeantuneError(
                f"{spec.run_dir}: a {spec.peft_type} adapter, but {first.run_dir} holds a {first.peft_type} one; "
                f"PEFT keeps adapters of one kind on a model: start one server per kind")
