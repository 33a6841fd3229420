"""EleutherAI's lm-evaluation-harness (Gao et al., https://github.com/EleutherAI/lm-evaluation-harness)
on a run's model, in this process and offline: the benchmarks leaderboards report.

The model is the run's base with its method applied, merged into the weights where the
method can be merged; lm-eval's ``HFLM`` takes it as an in-memory model. Task data comes from
the Hugging Face cache or from task YAMLs over local files (``include``); nothing is downloaded
unless the user turns the hub back on (``HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import LeantuneError
from ..training.losses import uses_prompt_learning

HARNESS_FILE = "harness.json"
HEADS = ("causal_lm", "seq2seq")


def _lm_eval():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval  # lazy: an optional dependency (the harness extra) that takes seconds to import
        from lm_eval.models.huggingface import HFLM  # lazy: as above
        from lm_eval.tasks import TaskManager  # lazy: as above
        from lm_eval.utils import handle_non_serializable  # lazy: as above
    except ImportError as exc:
        raise LeantuneError(f"--harness needs EleutherAI's lm-evaluation-harness ({exc}): "
                            f"pip install 'leantune[harness]' (or pip install lm_eval)") from None
    return lm_eval, HFLM, TaskManager, handle_non_serializable


def task_manager(TaskManager, tasks: list[str], include: Path | None):
    """lm-eval's task index: only ``include`` when it holds every task asked for (indexing the
    thousands of built-in task files takes many seconds), else the built-in tasks as well."""
    if include is not None:
        if not include.is_dir():
            raise LeantuneError(f"--harness-include {include}: not a folder of lm-eval task YAML files")
        local = TaskManager(include_path=str(include), include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
    return TaskManager(include_path=str(include) if include is not None else None)


def unreachable(name: str, exc: BaseException) -> LeantuneError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LeantuneError(
        f"harness task '{name}': its data cannot be reached ({detail}). leantune runs lm-eval offline and reads "
        f"only data already on this machine. Provide the data locally: write a task YAML over local files "
        f"(dataset_path: json, dataset_kwargs: {{data_files: {{test: /path/to/{name}.jsonl}}}}, test_split: test) "
        f"in a folder and pass --harness-include FOLDER; or, with a connection, fetch it once into the Hugging "
        f"Face cache by running this command with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0.")


def load_tasks(manager, tasks: list[str]) -> list:
    """lm-eval's task (or group) objects, one name at a time, so that a failure names its task."""
    built = []
    for name in tasks:
        path = Path(name)
        if name not in manager.all_tasks and not (path.suffix in (".yaml", ".yml") and path.is_file()):
            raise LeantuneError(f"harness task '{name}' is not an lm-eval task, group or tag, nor a task YAML file "
                                f"(nor in --harness-include); lm-eval lists its tasks with `lm-eval ls tasks`")
        try:
            loaded = manager.load([name])
        except (ConnectionError, FileNotFoundError) as exc:  # offline hub, a dataset not cached, a missing file
            raise unreachable(name, exc) from None
        built += [loaded["groups"][name]] if name in loaded["groups"] else list(loaded["tasks"].values())
    return built


def harness_model(run) -> nn.Module:
    """The run's model for lm-eval: merged where its method can be, else with the method applied."""
    if run.head not in HEADS:
        raise LeantuneError(f"{run.run_dir}: lm-evaluation-harness scores language models; this run is a "
                            f"{run.head} model")
    model = run.method.merge(run.model) if run.method.mergeable else run.model
    if uses_prompt_learning(model):
        raise LeantuneError(f"{run.run_dir}: method '{run.method.name}' adds virtual tokens that lm-eval does not "
                            f"account for, and cannot be merged; the harness cannot score this run")
    return model.requires_grad_(False)


@dataclass
class HarnessTasks:
    """The tasks asked for, loaded with their data (before any model loads, so that missing data
    is reported at once)."""

    manager: object
    built: list


def prepare_tasks(tasks: list[str], include: Path | None = None) -> HarnessTasks:
    """``tasks``: lm-eval task, group or tag names, or task YAML files."""
    _, _, TaskManager, _ = _lm_eval()
    manager = task_manager(TaskManager, tasks, include)
    return HarnessTasks(manager, load_tasks(manager, tasks))


def run_harness(model: nn.Module, tokenizer, tasks: HarnessTasks, limit: int | None = None,
                batch_size: int = 8) -> dict:
    """lm-eval's results as a JSON-ready dict (its own layout: ``results``, ``configs``,
    ``versions``, ``n-shot``, …; no per-sample logs)."""
    lm_eval, HFLM, _, handle_non_serializable = _lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks.built, limit=limit, task_manager=tasks.manager,
                                      log_samples=False)
    return json.loads(json.dumps(results, default=handle_non_serializable))


def result_rows(results: dict) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, standard error) for every numeric metric of every task (groups included)."""
    rows = []
    for task, scores in (results.get("results") or {}).items():
        for key, value in scores.items():
            metric, _, filt = key.partition(",")
            if ("_stderr" in metric or metric == "sample_len" or not isinstance(value, (int, float))
                    or isinstance(value, bool)):
                continue
            stderr = scores.get(f"{metric}_stderr,{filt}")
            rows.append((task, metric if filt in ("", "none") else key, float(value),
                         stderr if isinstance(stderr, (int, float)) else None))
    return rows
