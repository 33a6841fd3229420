"""LLaMA-Factory's training YAML (``llamafactory-cli train``) as a leantune recipe.

Field meanings and defaults follow LLaMA-Factory's ``hparams/`` (finetuning_args.py,
data_args.py) and ``data/dataset_info.json`` (README "Dataset format")."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import RecipeError
from .common import (
    CONVERTERS,
    Builder,
    Unmapped,
    choice,
    eval_fraction,
    local_file,
    precision,
    split_output_dir,
    warmup_steps,
)

STAGES = {"sft": "sft", "pt": "pt", "rm": "rm", "dpo": "dpo", "ppo": "ppo"}
FINETUNING = {"lora": "lora", "full": "full", "freeze": "freeze"}
# Keys LLaMA-Factory leaves out take its defaults, which differ from leantune's.
DEFAULTS = {"learning_rate": 5e-5, "num_train_epochs": 3.0, "cutoff_len": 2048}
# The columns and tags of dataset_info.json that leantune's formats read as they are.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                  "history": "history"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}
MESSAGES_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}
NO_EFFECT = {
    "do_train": "leantune train always trains", "plot_loss": "the run's report.md plots the loss",
    "preprocessing_num_workers": "leantune tokenizes in the training process",
    "dataloader_num_workers": "leantune batches in the training process",
    "overwrite_cache": "leantune keeps no tokenized-data cache", "save_only_model": "leantune checkpoints "
    "keep the optimizer state for --resume", "ddp_timeout": "set train.distributed.timeout_s (seconds, ≤ 7 days)",
    "resume_from_checkpoint": "use leantune train --resume", "quantization_method": "leantune quantizes with "
    "bitsandbytes (qlora)", "dataset_dir": "used to find the datasets",
}


def is_llamafactory(raw: dict[str, Any]) -> bool:
    """``model_name_or_path`` with ``finetuning_type`` or one of LLaMA-Factory's stages."""
    return "model_name_or_path" in raw and (
        "finetuning_type" in raw or choice(raw.get("stage"), ("sft", "pt", "rm", "ppo", "dpo", "kto")))


def translate(b: Builder) -> None:
    for key, value in DEFAULTS.items():
        b.raw.setdefault(key, value)
    b.set("model.name", b.get("model_name_or_path"), "model_name_or_path")
    stage = b.get("stage", "sft")
    if not choice(stage, STAGES):
        raise RecipeError(f"{b.source}: LLaMA-Factory stage {stage!r} has no leantune equivalent; leantune "
                          f"translates the stages {', '.join(STAGES)}")
    _stage(b, STAGES[stage])
    _method(b)
    _data(b, stage)
    precision(b)
    warmup_steps(b)
    split_output_dir(b, "output_dir")
    b.rest(NO_EFFECT, CONVERTERS)


def _stage(b: Builder, name: str) -> None:
    b.set("stage.name", name, "stage")
    if name == "dpo":
        b.direct("pref_beta")
        loss = b.get("pref_loss")
        if choice(loss, ("sigmoid", "hinge", "ipo")):
            b.set("stage.loss_type", loss, "pref_loss")
        elif loss is not None:
            b.skip("pref_loss", "not one of leantune's DPO losses (TRL's loss_type); set stage.loss_type")
    if name == "ppo":
        b.direct("reward_model")


def _method(b: Builder) -> None:
    kind = b.get("finetuning_type", "lora")
    if not choice(kind, FINETUNING):
        b.skip("finetuning_type", f"leantune translates {', '.join(FINETUNING)}; trains with LoRA instead")
        kind = "lora"
    bits = b.get("quantization_bit")
    if kind == "lora":
        if bits == 4:
            kind = "qlora"
        elif bits is not None:
            b.skip("quantization_bit", "leantune quantizes to 4 bits only (qlora); LoRA trains on the "
                                       "unquantized weights")
        rank = b.get("lora_rank", 8)
        b.set("method.r", rank, "lora_rank")
        alpha = b.get("lora_alpha")
        if alpha is not None or isinstance(rank, int):
            b.set("method.alpha", 2 * rank if alpha is None else alpha, "lora_alpha")  # LLaMA-Factory: 2 × rank
        b.direct("lora_dropout")
        targets = b.get("lora_target", "all")
        names = [str(t).strip() for t in (targets.split(",") if isinstance(targets, str) else
                                          targets if isinstance(targets, list) else [targets])]
        b.set("method.targets", "all-linear" if names == ["all"] else names, "lora_target")
        b.direct("use_dora")
        b.direct("use_rslora")
    elif kind == "freeze":
        layers = b.get("freeze_trainable_layers", 2)
        if isinstance(layers, int) and layers > 0:
            b.set("method.last_n_layers", layers, "freeze_trainable_layers")
        else:
            b.skip("freeze_trainable_layers", "leantune trains the last N blocks; set method.last_n_layers")
        if b.get("freeze_trainable_modules", "all") != "all":
            b.skip("freeze_trainable_modules", "leantune trains whole blocks; add method.patterns (regexes)")
    elif bits is not None:
        b.skip("quantization_bit", "quantized training is LoRA only (qlora)")
    b.set("method.name", kind, "finetuning_type")


