"""The (train, eval) examples of a run: the recipe's data files, read in the format the
stage accepts, with an evaluation split, ``data.max_samples`` and few-shot sampling
(``data.shots``, ``data.unlabeled``: fewshot.py). Paths resolve like the recipe's
other paths (paths.py)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from ..errors import LeantuneError, RecipeError
from ..recipe import Recipe
from .fewshot import few_shot_data, take_fraction
from .formats import FORMATS, load_examples
from .paths import resolve_data_path


def load_data(recipe: Recipe, stage, base_dir: Path | None, say: Callable[[str], None]):
    """(train, eval) examples; a stage with its own ``load_data`` (several data sets: continual,
    multitask) reads them itself."""
    if hasattr(stage, "load_data"):
        return stage.load_data(recipe, base_dir, say)
    return default_load_data(recipe, stage, base_dir, say)


def default_load_data(recipe: Recipe, stage, base_dir: Path | None, say: Callable[[str], None]):
    """(train, eval) examples; with data.shots/data.unlabeled, few-shot sampling (data/fewshot.py)."""
    if recipe.data.shots is None and recipe.data.unlabeled is None:
        train, evals = load_labelled(recipe, stage, base_dir, say)
    else:
        train, evals = few_shot_data(recipe, stage, base_dir, say, load_labelled)
    return take_fraction(train, recipe.data.fraction, recipe.train.seed, say), evals


def load_labelled(recipe: Recipe, stage, base_dir: Path | None, say: Callable[[str], None]):
    """The labelled examples of data.train (and data.eval or an eval split), checked against the stage."""
    if not recipe.data.train:
        raise RecipeError("recipe: data.train is required (a .jsonl/.json/.csv/.parquet file or builtin:NAME)")
    skip = recipe.data.skip_invalid
    train = load_examples(resolve_data_path(recipe.data.train, base_dir), recipe.data.format, skip_invalid=skip)
    kind = FORMATS[train.format].kind
    if kind not in stage.data_kinds:
        fits = sorted(n for n, f in FORMATS.items() if f.kind in stage.data_kinds)
        raise RecipeError(f"stage '{stage.name}' reads {', '.join(fits)} data; {recipe.data.train} is '{train.format}'")
    if train.skipped:
        say(f"[yellow]skipped {train.skipped} invalid row(s) of {train.path} (data.skip_invalid: true)")
    examples = train.examples[: recipe.data.max_samples] if recipe.data.max_samples else train.examples
    if not examples:
        raise LeantuneError(f"{train.path}: no valid training examples")
    if recipe.data.eval:
        ev = load_examples(resolve_data_path(recipe.data.eval, base_dir), train.format, skip_invalid=skip)
        if ev.skipped:
            say(f"[yellow]skipped {ev.skipped} invalid row(s) of {ev.path}")
        return examples, ev.examples
    if recipe.data.eval_split and len(examples) >= 10:
        order = list(range(len(examples)))
        random.Random(recipe.train.seed).shuffle(order)
        n_eval = max(1, round(recipe.data.eval_split * len(examples)))
        held = set(order[:n_eval])
        return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]
    return examples, []
