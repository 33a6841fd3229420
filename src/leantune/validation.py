"""Pydantic validation errors as sentences: ``file:line:column: field: problem``, with the
closest valid key for a misspelt one (also names other tools use, e.g. ``learning_rate``)."""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from .yaml_source import Marks, locate

# Keys of other tools (HF Trainer, PEFT, LLaMA-Factory, axolotl) → the recipe field that means the
# same. The hint of an unknown key reads it, and so does recipe/foreign/, which translates those
# tools' configs.
FOREIGN_KEYS = {
    "model_name_or_path": "model.name", "base_model": "model.name", "trust_remote_code": "model.trust_remote_code",
    "finetuning_type": "method.name", "adapter": "method.name",
    "rank": "method.r", "lora_rank": "method.r", "lora_r": "method.r", "lora_alpha": "method.alpha",
    "lora_dropout": "method.dropout", "lora_target": "method.targets", "lora_target_modules": "method.targets",
    "target_modules": "method.targets", "use_dora": "method.dora", "peft_use_dora": "method.dora",
    "use_rslora": "method.rslora", "peft_use_rslora": "method.rslora",
    "rl": "stage.name", "pref_beta": "stage.beta", "pref_loss": "stage.loss_type", "reward_model": "stage.reward",
    "dataset": "data.train", "datasets": "data.train", "eval_dataset": "data.eval", "template": "data.template",
    "chat_template": "data.template", "val_size": "data.eval_split", "val_set_size": "data.eval_split",
    "max_samples": "data.max_samples",
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "num_epochs": "train.epochs",
    "max_steps": "train.max_steps", "per_device_train_batch_size": "train.batch_size",
    "micro_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "lr_scheduler_type": "train.scheduler", "lr_scheduler": "train.scheduler", "warmup_ratio": "train.warmup_ratio",
    "weight_decay": "train.weight_decay", "max_grad_norm": "train.max_grad_norm", "cutoff_len": "train.max_length",
    "sequence_len": "train.max_length", "max_seq_length": "train.max_length", "bf16": "train.precision",
    "fp16": "train.precision", "optim": "train.optimizer", "optimizer": "train.optimizer",
    "gradient_checkpointing": "train.gradient_checkpointing", "torch_compile": "train.compile",
    "logging_steps": "train.logging_steps",
    "eval_steps": "train.eval_steps", "save_steps": "train.save_steps", "save_total_limit": "train.save_total_limit",
    "seed": "train.seed", "deepspeed": "train.deepspeed", "report_to": "train.report_to",
    "per_device_eval_batch_size": "eval.batch_size", "eval_batch_size": "eval.batch_size", "output_dir": "output.dir",
    "overwrite_output_dir": "output.overwrite",
}


def _suggest(name: str, options: list[str]) -> str:
    """The field ``name`` means: another tool's key (FOREIGN_KEYS) — its leaf inside the right
    section, its full path at the top — else the closest spelling."""
    target = FOREIGN_KEYS.get(name, "")
    if target and {"model", "method", "data", "train"} <= set(options):  # the recipe's top level
        return f" Did you mean {target!r} ({name} in other tools)?"
    if target and target.rpartition(".")[2] in options:
        return f" Did you mean {target.rpartition('.')[2]!r}?"
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
