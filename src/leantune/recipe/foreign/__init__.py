"""Configs of other fine-tuning tools read as recipes: LLaMA-Factory and axolotl training YAML.

A config is recognised by its characteristic keys; what maps is translated into a raw recipe
(validated like any other, overrides applied after), and every key that does not map is named
with why or what to do instead (docs/foreign-configs.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...yaml_source import Marks
from . import axolotl, llamafactory
from .common import Builder, Translation

__all__ = ["Translation", "translate_foreign"]

TOOLS = (("LLaMA-Factory", llamafactory.is_llamafactory, llamafactory.translate),
         ("axolotl", axolotl.is_axolotl, axolotl.translate))


def translate_foreign(raw: dict[str, Any], marks: Marks, source: Path) -> Translation | None:
    """The translation of a LLaMA-Factory or axolotl config; None for anything else (a leantune recipe)."""
    for tool, recognises, translate in TOOLS:
        if recognises(raw):
            builder = Builder(tool, dict(raw), marks, source)
            translate(builder)
            return builder.result()
    return None
