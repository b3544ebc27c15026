"""Loss against training compute: the power law with an irreducible term, L(C) = E + A * (C / C0)^-alpha,
fitted by least squares (scipy's `curve_fit`) to every finished run of a variant (all sizes, all seeds), with
95% t-intervals of E, A and alpha from the fit's covariance. C0 is the smallest compute of the points, so A
is the reducible loss there. The residual degrees of freedom come from the seeds: three sizes need at least
two seeds each for an interval."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

from .stats import CONFIDENCE


def power_law(c: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    return e + a * np.power(c, -alpha)


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> dict:
    """E, A, alpha with their intervals (None where the points leave no degrees of freedom), C0, the point
    count and the parameters that ended on a bound of the search (E in [0, min loss], A >= 0, alpha in
    [0, 5]: such a value is not determined by the points), or `error` when the points cannot determine the
    curve (fewer than three distinct computes)."""
    c = np.asarray(compute, dtype=float)
    y = np.asarray(loss, dtype=float)
    if len(np.unique(c)) < 3:
        return {"n": len(c), "error": "fewer than three distinct compute values: the curve is not determined"}
    c0 = float(c.min())
    x = c / c0
    guess = [0.9 * y.min(), max(y.max() - 0.9 * y.min(), 1e-6), 0.3]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, covariance = optimize.curve_fit(
                power_law, x, y, p0=guess, bounds=([0, 0, 0], [y.min(), np.inf, 5]), maxfev=20000
            )
    except (RuntimeError, ValueError) as e:
        return {"n": len(c), "error": f"the fit did not converge ({e})"}
    dof = len(c) - 3
    half = [None] * 3
    if dof > 0 and np.all(np.isfinite(covariance)):
        scale = stats.t.ppf(0.5 + CONFIDENCE / 2, dof)
        half = [float(scale * math.sqrt(max(v, 0.0))) for v in np.diag(covariance)]
    lower, upper = [0, 0, 0], [y.min(), np.inf, 5]
    at_bound = [
        name
        for name, value, low, high in zip(("E", "A", "alpha"), params, lower, upper, strict=True)
        if np.isclose(value, low, atol=1e-6) or np.isclose(value, high, atol=1e-6)
    ]
    fit = {"n": len(c), "c0": c0, "degrees_of_freedom": dof, "at_bound": at_bound}
    for name, value, h in zip(("E", "A", "alpha"), params, half, strict=True):
        fit[name] = {
            "value": float(value),
            "low": None if h is None else value - h,
            "high": None if h is None else value + h,
        }
    return fit


def predict(fit: dict, compute: np.ndarray) -> np.ndarray:
    return power_law(
        np.asarray(compute) / fit["c0"], fit["E"]["value"], fit["A"]["value"], fit["alpha"]["value"]
    )
