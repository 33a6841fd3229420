"""Several data sets in one recipe (continual, multitask): each task's own train/eval files."""
from __future__ import annotations

import random
from pathlib import Path

from ..data.formats import FORMATS, load_examples
from ..data.paths import resolve_data_path
from ..errors import LeantuneError, RecipeError
from ..recipe.stage_settings import TaskSpec


def task_names(tasks: list[TaskSpec]) -> list[str]:
    names = [t.name or f"task{i}" for i, t in enumerate(tasks)]
    if len(set(names)) != len(names):
        raise RecipeError(f"stage tasks: names must be unique, got {names}")
    return names


def load_tasks(tasks: list[TaskSpec], kinds: tuple[str, ...], stage: str, recipe, base_dir: Path | None,
               say) -> tuple[list[list[dict]], list[list[dict]], list[str]]:
    """(train examples per task, eval examples per task, the data kind of each task)."""
    if not tasks:
        raise RecipeError(f"stage {stage}: give at least one task under stage.tasks")
    if recipe.data.train:
        say(f"[yellow]stage {stage} reads its data from stage.tasks; data.train ({recipe.data.train}) is ignored")
    trains, evals, task_kinds = [], [], []
    for i, t in enumerate(tasks):
        skip = recipe.data.skip_invalid
        tr = load_examples(resolve_data_path(t.data, base_dir), t.format, skip_invalid=skip)
        kind = FORMATS[tr.format].kind
        if kind not in kinds:
            raise RecipeError(f"stage {stage}: task {i} ({t.data}) is '{tr.format}' data; the stage reads "
                              f"{', '.join(sorted(n for n, f in FORMATS.items() if f.kind in kinds))}")
        examples = tr.examples[: t.max_samples] if t.max_samples else tr.examples
        if not examples:
            raise LeantuneError(f"{tr.path}: no valid training examples")
        if t.eval:
            ev = load_examples(resolve_data_path(t.eval, base_dir), tr.format, skip_invalid=skip).examples
        elif t.eval_split and len(examples) >= 5:
            order = list(range(len(examples)))
            random.Random(recipe.train.seed).shuffle(order)
            held = set(order[: max(1, round(t.eval_split * len(examples)))])
            ev = [examples[k] for k in sorted(held)]
            examples = [e for k, e in enumerate(examples) if k not in held]
        else:
            ev = []
        trains.append(examples)
        evals.append(ev)
        task_kinds.append(kind)
    return trains, evals, task_kinds
