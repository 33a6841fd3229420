"""LLaMA-Factory and axolotl configs read as recipes (recipe/foreign/): each field of the real
example configs (tests/data/foreign/) against what the source file says, read back with plain
YAML; every key that does not map is named; the hint for those tools' flat keys; a leantune
recipe is left alone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from leantune.cli import app
from leantune.errors import RecipeError
from leantune.recipe import load_recipe
from leantune.recipe.foreign import translate_foreign
from leantune.yaml_source import read_yaml

FOREIGN = Path(__file__).parent.parent / "data" / "foreign"
LF_SFT = FOREIGN / "llamafactory" / "llama3_lora_sft.yaml"
LF_QLORA = FOREIGN / "llamafactory" / "qwen3_lora_sft_otfq.yaml"
AX_LORA = FOREIGN / "axolotl" / "lora-1b.yml"
AX_DPO = FOREIGN / "axolotl" / "instruct-dpo-lora-8b.yml"
ALPACA_ROW = {"instruction": "Say hi.", "input": "", "output": "Hi!"}

runner = CliRunner()


def _translate(path: Path):
    raw, marks = read_yaml(path)
    return translate_foreign(raw, marks, path)


def _unmapped_keys(translation) -> set[str]:
    return {line.split(":", 1)[0] for line in translation.unmapped}


def test_llamafactory_lora_sft_field_by_field():
    src = yaml.safe_load(LF_SFT.read_text())
    recipe = load_recipe(LF_SFT)
    method = recipe.method[0]
    assert recipe.model.name == src["model_name_or_path"] and recipe.model.trust_remote_code is True
    assert method["name"] == src["finetuning_type"] == "lora"
    assert method["r"] == src["lora_rank"]
    assert method["alpha"] == 2 * src["lora_rank"]  # LLaMA-Factory's default lora_alpha
    assert src["lora_target"] == "all" and method["targets"] == "all-linear"
    assert recipe.stage["name"] == src["stage"] == "sft"
    t = recipe.train
    assert (t.lr, t.epochs, t.batch_size, t.grad_accum) == (
        src["learning_rate"], src["num_train_epochs"], src["per_device_train_batch_size"],
        src["gradient_accumulation_steps"])
    assert (t.scheduler, t.warmup_ratio, t.max_length) == (src["lr_scheduler_type"], src["warmup_ratio"],
                                                           src["cutoff_len"])
    assert t.precision == "bf16" and src["bf16"] is True
    assert (t.logging_steps, t.save_steps, t.report_to) == (src["logging_steps"], src["save_steps"], [])
    assert f"{recipe.output.dir}/{recipe.output.name}" == src["output_dir"] and recipe.output.overwrite
    assert recipe.data.max_samples == src["max_samples"]
    assert recipe.data.template == "auto"  # llama3: the model's own template


def test_llamafactory_unmapped_keys_are_named_with_a_reason():
    translation = _translate(LF_SFT)
    assert translation.tool == "LLaMA-Factory"
    assert {"dataset", "template", "do_train", "ddp_timeout", "plot_loss", "preprocessing_num_workers",
            "dataloader_num_workers", "overwrite_cache", "save_only_model"} == _unmapped_keys(translation)
    lines = "\n".join(translation.unmapped)
    assert "dataset: identity — no dataset_info.json" in lines and "data.train=FILE" in lines
    assert "dataset: alpaca_en_demo — leantune trains on one file" in lines
    assert all(" — " in line for line in translation.unmapped)


def test_llamafactory_quantization_bit_4_is_qlora():
    src = yaml.safe_load(LF_QLORA.read_text())
    recipe = load_recipe(LF_QLORA)
    assert src["quantization_bit"] == 4 and recipe.method[0]["name"] == "qlora"
    assert recipe.method[0]["r"] == src["lora_rank"] and recipe.model.name == src["model_name_or_path"]


def test_axolotl_lora_field_by_field():
    src = yaml.safe_load(AX_LORA.read_text())
    recipe = load_recipe(AX_LORA)
    method, t = recipe.method[0], recipe.train
    assert recipe.model.name == src["base_model"]
    assert (method["name"], method["r"], method["alpha"], method["dropout"]) == (
        src["adapter"], src["lora_r"], src["lora_alpha"], src["lora_dropout"])
    assert method["targets"] == src["lora_target_modules"]
    assert recipe.stage["name"] == "sft"
    assert (t.lr, t.epochs, t.batch_size, t.grad_accum, t.max_length) == (
        src["learning_rate"], src["num_epochs"], src["micro_batch_size"], src["gradient_accumulation_steps"],
        src["sequence_len"])
    assert (t.scheduler, t.optimizer, t.warmup_ratio, t.weight_decay) == (
        src["lr_scheduler"], src["optimizer"], src["warmup_ratio"], src["weight_decay"])
    assert t.precision == "auto" and src["bf16"] == "auto"
    assert t.gradient_checkpointing is src["gradient_checkpointing"] is True
    assert recipe.data.eval_split == src["val_set_size"]
    assert Path(recipe.output.dir) / recipe.output.name == Path(src["output_dir"])
    translation = _translate(AX_LORA)
    assert translation.tool == "axolotl"
    assert {"datasets[0]", "eval_sample_packing", "special_tokens", "attn_implementation"} <= _unmapped_keys(
        translation)
    assert not {"lora_model_dir", "wandb_project", "resume_from_checkpoint"} & _unmapped_keys(translation)  # null
    assert t.packing is src["sample_packing"] is True and "sample_packing" not in _unmapped_keys(translation)


def test_axolotl_dpo_and_target_linear():
    src = yaml.safe_load(AX_DPO.read_text())
    recipe = load_recipe(AX_DPO)
    assert recipe.stage["name"] == src["rl"] == "dpo"
    assert src["lora_target_linear"] is True and recipe.method[0]["targets"] == "all-linear"
    assert recipe.method[0]["name"] == "lora" and recipe.train.max_length == src["sequence_len"]
    unmapped = _unmapped_keys(_translate(AX_DPO))
    assert {"load_in_8bit", "chat_template", "model_type", "datasets[0]"} <= unmapped
    assert src["sample_packing"] is False and not recipe.train.packing and "sample_packing" not in unmapped
    packed_dpo = translate_foreign({**src, "sample_packing": True}, {}, AX_DPO)
    assert "packing" not in packed_dpo.recipe.get("train", {})
    assert any(line.startswith("sample_packing: True — ") and "stage dpo" in line for line in packed_dpo.unmapped)


def test_llamafactory_dataset_info_resolves_local_files_and_formats(tmp_path, monkeypatch):
    """dataset_dir/dataset_info.json (relative to the working folder, as in LLaMA-Factory)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.json", "s.json", "m.json", "odd.json"):
        (data / name).write_text(json.dumps([ALPACA_ROW]))
    (data / "dataset_info.json").write_text(json.dumps({
        "plain": {"file_name": "a.json"},
        "share": {"file_name": "s.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
        "msgs": {"file_name": "m.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                          "assistant_tag": "assistant"}},
        "odd": {"file_name": "odd.json", "columns": {"prompt": "question", "response": "answer"}},
        "hub": {"hf_hub_url": "someone/some_data"},
    }))
    monkeypatch.chdir(tmp_path)
    base = {"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora"}
    expected = {"plain": ("a.json", "alpaca"), "share": ("s.json", "sharegpt"), "msgs": ("m.json", "messages")}
    for name, (file, fmt) in expected.items():
        t = translate_foreign({**base, "dataset": name}, {}, tmp_path / "c.yaml")
        assert (Path(t.recipe["data"]["train"]), t.recipe["data"]["format"]) == ((data / file).resolve(), fmt)
    for name, why in (("odd", "rename the columns"), ("hub", "someone/some_data"), ("nope", "not in")):
        t = translate_foreign({**base, "dataset": name}, {}, tmp_path / "c.yaml")
        assert "train" not in t.recipe.get("data", {})
        assert any(line.startswith(f"dataset: {name} — ") and why in line for line in t.unmapped), t.unmapped


def test_axolotl_local_datasets_and_their_types(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(ALPACA_ROW) + "\n")
    base = {"base_model": "m", "adapter": "lora"}
    cases = [({"type": "alpaca"}, "sft", "alpaca"), ({"type": "chat_template"}, "sft", "messages"),
             ({"type": "sharegpt"}, "sft", "sharegpt"), ({"type": "completion"}, "pt", "text")]
    for entry, stage, fmt in cases:
        t = translate_foreign({**base, "datasets": [{"path": "a.jsonl", **entry}]}, {}, tmp_path / "c.yml")
        assert (t.recipe["stage"]["name"], t.recipe["data"]["format"]) == (stage, fmt)
        assert Path(t.recipe["data"]["train"]) == (tmp_path / "a.jsonl").resolve()
    t = translate_foreign({**base, "datasets": [{"path": "a.jsonl", "type": "chatml.intel"}]}, {}, tmp_path / "c.yml")
    assert "format" not in t.recipe["data"] and any(line.startswith("datasets[0].type") for line in t.unmapped)


def test_overrides_apply_after_translation():
    recipe = load_recipe(LF_SFT, ["model.name=smollm2-135m", "train.lr=0.5", "method.r=4"])
    assert (recipe.model.name, recipe.train.lr, recipe.method[0]["r"]) == ("smollm2-135m", 0.5, 4)
    assert recipe.method[0]["alpha"] == 16  # the translated value stays


def test_a_bad_value_names_the_source_line(tmp_path):
    config = tmp_path / "lf.yaml"
    config.write_text("model_name_or_path: m\nstage: sft\nfinetuning_type: lora\nlearning_rate: -1\n")
    with pytest.raises(RecipeError, match=r"lf\.yaml:4:1: train\.lr"):
        load_recipe(config)


def test_a_stage_leantune_lacks_is_an_error(tmp_path):
    config = tmp_path / "kto.yaml"
    config.write_text("model_name_or_path: m\nstage: kto\nfinetuning_type: lora\n")
    result = runner.invoke(app, ["recipe", "convert", str(config)])
    assert result.exit_code == 2 and "stage 'kto' has no leantune equivalent" in result.output
    assert "Traceback" not in result.output


def test_a_leantune_recipe_is_untouched(tmp_path):
    raw = {"model": "m", "method": {"name": "lora", "r": 4}, "stage": "dpo", "train": {"lr": 0.001}}
    assert translate_foreign(raw, {}, tmp_path / "r.yaml") is None
    config = tmp_path / "r.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert load_recipe(config).model_dump() == load_recipe(raw=raw).model_dump()
    result = runner.invoke(app, ["recipe", "convert", str(config)])
    assert result.exit_code == 2 and "needs no conversion" in result.output


def test_convert_writes_a_recipe_that_loads_as_translated(tmp_path):
    out = tmp_path / "recipe.yaml"
    result = runner.invoke(app, ["recipe", "convert", str(AX_LORA), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "is written for axolotl; as a leantune recipe it reads:" in result.output
    assert "not translated" in result.output and "eval_sample_packing" in result.output
    written = yaml.safe_load(out.read_text())
    assert "base_model" not in written and written["method"]["r"] == 16
    assert load_recipe(out).model_dump() == load_recipe(AX_LORA).model_dump()
    again = runner.invoke(app, ["recipe", "convert", str(AX_LORA), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


@pytest.mark.parametrize("key, field", [
    ("learning_rate", "train.lr"), ("lora_rank", "method.r"), ("lora_r", "method.r"),
    ("lora_target", "method.targets"), ("num_train_epochs", "train.epochs"),
    ("per_device_train_batch_size", "train.batch_size"), ("cutoff_len", "train.max_length"),
    ("model_name_or_path", "model.name"), ("base_model", "model.name"), ("micro_batch_size", "train.batch_size"),
])
def test_flat_foreign_keys_get_the_recipe_field_as_hint(key, field):
    with pytest.raises(RecipeError) as err:
        load_recipe(raw={"model": "m", key: 1})
    assert f"unknown key '{key}'. Did you mean '{field}'" in str(err.value)


def test_foreign_key_inside_a_section_gets_the_field_name():
    with pytest.raises(RecipeError, match="Did you mean 'max_length'"):
        load_recipe(raw={"model": "m", "train": {"cutoff_len": 64}})
    with pytest.raises(RecipeError, match="Did you mean 'targets'"):
        load_recipe(raw={"model": "m", "method": {"name": "lora", "lora_target": "all"}})


def test_llamafactory_full_freeze_and_dpo_settings(tmp_path):
    base = {"model_name_or_path": "m", "deepspeed": "ds_z3_config.json"}
    full = translate_foreign({**base, "stage": "sft", "finetuning_type": "full", "lora_rank": 4}, {}, tmp_path)
    assert full.recipe["method"] == {"name": "full"} and full.recipe["train"]["deepspeed"] == "ds_z3_config.json"
    assert any(line.startswith("lora_rank: 4 — ") for line in full.unmapped)
    freeze = translate_foreign({**base, "finetuning_type": "freeze", "freeze_trainable_layers": 3}, {}, tmp_path)
    assert freeze.recipe["method"] == {"name": "freeze", "last_n_layers": 3}
    dpo = translate_foreign({**base, "stage": "dpo", "finetuning_type": "lora", "lora_rank": 16, "lora_target":
                             "q_proj,v_proj", "pref_beta": 0.2, "pref_loss": "ipo"}, {}, tmp_path)
    assert dpo.recipe["stage"] == {"name": "dpo", "beta": 0.2, "loss_type": "ipo"}
    assert dpo.recipe["method"] == {"name": "lora", "r": 16, "alpha": 32, "targets": ["q_proj", "v_proj"]}


def test_torch_compile_is_train_compile(tmp_path):
    lf = translate_foreign({"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora",
                            "torch_compile": True}, {}, tmp_path)
    ax = translate_foreign({"base_model": "m", "adapter": "lora", "torch_compile": True}, {}, tmp_path)
    assert lf.recipe["train"]["compile"] is ax.recipe["train"]["compile"] is True
    assert "torch_compile" not in " ".join(lf.unmapped + ax.unmapped)
