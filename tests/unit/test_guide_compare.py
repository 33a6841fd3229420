"""`compare` on a tiny model: table, charts, resumability; and the run report's estimate line."""
from __future__ import annotations

import json

import pytest

from leantune.workflows.compare import compare

pytestmark = pytest.mark.usefixtures("torch_single_thread")

QA = [("What is the capital of France?", "Paris."), ("List files.", "ls -la"), ("Add two and two.", "4"),
      ("Say hello.", "Hello!"), ("Copy a file.", "cp a b"), ("Sky colour?", "Blue.")]


@pytest.fixture(scope="module")
def base_raw(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("cmp-data")
    rows = [{"instruction": q, "output": a} for q, a in QA]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return {
        "model": str(tiny_model_dir("llama")), "method": "lora", "stage": "sft",
        "data": {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl"), "format": "alpaca"},
        "train": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "eval_steps": 1, "save_steps": 1, "lr": 1e-3,
                  "precision": "fp32", "max_length": 64},
        "eval": {"batch_size": 4, "before": False},
    }


def test_compare_table_charts_and_resume(tmp_path, base_raw):
    out = tmp_path / "cmp"
    said: list[str] = []
    result = compare(base_raw, methods=["lora", "adapter", "prefix_tuning", "full", "nosuchmethod"], out_dir=out,
                     isolate=False, say=said.append)
    rows = {r["variant"]: r for r in result.rows}
    assert result.metric == "loss"
    for name in ("lora", "adapter", "prefix_tuning", "full"):
        assert rows[name]["status"] == "trained", rows[name]
        assert rows[name]["metric"] is not None and rows[name]["trainable_params"] > 0
        assert rows[name]["estimate_mb"] > 0
    assert rows["nosuchmethod"]["status"].startswith("failed")
    assert rows["full"]["trainable_params"] > rows["lora"]["trainable_params"]
    data = json.loads((out / "compare.json").read_text())
    assert len(data["rows"]) == 5 and data["lower_is_better"]
    md = (out / "compare.md").read_text()
    assert "| lora |" in md and "metric_vs_params.png" in md
    for png in ("metric_vs_params.png", "metric_vs_time.png", "metric_vs_memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the run report of each variant: curves, estimate beside the measured peak
    report = (out / "runs" / "lora" / "report.md").read_text()
    assert "memory estimated before training:" in report and "measured" in report
    assert "![loss](loss.png)" in report and "![metrics](metrics.png)" in report
    assert (out / "runs" / "lora" / "metrics.png").is_file()
    summary = json.loads((out / "runs" / "lora" / "summary.json").read_text())
    assert summary["estimate"]["components"]["activations"] > 0

    # resumable: finished runs are skipped; a run with only checkpoints continues
    import shutil

    (out / "runs" / "adapter" / "summary.json").unlink()
    assert list((out / "runs" / "adapter" / "checkpoints").iterdir())
    shutil.rmtree(out / "runs" / "full")
    again = {r["variant"]: r["status"] for r in compare(base_raw, methods=["lora", "adapter", "full"], out_dir=out,
                                                          isolate=False).rows}
    assert again == {"lora": "skipped (finished)", "adapter": "resumed", "full": "trained"}


def test_compare_stages_and_estimate_failure_does_not_break_training(tmp_path, base_raw, monkeypatch):
    import leantune.guide.estimate as guide_estimate

    def boom(*a, **k):
        raise RuntimeError("estimator broke")

    monkeypatch.setattr(guide_estimate, "estimate_recipe", boom)  # the name the pipeline's estimate calls
    result = compare(base_raw, stages=["sft"], out_dir=tmp_path / "st", isolate=False)
    row = result.rows[0]
    assert row["status"] == "trained" and row["estimate_mb"] is None
    report = (tmp_path / "st" / "runs" / "sft" / "report.md").read_text()
    assert "memory estimated" not in report
