"""Experiment trackers (``train.report_to``): TensorBoard, MLflow, Weights & Biases and Trackio
receive every record of ``metrics.jsonl``, through accelerate's tracker classes
(``accelerate.tracking``); the recipe is their configuration, as flat ``section.field`` values.

Offline by default (docs/tracking.md): TensorBoard event files in ``RUN/tensorboard/``; MLflow in
a file store ``RUN/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set; wandb in offline mode under
``RUN/wandb/`` unless ``WANDB_MODE`` is set; Trackio in its local database unless
``TRACKIO_SPACE_ID`` is set. ``RUN/trackers.json`` keeps the MLflow and wandb run ids, so a
``--resume`` continues the same runs; TensorBoard hides the events after the step a resumed
run restarts from (``purge_step``). Metrics files of a stage's rounds or tasks (folders below
the run) are logged on one step axis, each after the previous one's last step.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker
from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_trackio_available, is_wandb_available

from ..atomic import atomic_write_text
from ..errors import LeantuneError, RecipeError
from .interrupt import TrainingInterrupted
from .metrics_log import forward_metrics

STATE_FILE = "trackers.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
PROJECT = "leantune"  # MLflow experiment, wandb and Trackio project (MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT win)
INSTALL = {  # tracker → (is its package installed, what to install)
    "tensorboard": (is_tensorboard_available, "pip install 'leantune[trackers]' (or pip install tensorboard)"),
    "mlflow": (is_mlflow_available, "pip install 'leantune[trackers]' (or pip install mlflow-skinny)"),
    "wandb": (is_wandb_available, "pip install wandb"),
    "trackio": (is_trackio_available, "pip install trackio"),
}


def check_trackers(names: list[str]) -> None:
    """Before anything loads: each tracker's package is installed, else a RecipeError naming what to install."""
    missing = [name for name in names if not INSTALL[name][0]()]
    if missing:
        how = "; ".join(f"{name} needs its package: {INSTALL[name][1]}" for name in missing)
        raise RecipeError(f"train.report_to: {how}; or remove {', '.join(missing)} from train.report_to")


def hyperparameters(values: dict, prefix: str = "") -> dict:
    """The recipe (``model_dump(mode="json")``) as flat values: ``train.lr``, lists of sections by
    index (``method.0.r``), other lists as JSON text; unset (None) fields left out."""
    out: dict = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hyperparameters(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.update(hyperparameters({str(i): v for i, v in enumerate(value)}, name + "."))
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        elif value is not None:
            out[name] = value
    return out


# Each starter opens its tracker for the run, continuing the one ``saved`` in trackers.json if any;
# a tracker new to the run stores ``config``, a continued one has it already.

def start_tensorboard(run_dir: Path, saved: dict | None, run_name: str, config: dict | None,
                      purge_step: int | None = None) -> tuple[GeneralTracker, dict]:
    tracker = TensorBoardTracker("", Path(run_dir) / TENSORBOARD_DIR,
                                 **({"purge_step": purge_step} if purge_step else {}))
    tracker.start()
    if not saved and config:
        tracker.store_init_configuration(config)
    return tracker, {"dir": TENSORBOARD_DIR}


def start_mlflow(run_dir: Path, saved: dict | None, run_name: str, config: dict) -> tuple[GeneralTracker, dict]:
    import mlflow  # lazy: seconds to import; only runs reporting to MLflow need it

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # MLflow 3 refuses its file store unless asked; the alternative (sqlite) needs SQLAlchemy
        uri = (Path(run_dir) / MLFLOW_DIR).resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    same_store = saved and saved.get("tracking_uri") == uri
    tracker = MLflowTracker(experiment_name=PROJECT, run_id=saved["run_id"] if same_store else None,
                            run_name=run_name)
    tracker.start()
    if not same_store:
        tracker.store_init_configuration(config)
    return tracker, {"tracking_uri": uri, "run_id": tracker.active_run.info.run_id}


def start_wandb(run_dir: Path, saved: dict | None, run_name: str, config: dict) -> tuple[GeneralTracker, dict]:
    kwargs: dict = {"name": run_name}
    if not os.environ.get("WANDB_MODE"):
        kwargs["mode"] = "offline"
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(run_dir)
    if saved:
        kwargs.update(id=saved["id"], resume="allow")
    else:
        kwargs["config"] = config
    tracker = WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), **kwargs)
    tracker.start()
    return tracker, {"id": tracker.run.id}


