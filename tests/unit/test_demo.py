"""`leantune demo`'s orchestration (leantune/workflows/demo.py) on a tiny config-built model."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from leantune.data.loading import load_data
from leantune.data.paths import resolve_data_path
from leantune.errors import RecipeError
from leantune.stages.registry import build_stage
from leantune.workflows.demo import DemoSettings, held_out_questions, load_demo_recipe, print_report, run_demo

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _questions(spec: str) -> set[str]:
    lines = resolve_data_path(spec).read_text().splitlines()
    return {json.loads(line)["instruction"] for line in lines}


def test_demo_settings_and_recipe_overrides():
    recipe, settings = load_demo_recipe(["demo.questions=8", "train.lr=1e-4"])
    assert settings.questions == 8 and settings.shown == 3
    assert recipe.train.lr == 1e-4 and recipe.output.overwrite and not recipe.eval.prompts
    with pytest.raises(RecipeError):
        load_demo_recipe(["demo.nope=1"])


def test_held_out_questions_are_the_eval_split_drawn_by_seed():
    recipe, settings = load_demo_recipe([])
    _, eval_examples = load_data(recipe, build_stage(recipe.stage), None, lambda m: None)
    pairs = held_out_questions(eval_examples, settings)
    assert len(pairs) == settings.questions == 40
    assert pairs == held_out_questions(eval_examples, settings)          # fixed seed
    assert not {q for q, _ in pairs} & _questions(recipe.data.train)      # never trained on
    assert ("How do I find files larger than 100 MB under the current directory?",
            "find . -type f -size +100M") in held_out_questions(eval_examples, DemoSettings(questions=48))
    assert all(r and "`" not in r for _, r in pairs)


def test_run_demo_on_a_tiny_model(tiny_model_dir, tmp_path):
    said: list[str] = []
    result = run_demo([f"model={tiny_model_dir('llama')}", f"output.dir={tmp_path}", "train.max_steps=1",
                       "train.batch_size=2", "data.max_samples=4", "train.save_steps=null",
                       "demo.questions=3", "demo.shown=2", "demo.max_new_tokens=4", "demo.batch_size=2"],
                      say=said.append, progress=False)
    phases = [m.split("]", 1)[0] for m in said if m.startswith("[") and m[1].isdigit()]
    assert phases == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert f"{len(os.sched_getaffinity(0))} CPU core" in said[0]
    assert [s.question for s in result.before.items] == [s.question for s in result.after.items]
    assert len(result.after.items) == 3 and result.summary.steps == 1
    out = io.StringIO()
    print_report(result, Console(file=out, width=120))
    text = out.getvalue()
    assert "command accuracy on 3 held-out questions" in text
    assert text.count("reference command:") == 2 and "demo time:" in text
    saved = json.loads((tmp_path / "demo-lora-smollm2" / "command_accuracy.json").read_text())
    assert saved["before"] == result.before.rates and len(saved["questions"]) == 3


def test_demo_data_is_what_the_generator_writes(tmp_path):
    """The packaged data set is reproducible: tools/build_shell_help.py (outside the package)
    writes the same bytes, so the data and the facts that generate it cannot drift apart."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "tools" / "build_shell_help.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    packaged = root / "src" / "leantune" / "resources" / "demo"
    for name in ("shell_help_train.jsonl", "shell_help_eval.jsonl", "demo_prompts.json"):
        assert (tmp_path / name).read_bytes() == (packaged / name).read_bytes(), name
