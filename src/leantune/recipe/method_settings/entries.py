"""Checking one recipe entry (a method's or a stage's): its name, its place in the file,
its settings against their pydantic model. Shared by ``method_settings`` and
``stage_settings``; no torch."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from ...errors import RecipeError
from ...validation import format_validation_error


def split_name(spec: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """``{"name": n, **settings}`` → (n, settings); ``where`` (e.g. "recipe.yaml: method entry")
    names the entry in the error when there is no name."""
    settings = dict(spec)
    name = settings.pop("name", None)
    if not name:
        raise RecipeError(f"{where} {spec!r} has no 'name'")
    return name, settings


def entry_place(source: str, marks: dict | None) -> str:
    """``"file:line:column: "`` of a recipe entry, or ``"file: "`` when the marks do not place it."""
    at = (marks or {}).get(("name",)) or (marks or {}).get(())
    return f"{at or source}: "


def validated(model: type[BaseModel], settings: dict[str, Any], source: str, context: str,
              marks: dict | None = None) -> BaseModel:
    """``settings`` validated by ``model``; errors name the file (at the field's line and column
    where the entry's YAML ``marks`` give them), ``context`` (e.g. "method lora"), the field,
    the problem and a suggestion."""
    try:
        return model.model_validate(settings)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, model, source, marks, context=context)) from None
