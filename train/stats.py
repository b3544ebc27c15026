"""Seed statistics for comparing runs: the mean with its 95% t-interval, and the paired difference of two
variants (paired by seed: each seed's two runs saw the same data in the same order) with its t-interval and
the two-sided paired t-test p-value. Student's t comes from scipy."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

CONFIDENCE = 0.95


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float | int | None]:
    """Mean and its two-sided t-interval over `values` (one per seed); no interval below two values."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "low": None, "high": None, "sd": None}
    mean = math.fsum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None, "sd": None}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "sd": sd}


def paired_difference(
    variant: Sequence[float], baseline: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, float | int | bool | None]:
    """`variant - baseline` seed by seed: the mean difference, its t-interval, the paired t-test p-value and
    whether the interval excludes 0 (`resolved`). Identical differences (zero spread) give a zero-width
    interval: p = 1 when they are all 0, else p = 0."""
    if len(variant) != len(baseline):
        raise ValueError(f"paired samples differ in length: {len(variant)} and {len(baseline)}")
    differences = [v - b for v, b in zip(variant, baseline, strict=True)]
    summary = mean_interval(differences, confidence)
    p = None
    if summary["n"] >= 2:
        if summary["sd"] == 0:
            p = 1.0 if summary["mean"] == 0 else 0.0
        else:
            t = summary["mean"] / (summary["sd"] / math.sqrt(summary["n"]))
            p = float(2 * stats.t.sf(abs(t), summary["n"] - 1))
    resolved = p is not None and (summary["low"] > 0 or summary["high"] < 0)
    return {**summary, "p": p, "resolved": resolved}