def _data(b: Builder, stage: str) -> None:
    info_dir = str(b.get("dataset_dir", "data"))
    folders = [Path.cwd() / info_dir, b.source.parent / info_dir]  # LLaMA-Factory: relative to the working folder
    for key, field in (("dataset", "train"), ("eval_dataset", "eval")):
        names = [n.strip() for n in str(b.get(key) or "").split(",") if n.strip()]
        if not names:
            continue
        try:
            path, fmt = _dataset_file(names[0], folders, stage)
            b.set(f"data.{field}", str(path), key)
            if fmt:
                b.set("data.format", fmt, key)
        except Unmapped as why:
            b.skip(key, f"{why}; set data.{field}=FILE", names[0])
        for extra in names[1:]:
            b.skip(key, f"leantune trains on one file: join the files into one and set data.{field}", extra)
    template = b.get("template")
    if template is not None:
        b.set("data.template", "chatml" if template == "chatml" else "auto", "template")
        if template not in ("chatml",):
            b.skip("template", "leantune uses the model's own chat template (data.template: auto); set "
                               "data.template=chatml or plain to choose one", template)
    size = b.get("val_size")
    if size:
        try:
            b.set("data.eval_split", eval_fraction(size), "val_size")
        except Unmapped as why:
            b.skip("val_size", str(why))


def _dataset_file(name: str, folders: list[Path], stage: str) -> tuple[Path, str | None]:
    """A dataset_info.json entry → (its local file, the leantune format its columns fit)."""
    info_path = next((f / "dataset_info.json" for f in folders if (f / "dataset_info.json").is_file()), None)
    if info_path is None:
        raise Unmapped(f"no dataset_info.json in {' or '.join(str(f) for f in folders)}")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise Unmapped(f"{info_path} is not readable JSON ({err})") from None
    entry = info.get(name) if isinstance(info, dict) else None
    if not isinstance(entry, dict):
        raise Unmapped(f"not in {info_path}")
    if "file_name" not in entry:
        hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("script_url")
        raise Unmapped(f"a hub dataset ({hub}) that leantune does not download")
    path = local_file(str(entry["file_name"]), [info_path.parent])
    if path is None:
        raise Unmapped(f"{info_path.parent / str(entry['file_name'])} is not a file")
    return path, _format(entry, stage)


def _format(entry: dict[str, Any], stage: str) -> str | None:
    """The leantune format of an alpaca/sharegpt entry whose columns and tags fit one, else Unmapped."""
    columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
    if not (isinstance(columns, dict) and isinstance(tags, dict)):
        raise Unmapped("columns and tags must be mappings")
    if entry.get("ranking"):
        raise Unmapped("preference rows; leantune's preference format reads prompt, chosen, rejected: convert "
                       "the file")
    if entry.get("formatting", "alpaca") == "alpaca":
        if stage == "pt" and columns.get("prompt") == "text":
            return "text"
        if all(ALPACA_COLUMNS.get(k) == v for k, v in columns.items()):
            return "alpaca"
        raise Unmapped(f"columns {columns}: leantune's alpaca format reads instruction, input, output, system, "
                       f"history; rename the columns")
    messages = columns.get("messages", "conversations")
    effective = {**SHAREGPT_TAGS, **tags}  # tags left out take LLaMA-Factory's sharegpt defaults
    for fmt, wanted, field in (("sharegpt", SHAREGPT_TAGS, "conversations"), ("messages", MESSAGES_TAGS, "messages")):
        if messages == field and set(columns) <= {"messages", "system"} and effective == wanted:
            return fmt
    raise Unmapped(f"sharegpt columns {columns} and tags {tags}: leantune reads sharegpt (conversations of "
                   f"from/value) or messages (role/content); rename them")
