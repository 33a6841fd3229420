"""A learning curve's power law and what doubling the data would buy.

The error falls with the number of training examples n as ``error = a·n^(−b) + c``: a power
law down to an irreducible error c (Hestness et al. 2017, "Deep Learning Scaling is
Predictable, Empirically", arXiv:1712.00409; Rosenfeld et al. 2020, "A Constructive
Prediction of the Generalization Error Across Scales", ICLR). The error is the metric itself
for losses and ``1 − metric`` for accuracies and F1. The law is fitted by least squares to the
mean over seeds at each size (a ≥ 0, 0 ≤ b ≤ 3, 0 ≤ c ≤ the smallest mean error: a profile
over b, refined by ``scipy.optimize.curve_fit``) and read at twice the largest size.

The interval is a percentile bootstrap over seeds when every size has two or more: each draw
resamples the seeds of every size with replacement (their spread widened by √(k/(k−1)), the
usual small-sample correction) and refits. With one seed per size it comes from the fit's
covariance (delta method, Student t) when there are more sizes than the law's three parameters.
The gain is the fitted improvement from the largest size to twice it. A fit is flagged as not
trustworthy, with the reason, when there are fewer than 3 sizes, when the mean error does not
fall steadily with more data, when there is no interval, or when the gain's interval is wider
than the gain.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

B_MAX = 3.0
B_GRID = np.linspace(0.0, B_MAX, 301)
DRAWS = 500


def power_law(n, a: float, b: float, c: float):
    return a * np.power(n, -b) + c


def profile_fit(n, err) -> np.ndarray:
    """(a, b, c) per row of ``err`` (draws × sizes) by the profile over b: for each b of a grid
    (step 0.01 in [0, 3]) the law is linear in a and c, solved by least squares under a ≥ 0,
    0 ≤ c ≤ that row's smallest error; the b with the smallest squared error wins. Global in b
    and vectorised on sums of x = n^(−b) and y = error, so a thousand bootstrap refits are quick."""
    n, y = np.asarray(n, dtype=float), np.atleast_2d(np.asarray(err, dtype=float))
    x = np.power(n[None, :], -B_GRID[:, None])                         # grid × sizes
    m = len(n)
    sx, sxx = x.sum(1)[None], (x * x).sum(1)[None]                     # 1 × grid
    sy, syy = y.sum(1)[:, None], (y * y).sum(1)[:, None]               # draws × 1
    sxy = y @ x.T                                                      # draws × grid
    c_max = np.maximum(y.min(axis=1), 0.0)[:, None]
    det = m * sxx - sx * sx
    safe = np.where(det > 1e-300, det, 1.0)
    a_free = np.where(det > 1e-300, (m * sxy - sx * sy) / safe, 0.0)
    cands = [(a_free, (sy - a_free * sx) / m)]                         # unconstrained
    for c in (np.zeros_like(c_max), c_max):                            # c on a bound, best a ≥ 0
        cands.append((np.maximum((sxy - c * sx) / sxx, 0.0), c))
    cands.append((0.0, np.clip(sy / m, 0.0, c_max)))                   # a = 0
    a = np.stack([np.broadcast_to(ca, sxy.shape) for ca, _ in cands])  # candidate × draws × grid
    c = np.stack([np.broadcast_to(cc, sxy.shape) for _, cc in cands])
    sse = a * a * sxx + m * c * c + syy + 2 * a * c * sx - 2 * a * sxy - 2 * c * sy
    sse = np.where((a >= 0) & (c >= 0) & (c <= c_max + 1e-12), sse, np.inf)
    rows = np.arange(len(y))
    cand, grid = np.divmod(sse.transpose(1, 0, 2).reshape(len(y), -1).argmin(axis=1), len(B_GRID))
    return np.stack([a[cand, rows, grid], B_GRID[grid], c[cand, rows, grid]], axis=1)


def fit_power_law(n, err) -> tuple[np.ndarray, np.ndarray]:
    """(a, b, c) and their covariance: the profile fit, refined by ``scipy.optimize.curve_fit``
    under the same bounds (kept only if it lowers the squared error)."""
    n, err = np.asarray(n, dtype=float), np.asarray(err, dtype=float)
    p = profile_fit(n, err)[0]
    sse = float(np.sum((power_law(n, *p) - err) ** 2))
    cov = np.full((3, 3), np.inf)
    c_max = max(float(err.min()), 0.0)
    lower, upper = [0.0, 0.0, 0.0], [np.inf, B_MAX, c_max + 1e-12]
    try:
        with warnings.catch_warnings():  # as many sizes as parameters: no covariance, which the caller handles
            warnings.simplefilter("ignore", OptimizeWarning)
            q, q_cov = curve_fit(power_law, n, err, p0=np.clip(p, lower, upper), bounds=(lower, upper), maxfev=2000)
    except (RuntimeError, ValueError):
        return p, cov
    if float(np.sum((power_law(n, *q) - err) ** 2)) <= sse + 1e-15:
        p, cov = q, q_cov
    return p, cov


def _gain(p, n_max: float, target: float) -> float:
    """Fitted fall of the error from n_max to target examples (≥ 0 for a ≥ 0, b ≥ 0)."""
    return float(power_law(n_max, *p) - power_law(target, *p))


@dataclass
class CurveFit:
    metric: str
    higher_is_better: bool
    points: list[dict]                      # examples, mean, std, n (seeds), values — metric units
    params: dict | None = None              # a, b, c of error = a·n^(−b) + c
    target_examples: int | None = None      # twice the largest size
    predicted: float | None = None          # the metric at target_examples
    predicted_interval: list[float] | None = None
    gain: float | None = None               # improvement of the metric from the largest size to target
    gain_interval: list[float] | None = None
    interval_method: str | None = None
    level: float = 0.95
    warnings: list[str] = field(default_factory=list)

    @property
    def trustworthy(self) -> bool:
        return self.predicted is not None and not self.warnings

    def as_dict(self) -> dict:
        return {**asdict(self), "trustworthy": self.trustworthy}

    def to_metric(self, err: float) -> float:
        return 1.0 - err if self.higher_is_better else err


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _bootstrap(n, values: list[np.ndarray], n_max: float, target: float, draws: int, seed: int):
    """(predicted errors, gains) of ``draws`` refits on seeds resampled within each size."""
    rng = np.random.default_rng(seed)
    widened = [v.mean() + math.sqrt(len(v) / (len(v) - 1)) * (v - v.mean()) for v in values]
    err = np.stack([rng.choice(w, size=(draws, len(w)), replace=True).mean(axis=1) for w in widened], axis=1)
    p = profile_fit(n, err).T
    return power_law(target, *p), power_law(n_max, *p) - power_law(target, *p)


def _delta(p, cov, n_max: float, target: float, dof: int, level: float):
    """Half-widths of the predicted error and of the gain from the fit's covariance."""
    a, b, _ = p
    tb, nb = target ** -b, n_max ** -b
    g_pred = np.array([tb, -a * tb * math.log(target), 1.0])
    g_gain = np.array([nb - tb, -a * (nb * math.log(n_max) - tb * math.log(target)), 0.0])
    q = stats.t.ppf(0.5 + level / 2, dof)
    return (q * math.sqrt(max(float(g_pred @ cov @ g_pred), 0.0)),
            q * math.sqrt(max(float(g_gain @ cov @ g_gain), 0.0)))


