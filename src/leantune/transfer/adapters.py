"""Per-task adapters at inference: reload a ``stage: continual, strategy: adapters`` run with
every task's adapter and switch between them by task name."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import LeantuneError
from ..export.run_loading import load_run

TASK_ADAPTERS = "task_adapters.json"


def load_task_adapters(run_dir: str | Path):
    """(the PEFT model with all task adapters loaded, {task name: adapter name}, the LoadedRun)."""
    run = load_run(run_dir)
    folder = Path(run_dir) / "adapter"
    index = folder / TASK_ADAPTERS
    if not index.is_file():
        raise LeantuneError(f"{run_dir}: no {TASK_ADAPTERS}; not a continual run with strategy adapters")
    mapping = json.loads(index.read_text())
    for adapter in mapping.values():
        if adapter not in run.model.peft_config:
            run.model.load_adapter(folder / adapter, adapter_name=adapter, is_trainable=False)
    run.model.eval()
    return run.model, mapping, run


def set_task(model: nn.Module, mapping: dict[str, str], task: str) -> None:
    """Route the model through ``task``'s adapter."""
    if task not in mapping:
        raise LeantuneError(f"unknown task {task!r}; tasks: {', '.join(mapping)}")
    model.set_adapter(mapping[task])
