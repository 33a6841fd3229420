"""Few-shot data: K labelled examples per class, the rest as an unlabelled pool.

``data.shots: K`` keeps K examples per class of the training data (classification; K
examples in all for other data), chosen with ``train.seed``. ``data.unlabeled: keep``
keeps the examples not chosen, without their labels, as the unlabelled pool (PET's
distillation set); a file path reads the pool from a file (rows with ``text`` and optional
``text_pair``). ``data.shots: 0`` with only ``data.eval`` is zero-shot. Learning curves over
several K and seeds are in ``leantune.workflows.learning_curve``.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable

from ..errors import LeantuneError, RecipeError
from .formats import FORMATS, load_examples
from .paths import resolve_data_path
from .readers import read_rows


def sample_shots(examples: list[dict], k: int, seed: int, label_key: str = "label") -> tuple[list[dict], list[dict]]:
    """(K per class — K in all when the examples have no labels —, the rest in original order).

    The choice depends only on (examples, k, seed); classes are visited in sorted order,
    and a class with fewer than K examples gives all it has.
    """
    if k < 0:
        raise RecipeError(f"data.shots must be 0 or more, got {k}")
    rng = random.Random(seed)
    if examples and all(label_key in e for e in examples):
        by_label: dict[str, list[int]] = {}
        for i, e in enumerate(examples):
            by_label.setdefault(str(e[label_key]), []).append(i)
        chosen = []
        for label in sorted(by_label):
            chosen += rng.sample(by_label[label], min(k, len(by_label[label])))
    else:
        chosen = rng.sample(range(len(examples)), min(k, len(examples)))
    rng.shuffle(chosen)
    taken = set(chosen)
    return [examples[i] for i in chosen], [e for i, e in enumerate(examples) if i not in taken]


def take_fraction(examples: list[dict], fraction: float | None, seed: int,
                  say: Callable[[str], None] = lambda s: None) -> list[dict]:
    """``data.fraction``: the first ⌈fraction·n⌉ of one ``seed`` permutation, in file order — so for
    one seed a smaller fraction's examples are all inside a larger one's (learning curves)."""
    if fraction is None:
        return examples
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[: max(1, math.ceil(round(fraction * len(examples), 9)))])
    say(f"data.fraction={fraction:g}: {len(keep)} of {len(examples)} training example(s) (seed {seed})")
    return [examples[i] for i in keep]


def strip_labels(examples: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "label"} for e in examples]


def load_unlabeled(path: str | Path) -> list[dict]:
    rows = read_rows(path)
    out = []
    for line, row in rows:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise LeantuneError(f"{path}:{line}: text: an unlabelled row needs a non-empty string 'text'")
        pair = row.get("text_pair")
        out.append({"text": text, "text_pair": pair if isinstance(pair, str) and pair else None, "line": line})
    return out


def few_shot_data(recipe, stage, base_dir: Path | None, say: Callable[[str], None],
                  load_labelled: Callable) -> tuple[list[dict], list[dict]]:
    """(train, eval) after few-shot sampling; sets ``stage.unlabeled`` (list or None)."""
    shots = recipe.data.shots
    if shots == 0 and not recipe.data.train:
        if not recipe.data.eval:
            raise RecipeError("recipe: zero-shot (data.shots: 0) without data.train still needs data.eval")
        ev = load_examples(resolve_data_path(recipe.data.eval, base_dir), recipe.data.format,
                           skip_invalid=recipe.data.skip_invalid)
        if FORMATS[ev.format].kind not in stage.data_kinds:
            raise RecipeError(f"stage '{stage.name}' cannot read {recipe.data.eval} ('{ev.format}' data)")
        train, evals, rest = [], ev.examples, []
    else:
        train, evals = load_labelled(recipe, stage, base_dir, say)
        rest = []
        if shots is not None:
            train, rest = sample_shots(train, shots, recipe.train.seed)
            say(f"few-shot: {len(train)} labelled example(s) (data.shots={shots}, seed {recipe.train.seed}); "
                f"{len(rest)} left")
    unlabeled = recipe.data.unlabeled
    if unlabeled is None:
        pool = None
    elif unlabeled == "keep":
        pool = strip_labels(rest)
    else:
        pool = load_unlabeled(resolve_data_path(unlabeled, base_dir))
    stage.unlabeled = pool
    return train, evals
