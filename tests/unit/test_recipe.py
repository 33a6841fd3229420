"""The recipe: YAML loading, shorthands, overrides, and errors that say what to fix."""
from __future__ import annotations

import textwrap

import pytest
from typer.testing import CliRunner

from leantune.errors import LeantuneError, RecipeError
from leantune.recipe import Recipe, load_recipe


def write_yaml(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def recipe_error(*args, **kwargs) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(*args, **kwargs)
    err = info.value
    assert isinstance(err, LeantuneError) and err.exit_code == 2
    return err


# --------------------------------------------------------------------------- loading

def test_yaml_loads_with_every_default_filled(tmp_path):
    path = write_yaml(tmp_path, """
        model:
          name: some/model
        method:
          name: lora
          r: 4
        stage:
          name: sft
        data:
          train: train.jsonl
        train:
          lr: 0.001
    """)
    recipe = load_recipe(path)
    assert recipe.model.name == "some/model" and recipe.model.dtype == "auto"
    # the method entry gets every LoRA setting, the given one kept
    assert recipe.method == [{"name": "lora", "r": 4, "alpha": 16.0, "dropout": 0.0, "targets": "auto",
                              "dora": False, "rslora": False, "bias": "none"}]
    assert recipe.stage["name"] == "sft"
    assert recipe.data.train == "train.jsonl" and recipe.data.eval_split == 0.1 and recipe.data.template == "auto"
    assert recipe.train.lr == 0.001
    assert recipe.train.batch_size == 8 and recipe.train.epochs == 1.0 and recipe.train.precision == "auto"
    assert recipe.eval.max_new_tokens == 96 and recipe.output.dir == "runs"
    assert recipe.run_name == "sft-lora-model"
    # the filled recipe round-trips through its YAML form
    again = write_yaml(tmp_path, recipe.to_yaml(), "again.yaml")
    assert load_recipe(again) == recipe


def test_shorthands_expand(tmp_path):
    path = write_yaml(tmp_path, """
        model: tiny-model
        method: lora
        stage: sft
    """)
    recipe = load_recipe(path)
    assert recipe.model.name == "tiny-model"
    assert [m["name"] for m in recipe.method] == ["lora"] and recipe.method[0]["r"] == 8
    assert recipe.stage["name"] == "sft"


def test_minimal_recipe_gets_default_method_and_stage():
    recipe = load_recipe(raw={"model": "m"})
    assert recipe.method[0]["name"] == "lora" and recipe.stage["name"] == "sft"


def test_overrides_apply_before_validation(tmp_path):
    path = write_yaml(tmp_path, """
        model: m
        method: lora
    """)
    recipe = load_recipe(path, ["method.r=4", "train.lr=1e-4", "data.format=alpaca"])
    assert recipe.method[0]["name"] == "lora" and recipe.method[0]["r"] == 4
    assert recipe.train.lr == pytest.approx(1e-4) and isinstance(recipe.train.lr, float)
    assert recipe.data.format == "alpaca"
    # the file itself is untouched: without overrides the defaults come back
    assert load_recipe(path).method[0]["r"] == 8


def test_method_override_without_method_section_targets_the_default_method():
    recipe = load_recipe(raw={"model": "m"}, overrides=["method.r=4"])
    assert recipe.method[0]["name"] == "lora" and recipe.method[0]["r"] == 4


def test_override_switches_method_and_keeps_settings_of_new_one():
    recipe = load_recipe(raw={"model": "m", "method": "lora"}, overrides=["method.name=freeze",
                                                                           "method.last_n_layers=1"])
    assert recipe.method == [{"name": "freeze", "last_n_layers": 1, "patterns": [], "train_head": True}]


def test_override_needs_key_and_value():
    err = recipe_error(raw={"model": "m"}, overrides=["train.lr"])
    assert "key.path=value" in str(err)


# --------------------------------------------------------------------------- errors

def test_unknown_top_level_key(tmp_path):
    path = write_yaml(tmp_path, """
        model: m
        trian:
          lr: 0.1
    """)
    err = recipe_error(path)
    assert "unknown key 'trian'" in str(err) and "Did you mean 'train'" in str(err)
    assert str(path) in str(err)


def test_unknown_nested_key_suggests_the_real_name(tmp_path):
    path = write_yaml(tmp_path, """
        model: m
        train:
          learning_rate: 0.001
    """)
    msg = str(recipe_error(path))
    assert "unknown key" in msg and "train.learning_rate" in msg
    assert "Did you mean 'lr'" in msg


def test_unknown_nested_key_from_override():
    msg = str(recipe_error(raw={"model": "m"}, overrides=["train.learning_rate=1e-4"]))
    assert "unknown key" in msg and "Did you mean 'lr'" in msg


def test_misspelt_method_setting_suggests_it():
    msg = str(recipe_error(raw={"model": "m", "method": "lora"}, overrides=["method.rank=4"]))
    assert "unknown key 'rank'" in msg and "Did you mean 'r'" in msg and "lora" in msg
    msg = str(recipe_error(raw={"model": "m", "method": {"name": "lora", "alpah": 4}}))
    assert "Did you mean 'alpha'" in msg


def test_unknown_method_name_suggests_the_closest():
    msg = str(recipe_error(raw={"model": "m", "method": "lorra"}))
    assert "unknown method 'lorra'" in msg and "Did you mean 'lora'" in msg
    for name in ("full", "freeze", "lora", "qlora"):
        assert name in msg


def test_unknown_stage_name_suggests_the_closest():
    msg = str(recipe_error(raw={"model": "m", "stage": "stf"}))
    assert "unknown stage 'stf'" in msg and "Did you mean 'sft'" in msg


def test_out_of_range_value_names_field_and_value():
    msg = str(recipe_error(raw={"model": "m"}, overrides=["train.batch_size=0"]))
    assert "train.batch_size" in msg and "greater than 0" in msg and "got 0" in msg


def test_wrong_literal_lists_allowed_values():
    msg = str(recipe_error(raw={"model": "m"}, overrides=["train.precision=fp64"]))
    assert "train.precision" in msg and "'fp64'" in msg
    for allowed in ("auto", "fp32", "bf16", "fp16"):
        assert allowed in msg


def test_wrong_type_names_field():
    msg = str(recipe_error(raw={"model": "m"}, overrides=["train.lr=fast"]))
    assert "train.lr" in msg and "'fast'" in msg


def test_method_setting_out_of_range():
    msg = str(recipe_error(raw={"model": "m"}, overrides=["method.r=0"]))
    assert "method lora" in msg and "r" in msg and "greater than 0" in msg


def test_missing_model_is_reported():
    msg = str(recipe_error(raw={"train": {"lr": 0.1}}))
    assert "model" in msg and "required" in msg.lower()


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write_yaml(tmp_path, """
        model: m
        train:
          lr: 0.1
          batch_size: [1, 2
        eval:
          max_new_tokens: 4
    """)
    msg = str(recipe_error(path))
    assert msg.startswith(f"{path}:")
    line = int(msg[len(str(path)) + 1:].split(":", 1)[0])
    assert line in (4, 5, 6)  # the unclosed flow sequence opens on line 4; the parser notices it on 5-6
    assert "not valid YAML" in msg


def test_tab_indented_yaml_points_at_the_tab(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("model: m\ntrain:\n\tlr: 0.1\n")
    msg = str(recipe_error(path))
    assert msg.startswith(f"{path}:3:")


def test_recipe_must_be_a_mapping(tmp_path):
    path = write_yaml(tmp_path, "- model: m\n")
    assert "mapping" in str(recipe_error(path))


def test_missing_file(tmp_path):
    assert "not found" in str(recipe_error(tmp_path / "nope.yaml"))


def test_composing_two_peft_methods_is_refused():
    # composition itself is supported (tests/unit/test_composition.py); two PEFT wrappers are not
    msg = str(recipe_error(raw={"model": "m", "method": ["lora", "ia3"]}))
    assert "PEFT-based" in msg and "lora" in msg and "ia3" in msg


def test_recipe_schema_refuses_extra_keys_everywhere():
    """Every section forbids unknown keys (not only those the tests above try)."""
    for name, field in Recipe.model_fields.items():
        cls = field.annotation
        if isinstance(cls, type) and hasattr(cls, "model_config"):
            assert cls.model_config.get("extra") == "forbid", name


# --------------------------------------------------------------------------- CLI

def test_cli_train_with_bad_recipe_exits_2_without_run_dir(tmp_path, monkeypatch):
    from leantune.cli import app

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    write_yaml(tmp_path, f"""
        model: m
        data:
          train: train.jsonl
        train:
          learning_rate: 0.001
        output:
          dir: {runs}
    """, "bad.yaml")
    result = CliRunner().invoke(app, ["train", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    out = " ".join(result.output.split())  # rich may wrap long lines
    assert "unknown key" in out and "Did you mean 'lr'" in out and "bad.yaml" in out
    assert "Traceback" not in result.output
    assert not runs.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_cli_train_bad_override_exits_2(tmp_path, monkeypatch):
    from leantune.cli import app

    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path, "model: m\n", "ok.yaml")
    result = CliRunner().invoke(app, ["train", "ok.yaml", "train.precision=fp64"])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "train.precision" in out and "allowed values" in out
    assert not (tmp_path / "runs").exists()
