"""What an exported folder (a run's ``adapter/``, a merged model) carries beside its weights,
so that plain transformers / PEFT use it as the run did:

- the chat template training rendered with (``data.template``), saved with the tokenizer;
- ``generation_config.json`` with the decoding of the report's answers (causal LMs);
- a model card, ``README.md`` (Hugging Face model-card YAML header, then what the run did);
- the keys transformers 4.5x reads beside those 5.x writes: top-level ``rope_theta`` and
  ``rope_scaling`` beside ``rope_parameters``, a ``tokenizer_class`` 4.5x knows, the extra
  special tokens under their 4.5x name. Without them 4.57 finds no tokenizer, and a config
  with ``rope_parameters`` only loads with its default ``rope_theta`` (10000 instead of
  SmolLM2's 100000): wrong logits, no error (docs/export.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from transformers import GenerationConfig

from ..atomic import atomic_write_text
from ..data.templates import resolve_template
from ..evaluation.generate import ANSWER_SETTINGS, _stop_ids
from ..recipe import Recipe

# transformers 5 names the tokenizers-library class TokenizersBackend; 4.5x knows it as this
LEGACY_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
PIPELINE_TAGS = {"causal_lm": "text-generation", "seq_cls": "text-classification", "masked_lm": "fill-mask",
                 "seq2seq": "text2text-generation", "encoder": "feature-extraction"}
AUTO_CLASSES = {"causal_lm": "AutoModelForCausalLM", "seq_cls": "AutoModelForSequenceClassification",
                "masked_lm": "AutoModelForMaskedLM", "seq2seq": "AutoModelForSeq2SeqLM", "encoder": "AutoModel"}
GENERATIVE = ("causal_lm", "seq2seq")
# GenerationConfig settings used only when sampling: greedy decoding with any of them set does not save
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


def ship_folder(folder: Path, tokenizer, recipe: Recipe, head: str, *, merged: bool,
                run_dir: Path | None = None) -> None:
    """Complete ``folder`` (the weights already saved in it): template, decoding, legacy keys,
    model card. ``run_dir``: the run, whose ``eval.json`` gives the card its metrics if written."""
    folder = Path(folder)
    if head in GENERATIVE:
        save_tokenizer_with_template(folder, tokenizer, resolve_template(tokenizer, recipe.data.template))
    if head == "causal_lm":
        write_generation_config(folder, tokenizer, recipe.eval.max_new_tokens)
    write_legacy_keys(folder)
    atomic_write_text(folder / "README.md", model_card(folder, recipe, head, merged=merged, run_dir=run_dir))


def save_tokenizer_with_template(folder: Path, tokenizer, template: str) -> None:
    """Save ``tokenizer`` with ``template`` as its chat template (the tokenizer itself is left as it was)."""
    own = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = own


def write_generation_config(folder: Path, tokenizer, max_new_tokens: int) -> None:
    """The report's decoding (``ANSWER_SETTINGS``, its stop ids, ``eval.max_new_tokens``) as the
    folder's default, over the base model's ``generation_config.json`` where one is there."""
    path = folder / "generation_config.json"
    config = GenerationConfig.from_pretrained(folder) if path.is_file() else GenerationConfig()
    stop = _stop_ids(tokenizer)
    if not ANSWER_SETTINGS.get("do_sample"):  # the base's sampling defaults (Qwen: temperature 0.7, …) go
        config.update(**dict.fromkeys(SAMPLING_ONLY))
    config.update(**ANSWER_SETTINGS, max_new_tokens=max_new_tokens, eos_token_id=stop or None,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    config._from_model_config = False  # our settings, not defaults to re-derive from config.json
    config.save_pretrained(folder)


def legacy_config_keys(config: dict) -> dict:
    """transformers 4.5x's ``rope_theta`` / ``rope_scaling`` from 5.x's flat ``rope_parameters``."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:  # absent, or one entry per layer type
        return {}
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return {"rope_theta": rope["rope_theta"],
            "rope_scaling": None if scaling.get("rope_type", "default") == "default" else scaling}


def write_legacy_keys(folder: Path) -> None:
    """Add the keys transformers 4.5x reads to ``config.json`` and ``tokenizer_config.json``
    (5.x reads the folder as before: it prefers its own keys)."""
    config_file, tokenizer_file = folder / "config.json", folder / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        legacy = legacy_config_keys(config)
        if legacy:
            atomic_write_text(config_file, json.dumps({**config, **legacy}, indent=2, sort_keys=True) + "\n")
    if tokenizer_file.is_file():
        config = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        legacy = legacy_tokenizer_config(config)
        if legacy != config:
            atomic_write_text(tokenizer_file, json.dumps(legacy, indent=2, ensure_ascii=False) + "\n")


