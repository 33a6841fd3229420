"""The layer rule of docs/architecture.md, read from the source with ``ast``.

A module may import only from its own layer or below, the units (top-level packages
and modules) never import each other in a circle, and no
function-local import hides an edge: outside the faces (the CLI), a function-local
import is allowed only for a third-party package kept lazy on purpose, with a
``# lazy: why`` comment on its line.
"""
from __future__ import annotations

import ast
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "leantune"

# Top to bottom; a unit is a top-level package or module (a dotted path: the longest match wins).
LAYERS: list[tuple[str, list[str]]] = [
    ("faces", ["cli", "__main__", "serving", "webui"]),
    ("workflows", ["workflows"]),
    ("pipeline", ["pipeline"]),
    ("guide", ["guide"]),
    ("stages", ["stages"]),
    ("building blocks", ["alignment", "semisup", "transfer", "prompting", "evaluation", "export", "report"]),
    ("training", ["training"]),
    ("models", ["models"]),
    ("methods and data", ["methods", "data", "run_dir"]),
    ("recipe", ["recipe"]),
    ("base", ["validation", "registry", "crash", "quiet", "atomic", "yaml_source", "errors"]),
]
FACES = {"cli", "__main__"}
LAZY_MARK = "# lazy:"


@dataclass(frozen=True)
class Import:
    source: str      # dotted module inside the package, e.g. "stages.sft"
    target: str      # dotted module or package it names, e.g. "training.engine"
    line: int
    local: bool      # inside a function
    text: str        # the source line


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(root: Path, package: str) -> tuple[list[Import], list[tuple[str, int, str, str]]]:
    """Every import of a module of ``package`` (by its files under ``root``), and the
    function-local imports of other packages as (module, line, top-level name, line text)."""
    inner, outer = [], []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        local_ids = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                here = source.split(".") if source else []
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
                names = [f"{stem}.{a.name}".strip(".") for a in node.names] if not node.module else [stem]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                absolute = not (isinstance(node, ast.ImportFrom) and node.level)
                if absolute and name.split(".")[0] != package:
                    if id(node) in local_ids:
                        outer.append((source, node.lineno, name.split(".")[0], lines[node.lineno - 1]))
                    continue
                target = name.split(".", 1)[1] if absolute and "." in name else ("" if absolute else name)
                inner.append(Import(source, target, node.lineno, id(node) in local_ids, lines[node.lineno - 1]))
    return inner, outer


def unit_of(module: str, layers=LAYERS) -> str | None:
    units = [u for _, us in layers for u in us]
    matches = [u for u in units if module == u or module.startswith(u + ".")]
    return max(matches, key=len) if matches else None


def layer_index(unit: str, layers=LAYERS) -> int:
    return next(i for i, (_, units) in enumerate(layers) if unit in units)


def violations(root: Path, package: str = "leantune", layers=LAYERS, faces=FACES) -> list[str]:
    """Sentences for every breach of the layer rule in the package under ``root``."""
    inner, outer = package_imports(root, package)
    problems, edges = [], {}
    for imp in inner:
        src, dst = unit_of(imp.source, layers), unit_of(imp.target, layers)
        where = f"{imp.source.replace('.', '/')}.py:{imp.line}"
        if src is None:
            problems.append(f"{where}: module {imp.source} is in no layer")
            continue
        if dst is None:
            if imp.target:
                problems.append(f"{where}: imports {imp.target}, which is in no layer")
            continue
        if src == dst:
            continue
        if layer_index(dst, layers) < layer_index(src, layers):
            problems.append(f"{where}: {src} ({layers[layer_index(src, layers)][0]}) imports {imp.target} "
                            f"from a higher layer ({layers[layer_index(dst, layers)][0]})")
        if imp.local and src not in faces:
            problems.append(f"{where}: function-local import of {imp.target}; import it at the top")
        edges.setdefault(src, set()).add(dst)
    for source, line, name, text in outer:
        if unit_of(source, layers) in faces:
            continue
        where = f"{source.replace('.', '/')}.py:{line}"
        if name in sys.stdlib_module_names:
            problems.append(f"{where}: function-local import of the standard library ({name}); import it at the top")
        elif LAZY_MARK not in text:
            problems.append(f"{where}: function-local import of {name} without a '{LAZY_MARK} why' comment")
    problems += [f"units import each other in a circle: {' -> '.join(c)}" for c in _cycles(edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of units (depth-first search)."""
    found, done = [], set()

    def visit(node: str, path: list[str]):
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                if not any(set(cycle) == set(c) for c in found):
                    found.append(cycle)
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            visit(start, [start])
    return found


def test_every_module_is_in_a_layer():
    modules = {module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")} - {""}
    assert sorted(m for m in modules if unit_of(m) is None) == []


def test_imports_go_one_way():
    assert violations(PACKAGE) == []


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "leantune" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "leantune"


def test_a_planted_back_edge_fails(tmp_path):
    """The same checker on a copy of the package with one upward import added to the
    training loop, and on a small package with each kind of breach."""
    copy = tmp_path / "copy"
    for path in PACKAGE.rglob("*.py"):
        target = copy / "leantune" / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"))
    engine = copy / "leantune" / "training" / "engine.py"
    engine.write_text(engine.read_text() + "\nfrom ..pipeline import train  # planted\n")
    found = violations(copy / "leantune")
    assert any("training/engine.py" in p and "imports pipeline" in p and "higher layer" in p for p in found), found
    assert any("circle" in p and "training" in p and "pipeline" in p for p in found), found

    layers = [("top", ["top"]), ("low", ["low", "side"])]
    small = _plant(tmp_path / "small", {
        "__init__.py": "",
        "top.py": "from .low import f\n",
        "low.py": """\
            import json
            def f():
                from .top import g
                import os
                import numpy
                import yaml  # lazy: optional
                return json
            """,
        "side.py": "from . import low\n",
    })
    found = violations(small, layers=layers, faces=set())
    assert any(p.startswith("low.py:3: low (low) imports top from a higher layer") for p in found), found
    assert any(p.startswith("low.py:3: function-local import of top") for p in found), found
    assert any(p.startswith("low.py:4: function-local import of the standard library (os)") for p in found), found
    assert any(p.startswith("low.py:5: function-local import of numpy without") for p in found), found
    assert not any("yaml" in p for p in found), found
    assert any("circle" in p for p in found), found
    assert not any(p.startswith("side.py") for p in found), found   # same layer, downward: allowed


@pytest.mark.parametrize("module,unit", [("stages.sft", "stages"), ("recipe.method_settings.config", "recipe"),
                                         ("cli.runs", "cli"), ("errors", "errors"), ("workflows", "workflows")])
def test_unit_of_takes_the_longest_match(module, unit):
    assert unit_of(module) == unit
