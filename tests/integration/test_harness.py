"""``leantune eval RUN --harness``: lm-evaluation-harness on a short tiny-llama run, through a
local task written here (a YAML over a jsonl file); its accuracy against our own per-option
log-likelihoods of the same items; the message for a task whose data cannot be reached."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leantune.cli import app
from leantune.data.paths import resolve_data_path
from leantune.evaluation.forgetting import BUILTIN_PROBE, continuation_logprobs, probe_context, read_probe
from leantune.evaluation.harness import HARNESS_FILE, harness_model
from leantune.export.run_loading import load_run
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")
runner = CliRunner()

TASK = """task: mytask
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{options}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
HUB_TASK = """task: hubtask
dataset_path: leantune-absent/no-such-dataset
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{options}}"
doc_to_target: answer
"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "120"})


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("harness")
    items = read_probe(resolve_data_path(BUILTIN_PROBE))[:16]
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in items))
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "mytask.yaml").write_text(TASK.format(data=data, cache=folder / "datasets-cache"))
    (tasks / "hubtask.yaml").write_text(HUB_TASK)
    train_file = folder / "train.jsonl"
    train_file.write_text("".join(json.dumps({"instruction": it["question"], "output": it["options"][it["answer"]]})
                                  + "\n" for it in items))
    summary = train(load_recipe(raw={
        "model": str(tiny_model_dir("llama")), "method": "lora", "stage": "sft",
        "data": {"train": str(train_file), "format": "alpaca", "eval_split": 0.0},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "max_length": 96},
        "eval": {"batch_size": 4}, "output": {"dir": str(folder / "runs"), "name": "short"}}), progress=False)
    return Path(summary.run_dir), tasks, items


def test_harness_accuracy_equals_our_loglikelihoods(setup):
    run_dir, tasks, items = setup
    result = invoke("eval", run_dir, "--harness", "mytask", "--harness-include", tasks)
    assert result.exit_code == 0, result.output
    assert "mytask" in result.output and "acc_norm" in result.output
    scores = json.loads((run_dir / HARNESS_FILE).read_text())["results"]["mytask"]

    run = load_run(run_dir)
    pairs = [(probe_context(it["question"]), " " + o) for it in items for o in it["options"]]
    ll = continuation_logprobs(harness_model(run), run.tokenizer, pairs, batch_size=7)
    per_item = [(ll[4 * i: 4 * i + 4], it) for i, it in enumerate(items)]
    acc = sum(max(range(4), key=s.__getitem__) == it["answer"] for s, it in per_item) / len(items)
    acc_norm = sum(max(range(4), key=lambda j: s[j] / len(it["options"][j])) == it["answer"]
                   for s, it in per_item) / len(items)
    assert scores["acc,none"] == pytest.approx(acc, abs=1e-12)
    assert scores["acc_norm,none"] == pytest.approx(acc_norm, abs=1e-12)

    again = invoke("eval", run_dir, "--harness", "mytask", "--harness-include", tasks, "--limit", "4")
    assert again.exit_code == 2 and "--force" in again.output  # the results of the first call are kept
    assert json.loads((run_dir / HARNESS_FILE).read_text())["results"]["mytask"] == scores


def test_unreachable_task_is_one_paragraph(setup, tmp_path):
    run_dir, tasks, _ = setup
    out = tmp_path / "h.json"
    result = invoke("eval", run_dir, "--harness", "hubtask", "--harness-include", tasks, "--out", out)
    assert result.exit_code == 2
    assert "harness task 'hubtask'" in result.output and "--harness-include" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_harness_does_not_mix_with_metrics(setup):
    run_dir, tasks, _ = setup
    result = invoke("eval", run_dir, "--harness", "mytask", "--metrics", "rouge_l")
    assert result.exit_code == 2 and "--harness" in result.output
    alone = invoke("eval", run_dir, "--harness-include", tasks)
    assert alone.exit_code == 2 and "--harness TASKS" in alone.output
