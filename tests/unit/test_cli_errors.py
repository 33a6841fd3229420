"""The command line on bad input: exit code 2, a message naming the file, line and field
(or the recipe key), no traceback, and nothing left behind."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from leantune.cli import app
from leantune.models.catalog import PACKAGED

runner = CliRunner()

GOOD = {
    "alpaca": {"instruction": "Say hi.", "output": "Hi!"},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    "chatglm": {"content": "Hi", "summary": "Hello"},
    "prompt_completion": {"prompt": "Hi", "completion": "Hello"},
    "text": {"text": "Some plain text."},
    "classification": {"text": "great film", "label": "pos"},
}

# format → (bad row, the field the problem line must name, a fragment of the message)
BAD = {
    "alpaca": ({"instruction": "Say hi."}, "output", "missing"),
    "sharegpt": ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]},
                 "conversations[1].from", "'bot' is not one of"),
    "messages": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 5}]},
                 "messages[1].content", "must be a non-empty string, got int"),
    "chatglm": ({"content": "Hi"}, "summary", "missing"),
    "prompt_completion": ({"prompt": "Hi", "completion": "   "}, "completion", "got an empty string"),
    "text": ({"text": ["not", "a", "string"]}, "text", "got list"),
    "classification": ({"text": "meh", "label": ""}, "label", "got an empty string"),
}


def invoke(*args: str):
    # an 80-column console (what rich uses when output is piped): problem lines must stay whole
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "80"})


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, ["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def deep_tmp(tmp_path):
    """A long folder name: a path longer than a terminal line must not be wrapped."""
    folder = tmp_path / ("a-rather-long-folder-name-for-data-files-" * 2)
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------- data check

@pytest.mark.parametrize("fmt", list(BAD))
def test_data_check_bad_file_exits_2_with_file_line_field(fmt, deep_tmp):
    bad, field, fragment = BAD[fmt]
    ext = ".csv" if fmt == "classification" else ".jsonl"
    path = write_rows(deep_tmp / f"bad-{fmt}{ext}", [GOOD[fmt], bad, GOOD[fmt]])
    line = 3 if ext == ".csv" else 2  # the CSV header is line 1
    result = invoke("data", "check", path, "--format", fmt)
    assert result.exit_code == 2, result.output
    expected = f"{path}:{line}: {field}:"
    problem = [ln for ln in result.output.splitlines() if ln.startswith(expected)]
    assert len(problem) == 1, result.output
    assert fragment in problem[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("fmt", list(GOOD))
def test_data_check_good_file_exits_0(fmt, tmp_path):
    ext = ".csv" if fmt == "classification" else ".jsonl"
    path = write_rows(tmp_path / f"good{ext}", [GOOD[fmt]] * 3)
    result = invoke("data", "check", path, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert re.search(r"valid\s*│\s*3", result.output)
    assert "exact duplicates" in result.output


def test_data_check_problem_text_is_not_taken_for_markup(tmp_path):
    rows = [{"instruction": "a", "output": "b", "history": [["only one"]]},
            {"conversations": [{"from": "[/x]", "value": "hi"}, {"from": "gpt", "value": "a"}]}]
    alpaca = write_rows(tmp_path / "hist.jsonl", rows[:1])
    result = invoke("data", "check", alpaca, "--format", "alpaca")
    assert result.exit_code == 2
    assert f"{alpaca}:1: history[0]: must be a [user, assistant] pair, got a list of 1" in result.output
    sharegpt = write_rows(tmp_path / "roles.jsonl", rows[1:])
    result = invoke("data", "check", sharegpt, "--format", "sharegpt")
    assert result.exit_code == 2, result.output
    assert f"{sharegpt}:1: conversations[0].from: from '[/x]' is not one of" in result.output


def test_data_check_unknown_format_suggests(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [GOOD["alpaca"]])
    result = invoke("data", "check", path, "--format", "alpacca")
    assert result.exit_code == 2
    assert "Did you mean 'alpaca'?" in result.output


# --------------------------------------------------------------------------- train

def write_recipe(folder: Path, model: str, train_file: str, **sections) -> Path:
    raw = {
        "model": model,
        "method": "lora",
        "data": {"train": train_file, "format": "alpaca"},
        "train": {"max_steps": 2, "batch_size": 2, "precision": "fp32"},
        "output": {"dir": str(folder / "runs"), "name": "cli-run"},
    }
    for key, value in sections.items():
        base = raw.get(key)
        raw[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_train_bad_data_exits_2_and_leaves_no_run_dir(tiny_model_dir, deep_tmp):
    bad = write_rows(deep_tmp / "train.jsonl", [GOOD["alpaca"], BAD["alpaca"][0], {"output": "x"}])
    recipe = write_recipe(deep_tmp, str(tiny_model_dir("llama")), "train.jsonl")  # relative to the recipe
    result = invoke("train", recipe)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "2 invalid row(s)" in result.output
    assert f"{bad}:2: output: missing" in result.output
    assert f"{bad}:3: instruction: missing" in result.output
    assert "skip_invalid" in result.output
    assert "Traceback" not in result.output
    assert not (deep_tmp / "runs").exists()


def test_train_bad_recipe_key_suggests(tmp_path):
    recipe = write_recipe(tmp_path, "smollm2-135m", "train.jsonl", train={"epoch": 2})
    result = invoke("train", recipe)
    assert result.exit_code == 2
    assert "unknown key 'train.epoch'" in result.output
    assert "Did you mean 'epochs'?" in result.output
    assert not (tmp_path / "runs").exists()


def test_train_bad_override_key_suggests(tmp_path):
    recipe = write_recipe(tmp_path, "smollm2-135m", "train.jsonl")
    result = invoke("train", recipe, "train.bach_size=4")
    assert result.exit_code == 2
    assert "Did you mean 'batch_size'?" in result.output


def test_train_bad_method_setting_suggests(tmp_path):
    recipe = write_recipe(tmp_path, "smollm2-135m", "train.jsonl", method={"name": "lora", "alpah": 8})
    result = invoke("train", recipe)
    assert result.exit_code == 2
    assert "Did you mean 'alpha'?" in result.output


def test_train_unknown_model_lists_packaged_names(tmp_path):
    write_rows(tmp_path / "train.jsonl", [GOOD["alpaca"]] * 4)
    recipe = write_recipe(tmp_path, "no-such-model-xyz", "train.jsonl")
    result = invoke("train", recipe)
    assert result.exit_code == 2, result.output
    assert "no-such-model-xyz" in result.output
    for name in PACKAGED:
        assert name in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_train_missing_recipe_file(tmp_path):
    result = invoke("train", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "recipe file not found" in result.output


# --------------------------------------------------------------------------- listings

def test_models_lists_packaged_names():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    for name in PACKAGED:
        assert name in result.output  # whole, not cut off by a narrow terminal


def test_methods_lists_methods():
    result = invoke("methods")
    assert result.exit_code == 0, result.output
    names = re.findall(r"^│ (\w+)\s", result.output, flags=re.M)
    assert {"full", "freeze", "lora", "qlora"} <= set(names)


def test_stages_lists_stages():
    result = invoke("stages")
    assert result.exit_code == 0, result.output
    names = re.findall(r"^│ (\w+)\s", result.output, flags=re.M)
    assert {"sft", "pt", "cls"} <= set(names)
    assert "classification" in result.output and "alpaca" in result.output


def test_eval_of_an_icl_run_explains_there_is_no_model(tmp_path):
    run = tmp_path / "icl-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"recipe": {"stage": {"name": "icl"}}, "model_path": "x"}))
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 2, result.output
    assert "in-context-learning run" in result.output and "data.eval=FILE" in result.output
