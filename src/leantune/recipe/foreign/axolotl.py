"""axolotl's training YAML (``axolotl train``) as a leantune recipe.

Field meanings and defaults follow axolotl's ``utils/schemas/`` (config.py, peft.py,
training.py, datasets.py) and its docs "Dataset Formats"."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import RecipeError
from .common import CONVERTERS, Builder, choice, local_file, precision, split_output_dir, warmup_steps

# axolotl's `rl:` values leantune has, as (stage, DPO loss).
RL = {"dpo": ("dpo", None), "ipo": ("dpo", "ipo")}
# Keys axolotl leaves out take its defaults, which differ from leantune's.
DEFAULTS = {"lr_scheduler": "cosine", "micro_batch_size": 1}
TEMPLATES = {"chatml": "chatml", "tokenizer_default": "auto"}
NO_EFFECT = {
    "load_in_8bit": "leantune quantizes to 4 bits only (qlora); LoRA trains on the unquantized weights",
    "lora_model_dir": "to start from an adapter, give its leantune run directory as model.name",
    "eval_sample_packing": "leantune evaluates padded batches (the same loss)", "pad_to_sequence_len": "leantune pads "
    "each batch to its longest example", "tf32": "set by the GPU's defaults", "flash_attention": "leantune uses "
    "the model's default attention", "attn_implementation": "leantune uses the model's default attention",
    "dataset_prepared_path": "leantune keeps no tokenized-data cache", "special_tokens": "leantune uses the "
    "tokenizer's own special tokens", "evals_per_epoch": "set train.eval_steps (steps)",
    "saves_per_epoch": "set train.save_steps (steps)", "resume_from_checkpoint": "use leantune train --resume",
    "model_type": "leantune reads the architecture from the model's config", "tokenizer_type": "leantune loads "
    "the model's own tokenizer", "train_on_inputs": "set data.train_on_prompt",
    "loss_watchdog_threshold": "leantune stops on a non-finite loss", "loss_watchdog_patience": "leantune "
    "stops on a non-finite loss",
}


def is_axolotl(raw: dict[str, Any]) -> bool:
    """``base_model`` with ``adapter`` or a ``datasets`` list of ``{path, type}``."""
    datasets = raw.get("datasets")
    return "base_model" in raw and ("adapter" in raw or (isinstance(datasets, list) and any(
        isinstance(d, dict) and "path" in d for d in datasets)))


def translate(b: Builder) -> None:
    for key, value in DEFAULTS.items():
        b.raw.setdefault(key, value)
    b.set("model.name", b.get("base_model"), "base_model")
    stage = _stage(b)
    _method(b)
    _data(b, stage)
    template = b.get("chat_template")
    if template is not None:
        b.set("data.template", TEMPLATES[template] if choice(template, TEMPLATES) else "auto", "chat_template")
        if not choice(template, TEMPLATES):
            b.skip("chat_template", "leantune uses the model's own chat template (data.template: auto); set "
                                    "data.template=chatml or plain to choose one", template)
    reports = [name for key, name in (("wandb_project", "wandb"), ("use_tensorboard", "tensorboard"))
               if b.get(key) not in (None, False)]
    if reports:
        b.set("train.report_to", reports, "wandb_project" if "wandb" in reports else "use_tensorboard")
    if b.get("train_on_inputs") is True:
        b.set("data.train_on_prompt", True, "train_on_inputs")
    if b.get("sample_packing") is True:
        if stage in ("sft", "pt"):
            b.set("train.packing", True, "sample_packing")
        else:
            b.skip("sample_packing", f"leantune packs examples for sft and pt; stage {stage} pads each batch")
    precision(b)
    warmup_steps(b)
    split_output_dir(b, "output_dir")
    b.rest(NO_EFFECT, CONVERTERS)


def _stage(b: Builder) -> str:
    rl = b.get("rl")
    if rl is None:
        datasets = b.raw.get("datasets")
        completion = isinstance(datasets, list) and any(isinstance(d, dict) and d.get("type") == "completion"
                                                        for d in datasets)
        name = "pt" if completion else "sft"  # completion: the causal-LM loss on raw text
        b.set("stage.name", name)
        return name
    if not choice(rl, RL):
        raise RecipeError(f"{b.source}: axolotl rl: {rl!r} has no leantune equivalent; leantune translates "
                          f"rl: {', '.join(RL)} (and supervised fine-tuning without rl)")
    name, loss = RL[rl]
    b.set("stage.name", name, "rl")
    if loss:
        b.set("stage.loss_type", loss, "rl")
    beta = b.get("rl_beta")
    if beta is not None:
        b.set("stage.beta", beta, "rl_beta")
    return name


def _method(b: Builder) -> None:
    adapter = b.get("adapter")
    four_bit = b.get("load_in_4bit") is True
    if adapter is None:
        b.set("method.name", "full")
        if four_bit:
            b.skip("load_in_4bit", "quantized training is LoRA only: set adapter: qlora")
        return
    if not choice(adapter, ("lora", "qlora")):
        b.skip("adapter", "leantune translates the adapters lora and qlora; trains with LoRA instead")
    b.set("method.name", "qlora" if adapter == "qlora" or four_bit else "lora", "adapter")
    for key in ("lora_r", "lora_alpha", "lora_dropout", "peft_use_dora", "peft_use_rslora"):
        b.direct(key)
    modules = b.get("lora_target_modules")
    if b.get("lora_target_linear") is True:
        b.set("method.targets", "all-linear", "lora_target_linear")
    elif modules:
        b.set("method.targets", modules if isinstance(modules, list) else [str(modules)], "lora_target_modules")


def _data(b: Builder, stage: str) -> None:
    folders = [b.source.parent, Path.cwd()]
    for key, field in (("datasets", "train"), ("test_datasets", "eval")):
        entries = b.get(key) or []
        if not isinstance(entries, list):
            b.skip(key, f"expected a list of {{path, type}}; set data.{field}=FILE")
            continue
        for i, entry in enumerate(entries):
            where = f"{key}[{i}]"
            if i > 0:
                b.skip(where, f"leantune trains on one file: join the files into one and set data.{field}", entry)
                continue
            if not isinstance(entry, dict) or "path" not in entry:
                b.skip(where, f"expected {{path, type}}; set data.{field}=FILE", entry)
                continue
            path = local_file(str(entry["path"]), folders)
            if path is None:
                b.skip(where, f"{entry['path']} is not a local file (a hub dataset leantune does not download); "
                              f"set data.{field}=FILE", entry.get("path"))
                continue
            b.set(f"data.{field}", str(path), key)
            fmt, why = _format(entry, stage)
            if fmt:
                b.set("data.format", fmt, key)
            else:
                b.skip(f"{where}.type", why, entry.get("type"))


def _format(entry: dict[str, Any], stage: str) -> tuple[str | None, str]:
    """The leantune format of an axolotl dataset entry, or (None, why not)."""
    kind = entry.get("type")
    roles = entry.get("message_property_mappings") or {}
    extra = set(entry) - {"path", "type", "split", "ds_type", "field_messages", "message_property_mappings"}
    if extra:
        return None, f"options {', '.join(sorted(extra))} have no leantune equivalent; the format is detected"
    if kind == "alpaca":
        return "alpaca", ""
    if kind == "completion" and stage == "pt":
        return "text", ""
    if kind in ("chat_template", "sharegpt"):
        default = "conversations" if kind == "sharegpt" else "messages"
        field = entry.get("field_messages", default)
        if field == "messages" and roles in ({}, {"role": "role", "content": "content"}):
            return "messages", ""
        if field == "conversations" and (kind == "sharegpt" and not roles or roles == {"role": "from",
                                                                                        "content": "value"}):
            return "sharegpt", ""
    return None, ("leantune reads alpaca, sharegpt (conversations of from/value), messages (role/content) and "
                  "text; the format is detected from the rows")
