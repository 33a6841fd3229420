"""Name → class tables of plug-ins (methods, stages): registration, discovery, did-you-mean.

A package of plug-ins keeps one :class:`Registry`; each of its modules decorates its
classes with ``registry.register``. The classes are found by importing every module
of the package (``discover``), which a lookup does only after the name has been
checked against a torch-free table of the known names, so that a misspelt name is
reported, with the closest one, before any heavy library is imported.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from .errors import RecipeError

T = TypeVar("T")


def lookup(table: Mapping[str, Any], name: str, kind: str, where: str = "") -> Any:
    """``table[name]``; an unknown name is an error (prefixed by ``where``, e.g. "recipe.yaml:3:9: ")
    that suggests the closest one and lists them all."""
    if not isinstance(name, str):
        raise RecipeError(f"{where}the {kind} name must be a string, got {type(name).__name__} {name!r:.60}")
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{where}unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(table))}")
    return table[name]


class Registry(Generic[T]):
    """The classes of the modules of ``package``, by their ``name``.

    ``known`` is the table of every valid name (e.g. the settings table), checked before
    the package's modules are imported; ``kind`` ("method", "stage") names them in errors;
    ``describe`` is called on each class as it is registered (to fill in class attributes).
    """

    def __init__(self, kind: str, package: str, known: Mapping[str, Any],
                 describe: Callable[[type[T]], None] | None = None):
        self.kind = kind
        self.package = package
        self.known = known
        self.describe = describe
        self.classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: record ``cls`` under ``cls.name``."""
        if self.describe is not None:
            self.describe(cls)
        self.classes[cls.name] = cls
        return cls

    def discover(self) -> None:
        """Import every module of the package once: each registers its classes."""
        for info in pkgutil.iter_modules(importlib.import_module(self.package).__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> type[T]:
        """The class named ``name``; an unknown name is an error naming the closest one,
        raised before anything is imported."""
        lookup(self.known, name, self.kind)
        self.discover()
        return self.classes[name]

    def all(self) -> list[type[T]]:
        """Every class of the package, sorted by name."""
        self.discover()
        return [self.classes[k] for k in sorted(self.classes)]
