"""``train.report_to``: every ``metrics.jsonl`` record reaches TensorBoard and MLflow, read back with
their own readers (``EventAccumulator``, ``MlflowClient``); the recipe is the run's parameters; a
missing package or an unknown tracker stops before training; a resumed run continues the same
MLflow run and TensorBoard hides the steps it redoes; a failed or interrupted run is closed."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import types
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from leantune.cli import app
from leantune.pipeline import train
from leantune.recipe import load_recipe
from leantune.training import engine as engine_module
from leantune.training import trackers as trackers_module
from leantune.training.interrupt import TrainingInterrupted
from leantune.training.metrics_log import append_metrics, truncate_metrics
from leantune.training.trackers import report_metrics

pytestmark = pytest.mark.usefixtures("torch_single_thread")

QA = [("What is the capital of France?", "Paris."), ("List files in a directory.", "ls -la"),
      ("Add two and two.", "4"), ("Say hello.", "Hello!"), ("Copy a file.", "cp src dst"),
      ("What colour is the sky?", "Blue."), ("Name a prime number.", "7"), ("Print the working directory.", "pwd")]


@pytest.fixture(autouse=True)
def local_stores(monkeypatch):
    """No tracking server from the environment; MLflow's file store allowed for the reader too."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def raw_recipe(tmp_path: Path, model_dir: Path, report_to) -> dict:
    rows = [{"instruction": q, "output": a} for q, a in QA]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return {"model": str(model_dir), "method": {"name": "lora", "r": 4}, "stage": "sft",
            "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl"), "format": "alpaca"},
            "train": {"max_steps": 6, "batch_size": 4, "logging_steps": 1, "eval_steps": 2, "lr": 1e-3,
                      "precision": "fp32", "max_length": 64, "report_to": report_to},
            "eval": {"batch_size": 4, "before": False}, "output": {"dir": str(tmp_path / "runs"), "name": "tracked"}}


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    out = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    assert all(len(acc.Scalars(tag)) == len(by_step) for tag, by_step in out.items()), "a step logged twice"
    return out


def mlflow_run(store: Path):
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "leantune"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def metric_histories(client, run) -> dict[str, dict[int, list[float]]]:
    out = {}
    for key in run.data.metrics:
        out[key] = {}
        for m in client.get_metric_history(run.info.run_id, key):
            out[key].setdefault(m.step, []).append(m.value)
    return out


