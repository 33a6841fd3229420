"""Learning curves: the same recipe at several training-set sizes and seeds, the metric as
mean ± sample std per size — how much a label is worth before paying for more.

``learning_curve``: K examples per class (``data.shots``; Perez et al. 2021, "True Few-Shot
Learning with Language Models", argue for several seeds and no held-out tuning at small K).
``fraction_curve`` (``leantune curve``): nested fractions of the training set (``data.fraction``:
for one seed each smaller subset lies inside the larger), each (fraction, seed) a run in
``OUT/runs/<name>-f<fraction>-s<seed>`` trained like a ``compare`` variant (its own process by
default; finished runs skipped, checkpointed ones resumed), then a power law fitted to the
metric against examples with the gain predicted from doubling the data (report/curve_fit.py).
"""
from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Callable

from ..atomic import atomic_write_text
from ..errors import LeantuneError, RecipeError
from ..pipeline import train
from ..report.curve_chart import plot_curve
from ..report.curve_fit import CurveFit, fit_learning_curve, markdown, sentence
from .compare import LOWER_IS_BETTER, Variant, check_resumable_dir, pick_metric, run_variant


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


def check_fractions(fractions: list[float], seeds: list[int]) -> tuple[list[float], list[int]]:
    """Sorted distinct fractions in (0, 1] and distinct seeds ≥ 0, or a RecipeError naming the bad one."""
    for f in fractions:
        if not 0 < f <= 1:
            raise RecipeError(f"curve: --fractions: {f:g} is not a fraction of the training set (0 < f ≤ 1)")
    for s in seeds:
        if s < 0:
            raise RecipeError(f"curve: --seeds: seed {s} is negative")
    if not fractions or not seeds:
        raise RecipeError("curve: give at least one fraction (--fractions 0.25,0.5,1) and one seed")
    return sorted(set(fractions)), sorted(set(seeds))


def check_curve_dir(out_dir: Path) -> None:
    """``--out`` is new, empty, or an earlier curve's (it resumes there); never a folder of the user's files."""
    check_resumable_dir(out_dir, "curve.json", "learning curve")


def fraction_curve(raw: dict, fractions: list[float], seeds: list[int], *, out_dir: Path,
                   base_dir: Path | None = None, metric: str | None = None, isolate: bool = True,
                   say: Callable[[str], None] = lambda s: None) -> tuple[dict, CurveFit]:
    """Train ``raw`` (a validated recipe as a dict) on every (fraction, seed), fit the curve and write
    ``curve.json``, ``curve.md`` and ``curve.png`` to ``out_dir``. ``metric`` defaults to the first of
    accuracy, macro_f1, f1, reward_accuracy, loss, perplexity that the runs report."""
    fractions, seeds = check_fractions(fractions, seeds)
    if not (raw.get("data") or {}).get("train"):
        raise RecipeError("curve: the recipe needs data.train (the fractions are taken of it)")
    out_dir = Path(out_dir)
    check_curve_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = (raw.get("output") or {}).get("name") or "run"
    runs = []
    for f in fractions:
        for seed in seeds:
            v = copy.deepcopy(raw)
            v["data"]["fraction"] = f
            v["train"] = {**(v.get("train") or {}), "seed": seed}
            name = f"{base}-f{f:g}-s{seed}"
            v["output"] = {**(v.get("output") or {}), "dir": str(out_dir / "runs"), "name": name, "overwrite": True}
            summary = run_variant(Variant(name, v), base_dir, isolate, say)
            runs.append({"fraction": f, "seed": seed, **summary})
    metric = metric or pick_metric(runs)
    if metric is None:
        raise LeantuneError(f"curve: no run finished with an evaluation; see the runs in {out_dir / 'runs'}")
    rows = []
    for f in fractions:
        done = [r for r in runs if r["fraction"] == f and metric in (r.get("eval_after") or {})]
        values = [float(r["eval_after"][metric]) for r in done]
        stats = summarize(values)
        rows.append({"fraction": f, "examples": round(statistics.fmean(r["train_examples"] for r in done))
                     if done else None, "mean": stats["mean"] if done else None,
                     "std": stats["std"] if done else None, "n": len(values), "values": values})
    higher = metric not in LOWER_IS_BETTER
    if higher and any(not 0 <= v <= 1 for r in rows for v in r["values"]):
        raise LeantuneError(f"curve: {metric} is not a fraction in [0, 1]; choose --metric loss or another "
                            f"rate (the fit models 1 − {metric} as an error)")
    done_rows = [r for r in rows if r["n"]]
    fit = fit_learning_curve(metric, higher, [r["examples"] for r in done_rows], [r["values"] for r in done_rows])
    chart = plot_curve(fit, out_dir / "curve.png")
    result = {"metric": metric, "lower_is_better": not higher, "points": rows, "fit": fit.as_dict(),
              "sentence": sentence(fit),
              "runs": [{"fraction": r["fraction"], "seed": r["seed"], "name": r.get("name"), "status": r["status"],
                        "train_examples": r.get("train_examples"), metric: (r.get("eval_after") or {}).get(metric)}
                       for r in runs]}
    atomic_write_text(out_dir / "curve.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "curve.md", markdown(fit, rows, chart.name if chart else None))
    return result, fit