def start_trackio(run_dir: Path, saved: dict | None, run_name: str, config: dict) -> tuple[GeneralTracker, dict]:
    tracker = TrackioTracker(PROJECT, name=run_name, **({"resume": "allow"} if saved else {"config": config}))
    tracker.start()
    return tracker, {"project": PROJECT, "name": run_name}


STARTERS: dict[str, Callable[[Path, dict | None, str, dict], tuple[GeneralTracker, dict]]] = {
    "tensorboard": start_tensorboard, "mlflow": start_mlflow, "wandb": start_wandb, "trackio": start_trackio}


class Trackers:
    """The open trackers of one run: a :class:`~.metrics_log.MetricsSink` for its metrics files."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str, config: dict, resume: bool):
        self.run_dir, self.run_name, self.resume = Path(run_dir), run_name, resume
        state_file = self.run_dir / STATE_FILE
        saved = json.loads(state_file.read_text()) if resume and state_file.is_file() else {}
        self.open: dict[str, GeneralTracker] = {}
        self.state: dict[str, dict] = {}
        self.offsets: dict[str, int] = {}  # metrics folder → steps of the folders logged before it
        self.last_step: dict[str, int] = {}
        for name in dict.fromkeys(names):  # a name given twice opens once
            try:
                self.open[name], self.state[name] = STARTERS[name](self.run_dir, saved.get(name), run_name, config)
            except Exception as exc:
                self.close("FAILED")
                raise LeantuneError(f"train.report_to: {name} could not start ({type(exc).__name__}: {exc}); "
                                    f"fix its settings (docs/tracking.md) or remove it from train.report_to") from exc
        atomic_write_text(state_file, json.dumps(self.state, indent=2))

    def log(self, prefix: str, record: dict) -> None:
        """One ``metrics.jsonl`` record: its numbers at its step (shifted for a round's or task's folder)."""
        if prefix not in self.offsets:
            self.offsets[prefix] = sum(self.last_step.values()) if prefix else 0
        step = record["step"] + self.offsets[prefix]
        self.last_step[prefix] = record["step"]
        values = {k: v for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.open.values():
            tracker.log(values, step=step)

    def rewind(self, prefix: str, step: int) -> None:
        """A resumed run restarts after ``step``: TensorBoard hides what it logged beyond (MLflow keeps
        both values of a step logged twice; wandb ignores steps it has seen)."""
        if prefix or not self.resume or "tensorboard" not in self.open:
            return
        self.open["tensorboard"].finish()
        self.open["tensorboard"], _ = start_tensorboard(self.run_dir, self.state["tensorboard"], self.run_name,
                                                        None, purge_step=step + 1)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close every tracker; MLflow's run ends FINISHED, FAILED or KILLED."""
        for name, tracker in self.open.items():
            if name == "mlflow":
                import mlflow  # lazy: already imported by start_mlflow

                mlflow.end_run(status)
            elif name == "wandb":
                tracker.run.finish(exit_code=0 if status == "FINISHED" else 1)
            else:
                tracker.finish()
        self.open = {}


@contextmanager
def report_metrics(recipe, run_dir: Path, resume: bool, say: Callable[[str], None] = lambda s: None):
    """The trackers of ``train.report_to`` for the block (none: nothing happens); closed at its end,
    also when it fails (MLflow: FAILED) or is interrupted (KILLED)."""
    names = recipe.train.report_to
    if not names:
        yield None
        return
    check_trackers(names)
    trackers = Trackers(names, run_dir, recipe.run_name, hyperparameters(recipe.model_dump(mode="json")), resume)
    say("metrics also go to " + ", ".join(f"{n} ({where})" for n, where in _places(trackers).items()))
    try:
        with forward_metrics(run_dir, trackers):
            yield trackers
    except BaseException as exc:
        trackers.close("KILLED" if isinstance(exc, (KeyboardInterrupt, TrainingInterrupted)) else "FAILED")
        raise
    trackers.close()


def _places(trackers: Trackers) -> dict[str, str]:
    where = {"tensorboard": str(trackers.run_dir / TENSORBOARD_DIR), "trackio": f"project {PROJECT}",
             "wandb": f"mode {os.environ.get('WANDB_MODE') or 'offline'}"}
    return {name: trackers.state[name].get("tracking_uri") or where[name] for name in trackers.state}
