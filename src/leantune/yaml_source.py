"""Read a YAML file as the user wrote it: UTF-8 only, no duplicate keys, and the line and
column of every key kept, so that a later error can point at ``file:line:column``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError

Marks = dict[tuple, str]  # key path → where it is written: "file:line:column" (or "override …")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1}); "
                    f"the second one would silently replace the first", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)


MAX_NODES = 100_000  # a recipe is a few hundred values; aliases can make a small file expand without end


def expanded_size(data: Any) -> int:
    """Values in ``data`` counted as if every alias were written out; stops past ``MAX_NODES``
    (a self-referencing alias never ends, a "billion laughs" file grows exponentially)."""
    count, stack = 0, [data]
    while stack and count <= MAX_NODES:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _collect_marks(node: yaml.Node, path: tuple, marks: Marks, file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = path + (key,)
            marks[child] = f"{file}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
            _collect_marks(value_node, child, marks, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[path + (i,)] = f"{file}:{item.start_mark.line + 1}:{item.start_mark.column + 1}"
            _collect_marks(item, path + (i,), marks, file)


def read_yaml(path: Path) -> tuple[Any, Marks]:
    """(data, marks) of a YAML file; every problem is a ``RecipeError`` naming file:line:column."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder; give the recipe's .yaml file")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}); "
                          f"save the recipe as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        node = yaml.compose(text, Loader=yaml.SafeLoader) if data is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{path}: not a usable recipe: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RecipeError(f"{path}: not a usable recipe: {exc}") from None
    if expanded_size(data) > MAX_NODES:
        raise RecipeError(f"{path}: not a usable recipe: it expands to more than {MAX_NODES:,} values "
                          f"(YAML aliases that refer to themselves or repeat each other)")
    marks: Marks = {}
    if node is not None:
        _collect_marks(node, (), marks, str(path))
    return data, marks


def locate(marks: Marks, loc: tuple) -> str | None:
    """Where the deepest key of ``loc`` that the marks name is written (``()``: the
    place of the whole mapping, when the file names none of them)."""
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in marks:
            return marks[tuple(loc[:n])]
    return None