def fit_learning_curve(metric: str, higher_is_better: bool, examples: list[float], values: list[list[float]], *,
                       level: float = 0.95, draws: int = DRAWS, seed: int = 0) -> CurveFit:
    """Fit ``error = a·n^(−b) + c`` to the seed values of each size and predict the metric at
    twice the largest size, with an interval and the reasons not to trust it (module docstring).

    ``examples[i]`` is the number of training examples of size i, ``values[i]`` its metric per seed."""
    sizes = sorted((float(n), [float(v) for v in vs]) for n, vs in zip(examples, values) if vs)
    fit = CurveFit(metric, higher_is_better, [
        {"examples": int(round(n)), "mean": _mean_std(vs)[0], "std": _mean_std(vs)[1], "n": len(vs), "values": vs}
        for n, vs in sizes])
    if len(sizes) < 3:
        fit.warnings.append(f"only {len(sizes)} training-set size(s) with results: a power law (3 parameters) "
                            f"needs at least 3; no prediction")
        return fit
    n = np.array([s[0] for s in sizes])
    errs = [np.array([1.0 - v if higher_is_better else v for v in vs]) for _, vs in sizes]
    mean_err = np.array([e.mean() for e in errs])
    for i in range(len(n) - 1):
        if mean_err[i + 1] > mean_err[i]:
            fit.warnings.append(f"not monotone: the mean {metric} is worse at {n[i + 1]:.0f} examples than at "
                                f"{n[i]:.0f}, so a falling power law does not describe these points")
            break
    p, cov = fit_power_law(n, mean_err)
    n_max = float(n[-1])
    target = 2.0 * n_max
    fit.params = {"a": float(p[0]), "b": float(p[1]), "c": float(p[2])}
    fit.target_examples = int(round(target))
    fit.predicted = fit.to_metric(float(power_law(target, *p)))
    fit.gain = _gain(p, n_max, target)
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    if all(len(e) > 1 for e in errs):
        preds, gains = _bootstrap(n, errs, n_max, target, draws, seed)
        fit.interval_method = f"bootstrap over seeds ({draws} refits)"
        e_lo, e_hi = np.percentile(preds, [lo_q, hi_q])
        fit.gain_interval = [float(x) for x in np.percentile(gains, [lo_q, hi_q])]
    elif len(n) > 3 and np.all(np.isfinite(cov)):
        half_pred, half_gain = _delta(p, cov, n_max, target, len(n) - 3, level)
        fit.interval_method = "fit covariance (delta method)"
        e_pred = float(power_law(target, *p))
        e_lo, e_hi = e_pred - half_pred, e_pred + half_pred
        fit.gain_interval = [fit.gain - half_gain, fit.gain + half_gain]
    if fit.interval_method is None:
        fit.warnings.append("no interval: one seed per size and no more sizes than the law's 3 parameters "
                            "(run more seeds or more fractions)")
        return fit
    fit.predicted_interval = sorted([fit.to_metric(float(e_lo)), fit.to_metric(float(e_hi))])
    g_lo, g_hi = fit.gain_interval
    if g_hi - g_lo > fit.gain:
        fit.warnings.append(f"the gain's interval ({g_lo:.4f} to {g_hi:.4f}) is wider than the gain itself "
                            f"({fit.gain:.4f}): the data do not tell whether doubling helps")
    return fit


