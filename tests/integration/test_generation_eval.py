"""``eval.metrics`` end to end on the tiny llama: predictions before and after training, the
metrics in eval.json and the report's metric curve, ``leantune eval RUN --metrics`` reproducing
them from the saved run, and ``compare`` / ``advise --prove`` ranking by the named metric."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from leantune.cli import app
from leantune.errors import RecipeError
from leantune.evaluation.text_metrics import resolve_metrics, score_all
from leantune.pipeline import train
from leantune.recipe import load_recipe
from leantune.workflows.compare import compare_runs, pick_metric, row_of
from leantune.workflows.prove import winner_of

PAIRS = [(f"What is {a} plus {b}?", f"The answer is {a + b}.") for a, b in
         [(1, 2), (2, 2), (3, 4), (5, 1), (6, 2), (7, 7), (8, 1), (9, 3)]]
EVAL = [("What is 2 plus 3?", "The answer is 5."), ("What is 4 plus 4?", "The answer is 8."),
        ("What is 1 plus 6?", "The answer is 7.")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def write_jsonl(path: Path, pairs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in pairs))
    return path


def recipe_for(model_dir: Path, folder: Path, name: str, steps: int, method: str = "lora", lr: float = 5e-3,
               **evals):
    return load_recipe(raw={
        "model": str(model_dir), "method": method, "stage": "sft",
        "data": {"train": str(write_jsonl(folder / "train.jsonl", PAIRS * 2)),
                 "eval": str(write_jsonl(folder / "eval.jsonl", EVAL)), "format": "alpaca"},
        "train": {"max_steps": steps, "batch_size": 4, "lr": lr, "precision": "fp32", "max_length": 96,
                  "logging_steps": 5, "eval_steps": 10},
        "eval": {"batch_size": 2, "max_new_tokens": 20, "metrics": ["exact_match", "rouge_l"], **evals},
        "output": {"dir": str(folder / "runs"), "name": name}})


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation-eval")
    model = tiny_model_dir("llama")
    short = train(recipe_for(model, folder, "short", 2, max_generate=2), progress=False)
    # full fine-tuning at a high rate: the tiny model learns to start its answers with "The answer is"
    longer = train(recipe_for(model, folder, "longer", 40, "full", 1e-2, metric="rouge_l"), progress=False)
    return folder, short, longer


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_and_metrics_before_and_after(runs):
    _, short, longer = runs
    for summary, answered in ((short, 2), (longer, 3)):  # max_generate: 2 caps the first run
        run_dir = Path(summary.run_dir)
        evals = json.loads((run_dir / "eval.json").read_text())
        for when, name in (("before", "predictions_before.jsonl"), ("after", "predictions.jsonl")):
            rows = read_rows(run_dir / name)
            assert [r["reference"] for r in rows] == [a for _, a in EVAL[:answered]]
            assert [r["prompt"][-1]["content"] for r in rows] == [q for q, _ in EVAL[:answered]]
            # the scores in eval.json are those of the saved answers, by the reference metrics
            again, _ = score_all(resolve_metrics(["exact_match", "rouge_l"]), [r["prediction"] for r in rows],
                                 [r["reference"] for r in rows], [])
            assert {k: evals[when][k] for k in again} == pytest.approx(again)
            assert [r["scores"]["rouge_l"] for r in rows] == pytest.approx(
                [score_all(resolve_metrics(["rouge_l"]), [r["prediction"]], [r["reference"]], [])[0]["rouge_l"]
                 for r in rows])
            assert {"loss", "perplexity", "exact_match", "rouge_l"} <= set(evals[when])
        assert summary.generation == {"metrics": ["exact_match", "rouge_l"], "examples": answered, "held_out": 3,
                                      "max_generate": 2 if answered == 2 else None}
    assert short.metric == "exact_match" and longer.metric == "rouge_l"  # the first of eval.metrics / eval.metric
    report = (Path(short.run_dir) / "report.md").read_text()
    assert "greedy answers to 2 of 3 held-out examples (eval.max_generate: 2)" in report
    assert "| rouge_l |" in report and "ranked by (compare, advise --prove): exact_match" in report


def test_metric_curve_during_training(runs):
    _, _, longer = runs
    run_dir = Path(longer.run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in records if "eval_rouge_l" in r]
    assert [r["step"] for r in curve] == [10, 20, 30] and all(0 <= r["eval_rouge_l"] <= 1 for r in curve)
    assert curve[-1]["eval_rouge_l"] > 0
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "![metrics](metrics.png)" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("which", ["short", "longer"])  # a LoRA run (adapter merged on loading) and a full one
def test_leantune_eval_reproduces_the_after_metrics(runs, which, tmp_path):
    _, short, longer = runs
    summary = short if which == "short" else longer
    run_dir = Path(summary.run_dir)
    cli = CliRunner()
    refused = cli.invoke(app, ["eval", str(run_dir), "--metrics", "rouge_l,exact_match"])
    assert refused.exit_code == 2 and "predictions.jsonl" in refused.output and "Traceback" not in refused.output
    bad = cli.invoke(app, ["eval", str(run_dir), "--metrics", "rougel"])
    assert bad.exit_code == 2 and "unknown metric 'rougel'" in bad.output
    out = tmp_path / "answers.jsonl"
    done = cli.invoke(app, ["eval", str(run_dir), "--metrics", "rouge_l,exact_match", "--out", str(out)],
                      env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    metrics = json.loads(done.output[done.output.index("{"):])
    for key in ("loss", "rouge_l", "exact_match"):
        assert metrics[key] == pytest.approx(summary.eval_after[key], abs=1e-6), key
    saved = read_rows(run_dir / "predictions.jsonl")
    assert [r["prediction"] for r in read_rows(out)] == [r["prediction"] for r in saved]
    assert len(saved) == summary.generation["examples"]


def test_compare_ranks_by_the_named_metric(runs, tmp_path):
    _, short, longer = runs
    result = compare_runs([Path(longer.run_dir), Path(short.run_dir)], tmp_path / "cmp")
    assert result.metric == "rouge_l"  # the first run's eval.metric, which both runs have
    assert [r["metric"] for r in result.rows] == [longer.eval_after["rouge_l"], short.eval_after["rouge_l"]]
    assert longer.eval_after["rouge_l"] > short.eval_after["rouge_l"]
    assert winner_of(result.rows, result.metric)["variant"] == "longer"
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["metric"] == "rouge_l" and saved["lower_is_better"] is False


def test_named_text_metric_outranks_loss():
    """A run with the higher named metric wins although its loss is worse (text metrics: higher is better)."""
    a = {"metric": "rouge_l", "eval_after": {"loss": 0.5, "perplexity": 1.6, "rouge_l": 0.2}}
    b = {"metric": "rouge_l", "eval_after": {"loss": 0.9, "perplexity": 2.5, "rouge_l": 0.6}}
    metric = pick_metric([a, b])
    assert metric == "rouge_l"
    assert winner_of([row_of("a", a, metric), row_of("b", b, metric)], metric)["variant"] == "b"
    unnamed = [{"eval_after": s["eval_after"]} for s in (a, b)]  # runs that name no metric: loss, lower wins
    assert pick_metric(unnamed) == "loss"
    assert winner_of([row_of("a", unnamed[0], "loss"), row_of("b", unnamed[1], "loss")], "loss")["variant"] == "a"


def test_metrics_need_held_out_conversations(tiny_model_dir, tmp_path):
    recipe = recipe_for(tiny_model_dir("llama"), tmp_path, "none", 2)
    recipe.data.eval, recipe.data.eval_split = None, 0.0
    with pytest.raises(RecipeError, match=r"eval.metrics \(exact_match, rouge_l\): no held-out conversations"):
        train(recipe, progress=False)
    assert not (tmp_path / "runs" / "none").exists()


def test_ranking_metric_must_be_computed(tiny_model_dir, tmp_path):
    """eval.metric naming a metric the run does not compute stops the run on the base model's scores,
    before anything is written."""
    recipe = recipe_for(tiny_model_dir("llama"), tmp_path, "named", 2, metric="accuracy", max_generate=1)
    with pytest.raises(RecipeError, match=r"eval.metric: 'accuracy' is not among this run's metrics \(exact_match, "
                                          r"loss, perplexity, rouge_l\)"):
        train(recipe, progress=False)
    assert not (tmp_path / "runs" / "named").exists()
