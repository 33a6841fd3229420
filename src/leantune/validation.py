"""Pydantic validation errors as sentences: ``file:line:column: field: problem``, with the
closest valid key for a misspelt one (also names other tools use, e.g. ``learning_rate``)."""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from .yaml_source import Marks, locate


# Names used by other tools (HF Trainer, PEFT) that spelling similarity cannot map to ours.
ALIASES = {
    "learning_rate": "lr", "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "target_modules": "targets", "use_dora": "dora", "use_rslora": "rslora", "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "scheduler", "max_seq_length": "max_length",
}


def _suggest(name: str, options: list[str]) -> str:
    if ALIASES.get(name) in options:
        return f" Did you mean {ALIASES[name]!r}?"
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    cls: Any = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        cls = field.annotation
    return list(cls.model_fields)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def format_validation_error(err: ValidationError, model_cls: type[BaseModel], source: str,
                            marks: Marks | None = None, context: str = "") -> str:
    """Turn pydantic errors into lines naming the field (with ``file:line:column`` where the
    YAML marks give it), the problem, and a suggestion; ``context`` precedes the field
    (e.g. "method lora: ")."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc)
        at = locate(marks, loc) if marks else None
        source_at = (at or source) + (f": {context.rstrip(': ')}" if context else "")
        if e["type"] == "extra_forbidden":
            hint = _suggest(str(loc[-1]), _fields_at(model_cls, loc))
            lines.append(f"{source_at}: unknown key '{where}'.{hint}")
        elif e["type"] == "literal_error":
            allowed = e.get("ctx", {}).get("expected", "")
            lines.append(f"{source_at}: {where}: got {_short(e.get('input'))}, allowed values: {allowed}")
        else:
            lines.append(f"{source_at}: {where}: {e['msg'].removeprefix('Value error, ')} (got {_short(e.get('input'))})")
    return "\n".join(lines)
