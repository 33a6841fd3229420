"""Learning curves: the same recipe at several training-set sizes (``data.shots``: K
examples per class) and seeds, the metric as mean ± sample std per K — how much a
label is worth before paying for more (Perez et al. 2021, "True Few-Shot Learning with
Language Models", argue for several seeds and no held-out tuning at small K)."""
from __future__ import annotations

import copy
import statistics
from typing import Callable

from ..errors import LeantuneError
from ..pipeline import train


def summarize(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def learning_curve(recipe, shots: list[int], seeds: list[int], *, metric: str = "accuracy",
                   run: Callable | None = None, **train_kwargs) -> dict:
    """Run the recipe for every (K, seed) and report ``metric`` as mean ± std per K.

    ``run(recipe, **train_kwargs)`` defaults to :func:`leantune.pipeline.train` and must
    return an object with ``eval_after`` (a metrics dict). Each run is named
    ``{name}-k{K}-s{seed}``. Returns ``{"metric", "points": [{"shots", "mean", "std", "n",
    "values"}], "runs": [...]}``.
    """
    run = run or train
    base = recipe.run_name
    points, runs = [], []
    for k in shots:
        values = []
        for seed in seeds:
            r = copy.deepcopy(recipe)
            r.data.shots = k
            r.train.seed = seed
            r.output.name = f"{base}-k{k}-s{seed}"
            summary = run(r, **train_kwargs)
            metrics = summary.eval_after or {}
            if metric not in metrics:
                raise LeantuneError(f"learning curve: run {r.output.name} reported no {metric!r} "
                                    f"(has {sorted(metrics)})")
            values.append(float(metrics[metric]))
            runs.append({"shots": k, "seed": seed, "name": r.output.name, metric: values[-1]})
        points.append({"shots": k, **summarize(values), "values": values})
    return {"metric": metric, "points": points, "runs": runs}
