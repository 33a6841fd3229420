"""The learning-curve chart: the metric against training examples (log scale), each size's
seeds as mean ± std, the fitted power law (curve_fit.py) and its prediction at twice the data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from .curve_fit import CurveFit, power_law


def plot_curve(fit: CurveFit, path: Path) -> Path | None:
    """Write the chart to ``path`` (PNG); None when no size has a result."""
    import matplotlib  # lazy: charts only; the import takes ~1 s
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: charts only; the import takes ~1 s
    if not fit.points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    n = [p["examples"] for p in fit.points]
    ax.errorbar(n, [p["mean"] for p in fit.points], yerr=[p["std"] for p in fit.points], fmt="o", capsize=3,
                label="measured (mean ± std over seeds)")
    if fit.params:
        grid = np.geomspace(min(n) / 1.2, fit.target_examples * 1.2, 200)
        ax.plot(grid, [fit.to_metric(e) for e in power_law(grid, **fit.params)], "-", color="C1",
                label=f"fit: b = {fit.params['b']:.3g}, error floor c = {fit.params['c']:.3g}")
        lo_hi = fit.predicted_interval
        yerr = None if lo_hi is None else [[fit.predicted - lo_hi[0]], [lo_hi[1] - fit.predicted]]
        ax.errorbar([fit.target_examples], [fit.predicted], yerr=yerr, fmt="s", color="C3", capsize=4,
                    label=f"2× data (predicted{'' if fit.trustworthy else ', not trustworthy'})")
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel(fit.metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, force=True, what="chart") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
