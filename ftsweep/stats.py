"""How sure an accuracy is: one run's interval, and two runs compared example by example on the same eval set.

- `accuracy_interval`: Wilson's score interval for one accuracy (k correct of n). Better than the normal
  approximation near 0 or 1 and for small n, and needs no random draws, so a run's interval is reproducible.
- `paired_difference`: the accuracy difference of two runs scored on the same examples, with a 95 % paired
  bootstrap interval (examples resampled, both runs' outcomes kept together, so what the two runs share cancels).
- `mcnemar_p`: McNemar's exact test on the examples the two runs disagree on (an exact binomial, two-sided).
Two runs are *tied* when the paired interval covers 0.
- `replicate_interval`: one configuration run with several seeds. Two independent errors add up: the seeds'
  spread (Student's t on the per-seed accuracies, as the next seeds would differ) and the eval set's sampling
  (the examples, shared by every seed, so averaging seeds does not shrink it); their 95 % half-widths are
  combined in quadrature.
- `replicate_difference`: two such configurations compared on the same examples, by a two-level bootstrap
  (seeds resampled within each side, then examples, paired), so both sources of error are in one interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest
from scipy.stats import t as student_t

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def accuracy_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's 95 % score interval for `correct` of `n`; (0, 1) when there is nothing to judge by."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The bounds hold p exactly: at p = 0 or 1 rounding would otherwise put it a hair outside.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


@dataclass(frozen=True)
class Paired:
    """Run a's accuracy minus run b's, on the same examples, in accuracy points (0.053 is 5.3 points)."""

    diff: float
    low: float
    high: float
    p_value: float  # McNemar's exact test
    n: int

    @property
    def tied(self) -> bool:
        return self.low <= 0.0 <= self.high


def paired_difference(a_correct: np.ndarray, b_correct: np.ndarray, n_boot: int = 2000, seed: int = 0) -> Paired:
    """Accuracy of a minus accuracy of b, with a 95 % percentile interval from `n_boot` paired bootstrap draws
    (seeded: the same inputs give the same interval) and McNemar's exact p-value."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_difference needs two equal-length, non-empty outcome vectors: {a.shape}, {b.shape}")
    per_example = a.astype(np.int8) - b.astype(np.int8)  # +1, 0 or -1 per example
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, a.size, size=(n_boot, a.size))
    boot = per_example[draws].mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return Paired(float(per_example.mean()), float(low), float(high), mcnemar_p(a, b), int(a.size))


def mcnemar_p(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """McNemar's exact test: of the examples exactly one run got right, is the split unlike a fair coin's?"""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue)


def _seed_half_width(spread_sq: float, df: int) -> float:
    """Student's t 95 % half-width for a mean whose squared standard error is `spread_sq`."""
    return float(student_t.ppf(0.975, df)) * math.sqrt(spread_sq) if df >= 1 else 0.0


def replicate_interval(accuracies: list[float], n_examples: int) -> tuple[float, float]:
    """A 95 % interval for a configuration's accuracy from its seeds' accuracies on the same `n_examples`: the
    seeds' spread (t with n - 1 degrees of freedom) and the eval sample's (normal) in quadrature."""
    acc = np.asarray(accuracies, dtype=float)
    mean = float(acc.mean())
    seeds = _seed_half_width(float(acc.var(ddof=1)) / acc.size, acc.size - 1) if acc.size > 1 else 0.0
    examples = Z95 * math.sqrt(mean * (1 - mean) / n_examples) if n_examples > 0 else 1.0
    half = math.hypot(seeds, examples)
    return max(0.0, mean - half), min(1.0, mean + half)


def replicate_difference(
    a_runs: list[np.ndarray], b_runs: list[np.ndarray], n_boot: int = 2000, seed: int = 0
) -> Paired:
    """Configuration a's mean accuracy minus b's, each over its seeds, all scored on the same examples, with a
    95 % two-level bootstrap interval: each draw resamples each side's seeds, then the examples (kept paired).
    With one seed a side it is `paired_difference`. McNemar's p compares the first seed of each."""
    a = np.stack([np.asarray(r, dtype=float) for r in a_runs])
    b = np.stack([np.asarray(r, dtype=float) for r in b_runs])
    if a.shape[1:] != b.shape[1:] or a.shape[1] == 0:
        raise ValueError(f"replicate_difference needs outcomes on the same examples: {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)

    def seed_means(runs: np.ndarray) -> np.ndarray:  # (n_boot, examples): each draw's resampled seeds, averaged
        n = runs.shape[0]
        return rng.multinomial(n, np.full(n, 1 / n), size=n_boot) / n @ runs

    per_draw = seed_means(a) - seed_means(b)
    examples = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    boot = np.take_along_axis(per_draw, examples, axis=1).mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    p = mcnemar_p(a[0].astype(bool), b[0].astype(bool))
    return Paired(float(a.mean() - b.mean()), float(low), float(high), p, int(a.shape[1]))
