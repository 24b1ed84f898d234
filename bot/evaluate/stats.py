"""Accuracy with its uncertainty: the Wilson score interval."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95% interval


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for `correct` successes in `total` trials.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or `total`
    correct, which small evaluations hit often. No trials: nothing is known, (0, 1)."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= total:
        raise ValueError(f"{correct} correct out of {total}")
    p = correct / total
    z2 = z * z
    denominator = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denominator
    # At the ends the bound is exactly 0 or 1; float rounding would leave it a hair inside.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high
