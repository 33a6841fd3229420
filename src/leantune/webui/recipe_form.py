"""The Train tab's form: the recipe's main fields, kept in step with the YAML beside it.

The YAML is the recipe; the form edits a few of its keys and leaves every other key as
written. Validation is the CLI's own (``load_recipe`` on the file), so the page shows the
same messages, naming the recipe file, line and field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..errors import LeantuneError
from ..recipe import Recipe, load_recipe
from ..recipe.method_settings import METHOD_INFO
from ..recipe.stage_settings import STAGE_SETTINGS

METHODS = sorted(METHOD_INFO)
STAGES = sorted(STAGE_SETTINGS)
DEVICES = ["auto", "cpu", "cuda", "mps"]

# form field → (recipe section, key); the order of the form's inputs
FIELDS: list[tuple[str, str, str]] = [
    ("model", "model", "name"),
    ("method", "method", "name"),
    ("stage", "stage", "name"),
    ("train_file", "data", "train"),
    ("eval_file", "data", "eval"),
    ("format", "data", "format"),
    ("max_steps", "train", "max_steps"),
    ("epochs", "train", "epochs"),
    ("batch_size", "train", "batch_size"),
    ("lr", "train", "lr"),
    ("max_length", "train", "max_length"),
    ("device", "train", "device"),
    ("run_name", "output", "name"),
]
NUMBERS = {"max_steps": int, "epochs": float, "batch_size": int, "lr": float, "max_length": int}


def starter_yaml(model: str = "smollm2-135m", train_file: str = "data/train.jsonl") -> str:
    """A short LoRA SFT recipe to start from."""
    raw = {"model": model, "method": {"name": "lora", "r": 8, "alpha": 16}, "stage": "sft",
           "data": {"train": train_file}, "train": {"max_steps": 40, "batch_size": 4, "lr": 2e-4,
                                                     "max_length": 256, "save_steps": 10},
           "output": {"dir": "runs", "name": "my-run"}}
    return yaml.safe_dump(raw, sort_keys=False)


def parse_yaml(text: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise LeantuneError(f"recipe{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise LeantuneError("recipe: a recipe is a mapping of sections (model, method, data, …)")
    return raw


def _entry(raw: dict, section: str) -> dict:
    value = raw.get(section)
    if section == "method" and isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str):
        return {"name": value}
    return value if isinstance(value, dict) else {}


def form_values(text: str) -> dict[str, Any]:
    """The form's values read from the YAML (the default where the recipe leaves a key out)."""
    raw = parse_yaml(text)
    defaults = Recipe.model_fields
    values: dict[str, Any] = {}
    for field_name, section, key in FIELDS:
        entry = _entry(raw, section)
        value = entry.get(key)
        if value is None and section in ("train", "data", "output"):
            value = defaults[section].get_default(call_default_factory=True).model_dump().get(key)
        if value is None and section in ("method", "stage"):
            value = defaults[section].get_default(call_default_factory=True)
            value = (value[0] if isinstance(value, list) else value)["name"]
        values[field_name] = value
    return values


def apply_form(text: str, values: dict[str, Any]) -> str:
    """The YAML with the form's values written in; every other key kept as it was."""
    raw = parse_yaml(text)
    for field_name, section, key in FIELDS:
        value = values.get(field_name)
        if value in ("", None):
            value = None
        elif field_name in NUMBERS:
            try:
                value = NUMBERS[field_name](value)
            except (TypeError, ValueError):
                raise LeantuneError(f"{field_name.replace('_', ' ')}: {value!r} is not a number") from None
        if section == "model":
            old = raw.get("model")
            raw["model"] = ({**old, "name": value} if isinstance(old, dict) else value)
            continue
        if section in ("method", "stage"):
            entry = _entry(raw, section)
            if value is not None and entry.get("name") != value:  # another method: its settings go
                entry = {"name": value}
            if section == "method" and isinstance(raw.get("method"), list) and len(raw["method"]) > 1:
                raw["method"] = [entry, *raw["method"][1:]]
            else:
                raw[section] = entry if len(entry) > 1 else entry.get("name")
            continue
        entry = dict(raw.get(section) or {})
        default = Recipe.model_fields[section].get_default(call_default_factory=True).model_dump().get(key)
        if value is None:
            entry.pop(key, None)
        elif key in entry or value != default:  # a default the recipe leaves out stays out
            entry[key] = value
        if entry:
            raw[section] = entry
        else:
            raw.pop(section, None)
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def recipe_path(recipes_dir: Path, text: str) -> Path:
    """Where the page saves this recipe: ``recipes/<run name>.yaml``."""
    name = (_entry(parse_yaml(text), "output").get("name") or "recipe")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name)).strip(".-") or "recipe"
    return recipes_dir / f"{safe}.yaml"


def validate(text: str, path: Path, shown_as: str) -> Recipe:
    """``load_recipe`` on the text saved at ``path`` (the file training will read): the CLI's
    messages, with the file named as the page shows it."""
    parse_yaml(text)
    atomic_write_text(path, text)
    try:
        return load_recipe(path)
    except LeantuneError as exc:
        raise LeantuneError(str(exc).replace(str(path), shown_as)) from None
