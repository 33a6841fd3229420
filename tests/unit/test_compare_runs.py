"""`compare_runs`: the table and charts of runs that exist already (finished or not), no training."""
from __future__ import annotations

import json

import pytest

from leantune.errors import OutputExists, RunStateError
from leantune.workflows.compare import compare_runs


def _run(folder, method="lora", stage="cls", eval_after=None, trainable=1000, finished=True):
    folder.mkdir(parents=True)
    recipe = {"model": {"name": "tiny"}, "method": [{"name": n} for n in method.split("+")], "stage": {"name": stage}}
    (folder / "run.json").write_text(json.dumps({"recipe": recipe, "model_path": "tiny", "head": "seq_cls"}))
    if finished:
        (folder / "summary.json").write_text(json.dumps({
            "name": folder.name, "method": method, "stage": stage, "trainable_params": trainable,
            "total_params": 50_000, "steps": 10, "wall_time_s": 12.5, "tokens_per_s": 300.0,
            "peak_memory_mb": 900.0, "memory_kind": "peak RSS", "estimate_mb": 850.0, "eval_after": eval_after}))
    return folder


@pytest.fixture
def runs(tmp_path):
    return [_run(tmp_path / "runs" / "lora", eval_after={"accuracy": 0.7, "loss": 0.5}, trainable=1000),
            _run(tmp_path / "runs" / "half", method="lora+llrd", finished=False),
            _run(tmp_path / "runs" / "full", method="full", eval_after={"accuracy": 0.8, "loss": 0.4},
                 trainable=50_000)]


def test_table_metric_order_and_statuses(tmp_path, runs):
    out = tmp_path / "cmp"
    result = compare_runs(runs, out)
    assert result.metric == "accuracy"  # accuracy ranks before loss among the metrics both runs have
    assert [r["variant"] for r in result.rows] == ["lora", "half", "full"]  # the order given
    assert [r["metric"] for r in result.rows] == [0.7, None, 0.8]
    assert [r["status"] for r in result.rows] == ["finished", "not finished", "finished"]
    assert [r["method"] for r in result.rows] == ["lora", "lora+llrd", "full"]  # the unfinished one's from run.json
    assert [r["trainable_params"] for r in result.rows] == [1000, None, 50_000]
    saved = json.loads((out / "compare.json").read_text())
    assert saved["metric"] == "accuracy" and not saved["lower_is_better"] and saved["rows"] == result.rows
    md = (out / "compare.md").read_text().splitlines()
    assert md[0] == "# Comparison (accuracy)"
    table = [line for line in md if line.startswith("| ") and not line.startswith("| variant")]
    assert table[0].startswith("| lora | 0.7000 | 1,000 | 12.5 |") and table[0].endswith("| finished |")
    assert table[1].startswith("| half |  |") and table[1].endswith("| not finished |")
    assert table[2].startswith("| full | 0.8000 | 50,000 |")
    assert {c.name for c in result.charts} == {"metric_vs_params.png", "metric_vs_time.png", "metric_vs_memory.png"}
    assert all(c.read_bytes()[:4] == b"\x89PNG" for c in result.charts)
    assert "![metric_vs_params](metric_vs_params.png)" in md


def test_loss_only_is_lower_is_better_and_rewrites_an_earlier_comparison(tmp_path):
    a = _run(tmp_path / "a", eval_after={"loss": 0.9})
    b = _run(tmp_path / "b", eval_after={"loss": 0.3})
    out = tmp_path / "cmp"
    compare_runs([a], out)
    result = compare_runs([a, b], out)  # an earlier comparison's folder is reused
    assert result.metric == "loss" and [r["metric"] for r in result.rows] == [0.9, 0.3]
    saved = json.loads((out / "compare.json").read_text())
    assert saved["lower_is_better"] and [r["variant"] for r in saved["rows"]] == ["a", "b"]
    assert "lower is better" in (out / "compare.md").read_text()


def test_a_folder_of_the_users_own_files_is_refused(tmp_path, runs):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExists, match="not an earlier comparison's output"):
        compare_runs(runs, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_runs_sharing_a_folder_name_get_unique_variant_names(tmp_path):
    dirs = [_run(tmp_path / where / "run", eval_after={"accuracy": acc})
            for where, acc in (("x", 0.1), ("y", 0.2), ("z", 0.3))]
    result = compare_runs(dirs, tmp_path / "cmp")
    assert [(r["variant"], r["metric"]) for r in result.rows] == [("run", 0.1), ("run-2", 0.2), ("run-3", 0.3)]
    named = compare_runs(dirs[:2], tmp_path / "cmp2", names=["base", "base"])
    assert [r["variant"] for r in named.rows] == ["base", "base-2"]


def test_folders_that_are_not_runs_are_refused_before_writing(tmp_path, runs):
    stray = tmp_path / "stray"
    stray.mkdir()
    with pytest.raises(RunStateError, match="no run.json"):
        compare_runs([runs[0], stray], tmp_path / "cmp")
    with pytest.raises(RunStateError, match="no such run folder"):
        compare_runs([tmp_path / "missing"], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
