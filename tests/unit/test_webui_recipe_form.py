"""The Train tab's form and YAML stay in step, and validation says what the CLI says."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from leantune.errors import LeantuneError
from leantune.webui import recipe_form as rf

RECIPE = """\
model: smollm2-135m
method: {name: lora, r: 16, alpha: 32, targets: all-linear}
stage: sft
data: {train: data/train.jsonl, format: alpaca, template: plain}
train: {max_steps: 40, lr: 0.0002, save_steps: 10}
eval: {max_new_tokens: 32}
output: {name: shell-lora}
"""


def test_form_reads_the_recipe_and_defaults():
    values = rf.form_values(RECIPE)
    assert values["model"] == "smollm2-135m" and values["method"] == "lora" and values["stage"] == "sft"
    assert values["max_steps"] == 40 and values["lr"] == 2e-4 and values["run_name"] == "shell-lora"
    assert values["batch_size"] == 8 and values["device"] == "auto"  # the recipe's defaults where it is silent


def test_form_edits_keep_every_other_key():
    values = {**rf.form_values(RECIPE), "lr": "1e-3", "max_steps": 80, "eval_file": "data/eval.jsonl"}
    out = yaml.safe_load(rf.apply_form(RECIPE, values))
    assert out["train"] == {"max_steps": 80, "lr": 1e-3, "save_steps": 10}  # defaults left out stay out
    assert out["method"] == {"name": "lora", "r": 16, "alpha": 32, "targets": "all-linear"}  # settings kept
    assert out["data"]["template"] == "plain" and out["data"]["eval"] == "data/eval.jsonl"
    assert out["eval"] == {"max_new_tokens": 32}
    assert rf.form_values(rf.apply_form(RECIPE, values)) == {**values, "lr": 1e-3}  # the round trip is stable


def test_another_method_drops_the_old_ones_settings():
    out = yaml.safe_load(rf.apply_form(RECIPE, {**rf.form_values(RECIPE), "method": "bitfit"}))
    assert out["method"] == "bitfit"


def test_a_field_that_is_not_a_number_is_named():
    with pytest.raises(LeantuneError, match="batch size: 'eight' is not a number"):
        rf.apply_form(RECIPE, {**rf.form_values(RECIPE), "batch_size": "eight"})


def test_validation_gives_the_cli_message_naming_the_page_file(tmp_path):
    bad = RECIPE.replace("lr: 0.0002", "lr: -1")
    draft = tmp_path / "drafts" / "shell-lora.yaml"
    draft.parent.mkdir()
    with pytest.raises(LeantuneError) as page_error:
        rf.validate(bad, draft, "recipes/shell-lora.yaml")
    cli_file = tmp_path / "shell-lora.yaml"
    cli_file.write_text(bad)
    cli = subprocess.run([str(Path(sys.executable).parent / "leantune"), "train", str(cli_file)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2
    page = str(page_error.value)
    assert page.startswith("recipes/shell-lora.yaml:5:") and "train.lr" in page
    cli_text = " ".join((cli.stdout + cli.stderr).split())
    assert " ".join(page.replace("recipes/shell-lora.yaml", str(cli_file)).split()) in cli_text


def test_saved_recipe_path_is_named_after_the_run():
    assert rf.recipe_path(Path("recipes"), RECIPE) == Path("recipes/shell-lora.yaml")
    assert rf.recipe_path(Path("recipes"), "model: x\noutput: {name: ../../etc}\n").parent == Path("recipes")
