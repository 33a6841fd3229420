"""The learning-curve power law (report/curve_fit.py) on synthetic points from a known law, and
the nested training subsets behind it (data.fraction)."""
import math

import numpy as np
import pytest

from leantune.data.fewshot import take_fraction
from leantune.errors import RecipeError
from leantune.recipe import load_recipe
from leantune.report.curve_fit import fit_learning_curve, fit_power_law, power_law, profile_fit, sentence
from leantune.workflows.learning_curve import check_fractions

A, B, C = 2.0, 0.5, 0.1          # error = 2·n^(−0.5) + 0.1
SIZES = [50, 125, 250, 500]


def truth(n):
    return A * n ** -B + C


def draw(rng, seeds, noise, sizes=SIZES):
    """Accuracy per seed and size: 1 − the true error + Gaussian noise."""
    return [list(1 - truth(n) - rng.normal(0, noise, seeds)) for n in sizes]


def test_fit_recovers_the_law_from_noisy_points():
    rng = np.random.default_rng(0)
    n = np.array([20, 50, 100, 200, 500, 1000, 2000, 5000.0])
    err = truth(n) + rng.normal(0, 0.002, len(n))
    for p in (fit_power_law(n, err)[0], profile_fit(n, err)[0]):
        assert p[0] == pytest.approx(A, rel=0.1) and p[1] == pytest.approx(B, abs=0.03)
        assert p[2] == pytest.approx(C, abs=0.01)


def test_fit_is_exact_without_noise_and_respects_bounds():
    n = np.array(SIZES, dtype=float)
    p, cov = fit_power_law(n, truth(n))
    assert p == pytest.approx([A, B, C], rel=1e-4)
    # rising points: the best falling law (a ≥ 0, b ≥ 0) is flat at their mean, never a rising one
    p, _ = fit_power_law(n, np.array([0.1, 0.2, 0.3, 0.4]))
    assert p[0] >= 0 and p[1] >= 0 and 0 <= p[2] <= 0.1 + 1e-9
    assert power_law(n, *p) == pytest.approx([0.25] * 4, abs=1e-6)


def test_prediction_and_gain_at_twice_the_data():
    rng = np.random.default_rng(1)
    fit = fit_learning_curve("accuracy", True, SIZES, draw(rng, 3, 0.002))
    assert fit.target_examples == 1000
    assert fit.predicted == pytest.approx(1 - truth(1000), abs=0.01)
    assert fit.gain == pytest.approx(truth(500) - truth(1000), abs=0.005)
    assert fit.predicted_interval[0] <= fit.predicted <= fit.predicted_interval[1]
    assert fit.gain_interval[0] <= fit.gain <= fit.gain_interval[1]
    assert fit.interval_method.startswith("bootstrap") and fit.trustworthy, fit.warnings
    assert sentence(fit).startswith(f"doubling the data to 1000 examples: predicted accuracy {fit.predicted:.4f}")


def test_loss_is_fitted_as_the_error_itself():
    rng = np.random.default_rng(2)
    vals = [list(truth(n) + rng.normal(0, 0.002, 2)) for n in SIZES]
    fit = fit_learning_curve("loss", False, SIZES, vals)
    assert fit.predicted == pytest.approx(truth(1000), abs=0.01) and fit.gain > 0
    assert "lower loss" in sentence(fit)


@pytest.mark.parametrize("seeds", [3, 5])
def test_interval_covers_the_truth_in_most_draws(seeds):
    rng = np.random.default_rng(seeds)
    covered = gain_covered = 0
    draws = 40
    for r in range(draws):
        fit = fit_learning_curve("accuracy", True, SIZES, draw(rng, seeds, 0.01), seed=r, draws=300)
        lo, hi = fit.predicted_interval
        covered += lo <= 1 - truth(1000) <= hi
        g_lo, g_hi = fit.gain_interval
        gain_covered += g_lo <= truth(500) - truth(1000) <= g_hi
    assert covered / draws >= 0.75 and gain_covered / draws >= 0.75, (covered, gain_covered)


def test_one_seed_uses_the_fit_covariance():
    rng = np.random.default_rng(3)
    sizes = [20, 50, 125, 250, 500, 1000]
    fit = fit_learning_curve("accuracy", True, sizes, draw(rng, 1, 0.003, sizes))
    assert fit.interval_method == "fit covariance (delta method)"
    lo, hi = fit.predicted_interval
    assert lo < fit.predicted < hi and lo <= 1 - truth(2000) <= hi


def test_untrustworthy_cases_are_flagged():
    rng = np.random.default_rng(4)
    few = fit_learning_curve("accuracy", True, SIZES[:2], draw(rng, 3, 0.01, SIZES[:2]))
    assert few.predicted is None and not few.trustworthy and "at least 3" in few.warnings[0]
    assert sentence(few).startswith("no prediction")
    bumpy = fit_learning_curve("accuracy", True, SIZES, [[0.6, 0.61], [0.7, 0.71], [0.65, 0.66], [0.75, 0.76]])
    assert not bumpy.trustworthy and any("not monotone" in w for w in bumpy.warnings)
    noisy = fit_learning_curve("accuracy", True, SIZES, draw(rng, 3, 0.08))
    assert not noisy.trustworthy and any("wider than the gain" in w for w in noisy.warnings)
    lone = fit_learning_curve("accuracy", True, SIZES[:3], draw(rng, 1, 0.0, SIZES[:3]))
    assert lone.predicted is not None and lone.predicted_interval is None
    assert any("no interval" in w for w in lone.warnings) and "Not trustworthy" in sentence(lone)


def test_nested_fractions_of_the_right_size():
    rows = [{"line": i} for i in range(37)]
    subsets = {f: take_fraction(rows, f, seed=7) for f in (0.1, 0.25, 0.5, 0.7, 1.0)}
    for f, sub in subsets.items():
        assert len(sub) == math.ceil(round(f * 37, 9)) and [r["line"] for r in sub] == sorted(r["line"] for r in sub)
    assert len(subsets[0.7]) == 26 and subsets[1.0] == rows
    fs = sorted(subsets)
    for small, big in zip(fs, fs[1:]):
        assert {r["line"] for r in subsets[small]} < {r["line"] for r in subsets[big]}
    other = {r["line"] for r in take_fraction(rows, 0.25, seed=8)}
    assert other != {r["line"] for r in subsets[0.25]}  # another seed, another subset
    assert take_fraction(rows, None, seed=7) is rows
    assert len(take_fraction(rows[:3], 0.1, seed=0)) == 1  # never empty


def test_fraction_in_the_recipe_and_the_command_arguments():
    assert load_recipe(raw={"model": "x", "data": {"fraction": 0.5}}).data.fraction == 0.5
    for bad in (0, 1.5):
        with pytest.raises(RecipeError):
            load_recipe(raw={"model": "x", "data": {"fraction": bad}})
    assert check_fractions([1, 0.25, 0.5, 0.25], [2, 0]) == ([0.25, 0.5, 1], [0, 2])
    with pytest.raises(RecipeError, match="0 < f"):
        check_fractions([0.5, 2], [0])