def expected_scalars(records: list[dict]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for rec in records:
        for key, value in rec.items():
            if key != "step":
                out.setdefault(key, {})[rec["step"]] = value
    return out


def test_tensorboard_and_mlflow_receive_every_record(tmp_path, tiny_model_dir):
    recipe = load_recipe(raw=raw_recipe(tmp_path, tiny_model_dir("llama"), ["tensorboard", "mlflow"]))
    summary = train(recipe, progress=False)
    run_dir = Path(summary.run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = expected_scalars(records)
    assert {"loss", "lr", "eval_loss"} <= set(expected) and sorted(expected["loss"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(expected["eval_loss"]) == [2, 4]

    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert set(scalars) == set(expected)
    for key, by_step in expected.items():
        assert sorted(scalars[key]) == sorted(by_step), key
        assert all(math.isclose(scalars[key][s], v, rel_tol=1e-6, abs_tol=1e-9) for s, v in by_step.items()), key

    client, run = mlflow_run(run_dir / "mlruns")
    assert run.info.status == "FINISHED" and run.info.run_name == recipe.run_name
    histories = metric_histories(client, run)
    assert {k: {s: [v] for s, v in by_step.items()} for k, by_step in expected.items()} == histories
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    params = run.data.params
    assert params["train.lr"] == str(saved["train"]["lr"]) and params["train.max_steps"] == "6"
    assert params["method.0.name"] == "lora" and params["method.0.r"] == "4"
    assert params["model.name"] == saved["model"]["name"] and params["stage.name"] == "sft"
    assert json.loads(params["train.report_to"]) == ["tensorboard", "mlflow"]
    assert all(f"train.{k}" in params for k, v in saved["train"].items() if v is not None and not isinstance(v, dict))


def test_interrupted_run_resumes_into_the_same_records(tmp_path, tiny_model_dir, monkeypatch):
    """SIGTERM during step 3 stops after step 4 with a checkpoint and closes the trackers (MLflow: KILLED);
    with it removed (as if killed), ``--resume`` redoes steps 3-6 from step-2: TensorBoard shows each step once,
    MLflow's one run holds the redone steps twice with equal values, and both equal ``metrics.jsonl``."""
    raw = raw_recipe(tmp_path, tiny_model_dir("llama"), ["tensorboard", "mlflow"])
    raw["train"]["save_steps"] = 2
    recipe = load_recipe(raw=raw)

    class StopAtStep3(engine_module.TrainProgress):
        def update(self, step, loss, tps):
            super().update(step, loss, tps)
            if step == 3:  # the engine sees the request at the next step's end
                os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(engine_module, "TrainProgress", StopAtStep3)
        with pytest.raises(TrainingInterrupted):
            train(recipe, progress=False)
    run_dir = tmp_path / "runs" / "tracked"
    assert mlflow_run(run_dir / "mlruns")[1].info.status == "KILLED"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    shutil.rmtree(run_dir / "checkpoints" / "step-4")
    train(recipe, resume=True, progress=False)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = expected_scalars(records)
    assert sorted(expected["loss"]) == [1, 2, 3, 4, 5, 6]
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert {k: scalars[k] for k in expected} == {k: pytest.approx(v, rel=1e-6) for k, v in expected.items()}
    client, run = mlflow_run(run_dir / "mlruns")
    assert run.info.status == "FINISHED"
    histories = metric_histories(client, run)
    assert {s: len(v) for s, v in histories["loss"].items()} == {1: 1, 2: 1, 3: 2, 4: 2, 5: 1, 6: 1}
    for key, by_step in expected.items():
        if key != "tokens_per_s":  # a measured speed: not the same twice
            assert histories[key] == {s: pytest.approx([v] * len(histories[key][s]), rel=1e-6)
                                      for s, v in by_step.items()}, key


def test_missing_tracker_package_stops_before_training(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(trackers_module.INSTALL, "mlflow", (lambda: False, "pip install 'leantune[trackers]'"))
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw_recipe(tmp_path, tiny_model_dir("llama"), ["tensorboard", "mlflow"])))
    r = CliRunner().invoke(app, ["train", str(recipe_file)], env={"COLUMNS": "200"})
    assert r.exit_code == 2, r.output
    assert "train.report_to: mlflow" in r.output and "pip install 'leantune[trackers]'" in r.output
    assert "Traceback" not in r.output and "tensorboard needs" not in r.output
    assert not (tmp_path / "runs").exists()


def test_unknown_tracker_is_a_recipe_error(tmp_path, tiny_model_dir):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw_recipe(tmp_path, tiny_model_dir("llama"), ["tensorboard", "bogus"])))
    r = CliRunner().invoke(app, ["train", str(recipe_file)], env={"COLUMNS": "200"})
    assert r.exit_code == 2, r.output
    assert "train.report_to" in r.output and "'bogus'" in r.output
    assert all(name in r.output for name in ("'tensorboard'", "'mlflow'", "'wandb'", "'trackio'"))
    assert "Traceback" not in r.output and not (tmp_path / "runs").exists()


def test_a_single_name_is_accepted():
    assert load_recipe(raw={"model": "x", "train": {"report_to": "mlflow"}}).train.report_to == ["mlflow"]


def test_resume_continues_the_mlflow_run_and_tensorboard_hides_redone_steps(tmp_path):
    raw = {"model": "x", "train": {"max_steps": 4, "report_to": ["tensorboard", "mlflow"]}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = run_dir / "metrics.jsonl"
    with pytest.raises(TrainingInterrupted), report_metrics(load_recipe(raw=raw), run_dir, resume=False):
        truncate_metrics(metrics, 0)
        for step in range(1, 5):
            append_metrics(metrics, {"step": step, "loss": float(step)})
        raise TrainingInterrupted("stopped")  # the checkpoint is at step 2: steps 3 and 4 are done again
    client, run = mlflow_run(run_dir / "mlruns")
    assert run.info.status == "KILLED"

    raw["train"]["max_steps"] = 5  # may change on --resume; the continued run keeps its first parameters
    with report_metrics(load_recipe(raw=raw), run_dir, resume=True):
        assert len(truncate_metrics(metrics, 2)) == 2
        for step in (3, 4):
            append_metrics(metrics, {"step": step, "loss": 10.0 * step})
    assert tensorboard_scalars(run_dir / "tensorboard")["loss"] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
    client, resumed = mlflow_run(run_dir / "mlruns")  # still one run
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert metric_histories(client, resumed)["loss"] == {1: [1.0], 2: [2.0], 3: [3.0, 30.0], 4: [4.0, 40.0]}
    assert resumed.data.params["train.max_steps"] == "4"


def test_failed_run_ends_failed_and_rounds_follow_each_other(tmp_path):
    recipe = load_recipe(raw={"model": "x", "train": {"report_to": ["tensorboard", "mlflow"]}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(RuntimeError), report_metrics(recipe, run_dir, resume=False):
        for r in range(2):  # a stage's rounds each log steps 1..3 in their own folder
            folder = run_dir / "rounds" / f"round-{r}"
            folder.mkdir(parents=True)
            for step in (1, 2, 3):
                append_metrics(folder / "metrics.jsonl", {"step": step, "loss": 10.0 * r + step})
        raise RuntimeError("boom")
    assert tensorboard_scalars(run_dir / "tensorboard")["loss"] == {1: 1, 2: 2, 3: 3, 4: 11, 5: 12, 6: 13}
    client, run = mlflow_run(run_dir / "mlruns")
    assert run.info.status == "FAILED" and run.data.params["model.name"] == "x"
    append_metrics(run_dir / "metrics.jsonl", {"step": 7, "loss": 0.0})  # after the block: the file only
    assert max(tensorboard_scalars(run_dir / "tensorboard")["loss"]) == 6


def test_trl_stage_records_reach_tensorboard_once(tmp_path, tiny_model_dir):
    """DPO trains in TRL's Trainer (its own ``report_to`` stays empty): its log entries reach the
    trackers only through ``metrics.jsonl``, each step once."""
    pairs = [{"prompt": q, "chosen": a, "rejected": "I do not know."} for q, a in QA]
    (tmp_path / "pref.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    recipe = load_recipe(raw={
        "model": str(tiny_model_dir("llama")), "method": {"name": "lora", "r": 4}, "stage": {"name": "dpo"},
        "data": {"train": str(tmp_path / "pref.jsonl"), "template": "chatml"},
        "train": {"max_steps": 3, "batch_size": 4, "logging_steps": 1, "precision": "fp32", "max_length": 64,
                  "report_to": "tensorboard"},
        "eval": {"before": False}, "output": {"dir": str(tmp_path / "runs"), "name": "dpo"}})
    run_dir = Path(train(recipe, progress=False).run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = expected_scalars(records)
    assert "rewards/margins" in expected and sorted(expected["loss"]) == [1, 2, 3]
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert set(scalars) == set(expected)
    for key, by_step in expected.items():
        assert scalars[key] == pytest.approx(by_step, rel=1e-6, abs=1e-9), key
    assert not (run_dir / "mlruns").exists() and not list(run_dir.glob("checkpoints/**/runs"))


def fake_wandb(monkeypatch) -> list:
    """A stand-in ``wandb`` module recording ``init`` arguments, logs and the finish."""
    calls: list = []

    class Run:
        id = "abc123"

        def log(self, values, step=None):
            calls.append(("log", values, step))

        def finish(self, exit_code=None):
            calls.append(("finish", exit_code))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.setitem(trackers_module.INSTALL, "wandb", (lambda: True, "pip install wandb"))
    return calls


def test_wandb_is_offline_in_the_run_unless_told_and_resumes_its_run(tmp_path, monkeypatch):
    calls = fake_wandb(monkeypatch)
    recipe = load_recipe(raw={"model": "x", "train": {"report_to": "wandb"}, "output": {"name": "w"}})
    run_dir = tmp_path / "w"
    run_dir.mkdir()
    with report_metrics(recipe, run_dir, resume=False):
        append_metrics(run_dir / "metrics.jsonl", {"step": 1, "loss": 2.5, "lr": 0.1})
    (_, init), log, finish = calls
    assert init["mode"] == "offline" and init["dir"] == str(run_dir) and init["name"] == "w"
    assert init["project"] == "leantune" and init["config"]["train.lr"] == recipe.train.lr
    assert log == ("log", {"loss": 2.5, "lr": 0.1}, 1) and finish == ("finish", 0)

    calls.clear()
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(RuntimeError), report_metrics(recipe, run_dir, resume=True):
        raise RuntimeError("boom")
    (_, init), finish = calls
    assert "mode" not in init and "config" not in init and (init["id"], init["resume"]) == ("abc123", "allow")
    assert finish == ("finish", 1)