def legacy_tokenizer_config(config: dict) -> dict:
    """``tokenizer_config.json`` as 4.5x and 5.x both read it: a tokenizer class 4.5x knows, and
    the list of extra special tokens under its 4.5x name (4.5x expects a dict under 5.x's name)."""
    config = dict(config)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = LEGACY_TOKENIZER_CLASS
    if isinstance(config.get("extra_special_tokens"), list) and "additional_special_tokens" not in config:
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    return config


def base_reference(adapter: Path, recipe: Recipe) -> str:
    """The base model as the adapter names it (``adapter_config.json``), else the recipe's name."""
    config_file = adapter / "adapter_config.json"
    if config_file.is_file():
        name = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if name:
            return str(name)
    return recipe.model.name


def _metrics_table(run_dir: Path | None) -> list[str]:
    scores = run_dir / "eval.json" if run_dir else None
    if scores is None or not scores.is_file():
        return ["Written before the run's evaluation: see the run's `report.md` and `eval.json`."]
    data = json.loads(scores.read_text(encoding="utf-8"))
    before, after = data.get("before") or {}, data.get("after") or {}
    rows = [f"| {key} | {'' if before.get(key) is None else f'{before[key]:.4f}'} | {value:.4f} |"
            for key, value in after.items() if isinstance(value, (int, float))]
    return ["| metric | before | after |", "|---|---|---|", *rows] if rows else ["No metrics recorded."]


def _loading_lines(head: str, merged: bool, peft: bool, base: str) -> list[str]:
    auto = AUTO_CLASSES.get(head, "AutoModel")
    if merged:
        load = [f"from transformers import {auto}, AutoTokenizer", "",
                f'model = {auto}.from_pretrained("PATH")', 'tokenizer = AutoTokenizer.from_pretrained("PATH")']
    elif peft:
        load = ["from peft import PeftModel", f"from transformers import {auto}, AutoTokenizer", "",
                f'base = {auto}.from_pretrained("{base}")', 'model = PeftModel.from_pretrained(base, "PATH")',
                'tokenizer = AutoTokenizer.from_pretrained("PATH")']
    else:
        return ["This is a leantune delta, not a PEFT adapter: use it with `leantune chat RUN` / `leantune eval RUN`,",
                "or write a plain transformers folder with `leantune merge RUN OUT` where the method merges."]
    if head == "causal_lm":
        load += ["", 'messages = [{"role": "user", "content": "How do I count the lines of a file?"}]',
                 "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,",
                 '                                       return_tensors="pt")',
                 "out = model.generate(**inputs)  # generation_config.json: the decoding of the run's report",
                 'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    return ["```python", *load, "```"]


def model_card(folder: Path, recipe: Recipe, head: str, *, merged: bool, run_dir: Path | None = None) -> str:
    """A Hugging Face model card (https://huggingface.co/docs/hub/model-cards): YAML metadata, then
    the method, stage, data, metrics and how to load the folder."""
    adapter = run_dir / "adapter" if merged and run_dir else folder
    base = base_reference(adapter, recipe)
    methods = [m["name"] for m in recipe.method]
    stage = recipe.stage["name"]
    peft = (folder / "adapter_config.json").is_file()
    header = {"base_model": base, "library_name": "transformers" if merged else "peft" if peft else "leantune",
              "tags": ["leantune", *methods, stage], "pipeline_tag": PIPELINE_TAGS.get(head, head)}
    data, steps = recipe.data, recipe.train
    what = "A merged model (the trained method folded into the base weights)" if merged else "An adapter"
    train_file = Path(data.train).name if data.train else "(the stage's built-in data)"
    data_format = f" ({data.format})" if data.format else ""
    shipped = ", shipped with the tokenizer" if head in GENERATIVE else ""
    length = f"{steps.max_steps} steps" if steps.max_steps else f"{steps.epochs} epochs"
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {recipe.run_name}", "",
        f"{what} of `{base}` trained with leantune.", "",
        f"- method: {' + '.join(f'`{m}`' for m in methods)}",
        f"- stage: `{stage}` ({head})",
        f"- data: `{train_file}`{data_format}; chat template: `{data.template}`{shipped}",
        f"- training: {length}, learning rate {steps.lr}, max length {steps.max_length}",
        "", "## Evaluation", "", *_metrics_table(run_dir),
        "", "## Use", "", *_loading_lines(head, merged, peft, base),
    ]
    if head == "causal_lm":
        lines += ["", "`generation_config.json` holds the decoding of the run's report: "
                  + ", ".join(f"{k}={v}" for k, v in ANSWER_SETTINGS.items())
                  + f", max_new_tokens={recipe.eval.max_new_tokens}, stopping at the end-of-turn tokens."]
    return "\n".join(lines) + "\n"
