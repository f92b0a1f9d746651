"""ftsweep/stats.py on constructed outcomes with known answers."""

import math

import numpy as np
import pytest

from ftsweep import stats


def test_the_wilson_interval_matches_newcombes_worked_example_and_its_edges():
    low, high = stats.accuracy_interval(81, 263)  # Newcombe (1998), Statistics in Medicine 17, table I: 0.2553-0.3662
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = stats.accuracy_interval(0, 10)  # all wrong: starts at 0, does not collapse to a point
    assert low == 0.0 and 0.27 < high < 0.28
    assert stats.accuracy_interval(10, 10)[1] == 1.0 and stats.accuracy_interval(0, 0) == (0.0, 1.0)
    for k in range(0, 51):  # the interval always holds the accuracy itself, exactly (no rounding a hair outside)
        low, high = stats.accuracy_interval(k, 50)
        assert low <= k / 50 <= high


def test_the_wilson_interval_covers_the_true_accuracy_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, n, sims = 0.8, 200, 4000
    hits = 0
    for k in rng.binomial(n, p, size=sims):
        low, high = stats.accuracy_interval(int(k), n)
        hits += low <= p <= high
    assert 0.93 <= hits / sims <= 0.97, hits / sims


def test_mcnemar_is_the_exact_binomial_over_the_discordant_examples():
    # 10 examples only a got right, 2 only b, 88 both or neither: P(X <= 2) + P(X >= 10), X ~ Bin(12, 1/2)
    a = np.array([1] * 10 + [0] * 2 + [1] * 50 + [0] * 38, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 50 + [0] * 38, dtype=bool)
    exact = 2 * sum(math.comb(12, k) for k in range(3)) / 2**12
    assert stats.mcnemar_p(a, b) == pytest.approx(exact, rel=1e-12)
    assert stats.mcnemar_p(a, a) == 1.0  # no discordant example: nothing to tell them apart


def test_paired_difference_ties_identical_runs_and_separates_a_clearly_better_one():
    rng = np.random.default_rng(1)
    b = rng.random(1000) < 0.6
    same = stats.paired_difference(b, b)
    assert (same.diff, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0) and same.tied
    a = b | (rng.random(1000) < 0.5)  # right wherever b is, and on about half of the rest
    better = stats.paired_difference(a, b)
    assert better.diff == pytest.approx(a.mean() - b.mean()) and better.low > 0 and not better.tied
    assert better.p_value < 1e-6
    assert stats.paired_difference(a, b) == better  # seeded: the same inputs, the same interval
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_difference(a, b[:10])


def test_the_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Two classifiers of known accuracy (0.80 and 0.75) on fresh 400-example eval sets, 300 times."""
    rng = np.random.default_rng(2)
    hits, sims = 0, 300
    for i in range(sims):
        shared = rng.random(400)  # the examples' difficulty, which both runs share: what pairing cancels
        a, b = shared < 0.80, shared < 0.75
        flip = rng.random(400) < 0.2  # and their own mistakes
        a, b = a ^ (flip & (rng.random(400) < 0.5)), b ^ (flip & (rng.random(400) < 0.5))
        true = (0.80 * 0.9 + 0.20 * 0.1) - (0.75 * 0.9 + 0.25 * 0.1)  # each: right, unless flipped (10 %)
        d = stats.paired_difference(a, b, n_boot=1000, seed=i)
        hits += d.low <= true <= d.high
    assert 0.90 <= hits / sims <= 0.99, hits / sims


def test_replicate_difference_covers_the_true_difference_about_95_percent_of_the_time():
    """Three seeds a side on the same 1,000 examples (60 % easy for all), true accuracies 0.85 and 0.82."""
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):
        shared = rng.random(1000) < 0.6
        a = [np.where(shared, True, rng.random(1000) < 0.625) for _ in range(3)]
        b = [np.where(shared, True, rng.random(1000) < 0.55) for _ in range(3)]
        d = stats.replicate_difference(a, b, n_boot=500)
        covered += d.low <= 0.03 <= d.high
    assert 0.90 <= covered / 200 <= 1.0  # two-level resampling is, if anything, a little wide


def test_replicate_difference_of_one_seed_a_side_is_the_paired_difference():
    rng = np.random.default_rng(3)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.7
    one, paired = stats.replicate_difference([a], [b]), stats.paired_difference(a, b)
    assert one.diff == pytest.approx(paired.diff) and one.p_value == paired.p_value
    assert abs(one.low - paired.low) < 0.01 and abs(one.high - paired.high) < 0.01


def test_replicate_interval_adds_the_seeds_spread_to_the_examples():
    low, high = stats.replicate_interval([0.80, 0.82, 0.84], 1000)
    seeds_only = 4.303 * 0.02 / 3**0.5  # t(2) times the seeds' standard error
    assert high - low > 2 * seeds_only and low < 0.82 < high
    assert stats.replicate_interval([0.8, 0.8], 1000) == pytest.approx(stats.replicate_interval([0.8], 1000))
