"""What both translations share: the recipe being built, the line for each key that does not map,
and the value conversions of the keys both tools spell alike (``validation.FOREIGN_KEYS``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...validation import FOREIGN_KEYS
from ...yaml_source import Marks

SECTIONS = ("model", "method", "stage", "data", "train", "eval", "output")
OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
              "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd"}
SCHEDULERS = ("linear", "cosine", "constant")
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")


class Unmapped(Exception):
    """A key whose value has no leantune equivalent; the message says why or what to do."""


@dataclass
class Translation:
    """A foreign config as a raw leantune recipe, with the keys that did not map, one line each."""

    tool: str
    recipe: dict[str, Any] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    marks: Marks = field(default_factory=dict)  # recipe field → where its source key is written


class Builder:
    """Fills a :class:`Translation` from a foreign config, key by key; every key is either set
    into the recipe or named with a reason, never dropped silently (null values mean unset)."""

    def __init__(self, tool: str, raw: dict[str, Any], marks: Marks, source: Path):
        self.raw, self.marks, self.source = raw, marks, source
        self.out = Translation(tool, {s: {} for s in SECTIONS})
        self.done: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (its default when absent or null), marking it as handled."""
        self.done.add(key)
        value = self.raw.get(key)
        return default if value is None else value

    def set(self, path: str, value: Any, key: str | None = None) -> None:
        """Set ``section.field`` of the recipe; ``key`` is the source key (its place is kept)."""
        section, name = path.split(".", 1)
        self.out.recipe[section][name] = value
        mark = self.marks.get((key,)) if key else None
        if mark:
            self.out.marks[(section, name)] = mark
        if key:
            self.done.add(key)

    def skip(self, key: str, why: str, value: Any = None) -> None:
        """Name ``key`` as not translated, with why or what to do instead."""
        self.done.add(key)
        shown = self.raw.get(key) if value is None else value
        self.out.unmapped.append(f"{key}: {_short(shown)} — {why}")

    def direct(self, key: str, convert: Callable[[Any], Any] | None = None) -> None:
        """Translate ``key`` to its FOREIGN_KEYS field, converting the value (``Unmapped``: name it)."""
        value = self.get(key)
        if value is None:
            return
        try:
            self.set(FOREIGN_KEYS[key], convert(value) if convert else value, key)
        except Unmapped as why:
            self.skip(key, str(why))

    def rest(self, no_effect: dict[str, str], converters: dict[str, Callable[[Any], Any]]) -> None:
        """Every key not handled yet: the shared ones by the table, the rest named with a reason."""
        for key, value in self.raw.items():
            if key in self.done or value is None:
                continue
            target = FOREIGN_KEYS.get(key, "")
            if key in no_effect:
                self.skip(key, no_effect[key])
            elif target.split(".")[0] in ("train", "eval", "output", "model") or target in (
                    "data.max_samples", "data.eval_split"):
                self.direct(key, converters.get(target))
            elif target.startswith("method."):
                self.skip(key, f"a LoRA setting; this config trains {self.out.recipe['method'].get('name')}")
            else:
                self.skip(key, "no leantune equivalent; left out")

    def result(self) -> Translation:
        recipe = self.out.recipe  # sections in the usual order, the method's and the stage's name first
        for section in ("method", "stage"):
            recipe[section] = dict(sorted(recipe[section].items(), key=lambda item: item[0] != "name"))
        self.out.recipe = {s: recipe[s] for s in SECTIONS if recipe[s]}
        return self.out


def choice(value: Any, options: Any) -> bool:
    """``value`` is one of the string ``options`` (a list or a mapping in its place is not)."""
    return isinstance(value, str) and value in options


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------- value conversions

def scheduler(value: Any) -> str:
    if choice(value, SCHEDULERS):
        return value
    raise Unmapped(f"leantune's schedulers are {', '.join(SCHEDULERS)}; set train.scheduler")


def optimizer(value: Any) -> str:
    if choice(value, OPTIMIZERS):
        return OPTIMIZERS[value]
    raise Unmapped(f"leantune's optimizers are {', '.join(sorted(set(OPTIMIZERS.values())))}; set train.optimizer")


def positive_steps(value: Any) -> Any:
    """``max_steps: -1`` (HF Trainer: no limit) is leantune's unset."""
    if isinstance(value, int) and value <= 0:
        raise Unmapped("no step limit: the epochs decide (leantune's default)")
    return value


def eval_fraction(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
        raise Unmapped("a count of examples; leantune holds out a fraction: set data.eval_split (0 … 1)")
    return value


def split_output_dir(b: Builder, key: str) -> None:
    """``saves/llama3-8b/lora/sft`` → output.dir ``saves/llama3-8b/lora``, output.name ``sft``."""
    value = b.get(key)
    if value is None:
        return
    path = Path(str(value))
    if path.name in ("", ".", ".."):
        b.set("output.dir", str(path), key)
        return
    b.set("output.dir", str(path.parent), key)
    b.set("output.name", path.name, key)


def precision(b: Builder) -> None:
    """``bf16``/``fp16`` (true, or axolotl's ``auto``) → train.precision."""
    for key in ("bf16", "fp16"):
        value = b.get(key)
        if value is True:
            b.set("train.precision", key, key)
        elif value == "auto":
            b.set("train.precision", "auto", key)
        elif value not in (None, False):
            b.skip(key, "expected true, false or auto; set train.precision")


def warmup_steps(b: Builder) -> None:
    """leantune warms up over a fraction of the steps: warmup_steps / max_steps when both are known."""
    steps = b.get("warmup_steps")
    if not steps:
        return
    total = b.raw.get("max_steps")
    if isinstance(steps, int) and isinstance(total, int) and total > 0:
        b.set("train.warmup_ratio", round(steps / total, 6), "warmup_steps")
    else:
        b.skip("warmup_steps", "leantune warms up over a fraction of the steps: set train.warmup_ratio")


def local_file(name: str, folders: list[Path]) -> Path | None:
    """``name`` as a file in the first of ``folders`` that has it (an absolute name as is)."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [folder / path for folder in folders]
    return next((p.resolve() for p in candidates if p.is_file()), None)


def trackers(value: Any) -> list[str]:
    """``report_to: none`` / ``wandb`` / ``[tensorboard, mlflow]`` → train.report_to."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list):
        raise Unmapped("expected a name or a list of names; set train.report_to")
    names = [n for n in names if n != "none"]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise Unmapped(f"leantune reports to {', '.join(TRACKERS)}; set train.report_to")
    return names


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "train.scheduler": scheduler, "train.optimizer": optimizer, "train.max_steps": positive_steps,
    "data.eval_split": eval_fraction, "train.report_to": trackers,
}