def sentence(fit: CurveFit) -> str:
    """'doubling the data to N examples: predicted METRIC X (interval), a gain of G', and the verdict."""
    if fit.predicted is None:
        return "no prediction: " + "; ".join(fit.warnings)
    pct = f"{round(fit.level * 100)}%"
    interval = ("" if fit.predicted_interval is None
                else f" ({pct} interval {fit.predicted_interval[0]:.4f} to {fit.predicted_interval[1]:.4f})")
    gain = "" if fit.gain_interval is None else f" ({fit.gain_interval[0]:.4f} to {fit.gain_interval[1]:.4f})"
    lower = "" if fit.higher_is_better else f" (lower {fit.metric})"
    text = (f"doubling the data to {fit.target_examples} examples: predicted {fit.metric} {fit.predicted:.4f}"
            f"{interval}, a gain of {fit.gain:.4f}{gain}{lower}")
    if fit.warnings:
        text += ". Not trustworthy: " + "; ".join(fit.warnings)
    return text


def _cell(v) -> str:
    return "" if v is None else f"{v:.4f}"


def markdown(fit: CurveFit, rows: list[dict], chart: str | None) -> str:
    """``curve.md``: a row per fraction (fraction, examples, mean, std, seeds), the fitted law, the sentence."""
    lines = [f"# Learning curve ({fit.metric})", "", f"| fraction | examples | {fit.metric} mean | std | seeds |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fraction']:g} | {r['examples'] or ''} | {_cell(r['mean'])} | {_cell(r['std'])} | "
                     f"{r['n']} |")
    lines.append("")
    if fit.params:
        err = f"1 − {fit.metric}" if fit.higher_is_better else fit.metric
        lines += [f"Fitted: {err} = {fit.params['a']:.4g}·n^(−{fit.params['b']:.4g}) + {fit.params['c']:.4g}"
                  + (f"; interval: {fit.interval_method}" if fit.interval_method else "") + ".", ""]
    lines.append(sentence(fit) + ".")
    if chart:
        lines += ["", f"![learning curve]({chart})"]
    return "\n".join(lines) + "\n"
