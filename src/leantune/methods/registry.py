"""The method registry: every delta-tuning method behind one interface (``base.Method``),
found by name.

The names, settings and descriptions live in the torch-free ``settings`` table; a class
registered here gets its description from it. The mechanics (table, discovery of this
package's modules, did-you-mean errors) are the shared ``leantune.registry.Registry``.
"""
from __future__ import annotations

from typing import Any

from ..recipe.method_settings import METHOD_INFO, parse_method
from ..registry import Registry
from .base import Method
from .composite import Composite


def describe(cls: type[Method]) -> None:
    """Give ``cls`` what ``settings.METHOD_INFO`` says of its name (family, mergeable, summary,
    paper, architectures, and whether it wraps the model)."""
    info = METHOD_INFO[cls.name]
    cls.family, cls.mergeable, cls.summary, cls.paper = info.family, info.mergeable, info.summary, info.paper
    cls.architectures, cls.wraps_model = info.architectures, info.peft


REGISTRY: Registry[Method] = Registry("method", __package__, METHOD_INFO, describe)
METHODS: dict[str, type[Method]] = REGISTRY.classes
register = REGISTRY.register


def get_method_class(name: str) -> type[Method]:
    """The class of method ``name``; an unknown name is an error naming the closest one,
    raised before any method module (or torch) is imported."""
    return REGISTRY.get(name)


def build_method(spec: dict[str, Any] | list[dict[str, Any]], source: str = "recipe") -> Method:
    """``{"name": "lora", "r": 4}`` → a configured ``LoRA`` instance.

    A list of several entries gives a ``Composite`` applying each in turn.
    """
    if isinstance(spec, list):
        if len(spec) == 1:
            return build_method(spec[0], source)
        return Composite([build_method(s, source) for s in spec], source)
    name, config = parse_method(spec, source)
    return get_method_class(name)(config)


def list_methods() -> list[type[Method]]:
    return REGISTRY.all()
