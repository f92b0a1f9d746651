"""The recommendation on constructed predictions with a known truth: the cheapest configuration tied with the
best, by memory and by time; the tolerance; confirmation by seeds; and, by simulation, how often the rule
recommends a configuration that is truly worse."""

import numpy as np
import pytest

from ftsweep.report.recommend import recommend
from ftsweep.report.replicates import configurations
from ftsweep.report.rows import Row

N = 1000


def outcomes(rng, p_right: float, shared: np.ndarray) -> np.ndarray:
    """Per-example correctness: examples are easy for every run (shared) or decided afresh with p_right."""
    return np.where(shared, True, rng.random(N) < p_right)


def row(trial, name, correct, memory, time, seed="1"):
    metrics = {"eval/accuracy": float(correct.mean()), "mem/footprint_mb": memory, "perf/train_time_s": time}
    r = Row(trial, name, {"method": name, "seed": seed}, metrics, "FINISHED", run_id=f"r{trial}")
    r.eval_digest, r.eval_samples = "same", N
    return r


def build(rng, truths, seeds=1):
    shared = rng.random(N) < 0.6
    costs = {"full": (1000.0, 100.0), "lora": (400.0, 90.0), "head": (600.0, 20.0)}
    rows, correct = [], {}
    for name, truth in zip(costs, truths):
        for s in range(seeds):
            right = outcomes(rng, (truth - 0.6) / 0.4, shared)
            r = row(len(rows), name, right, *costs[name], seed=str(s))
            rows.append(r)
            correct[r.run_id] = right
    return rows, correct


def picks(rows, correct, tolerance=0.0):
    rec = recommend(configurations(rows), correct, tolerance)
    return rec, {p.axis: p for p in rec.picks}


def test_cheapest_tied_by_memory_and_by_time_beside_the_best():
    rows, correct = build(np.random.default_rng(0), (0.85, 0.85, 0.70))
    rec, by = picks(rows, correct)
    assert rec.best.params["method"] in ("full", "lora")
    assert by["memory"].config.params["method"] == "lora" and by["memory"].tied and not by["memory"].confirmed
    # head is far worse: the cheapest in time that ties is lora (90 s) or full, never head
    assert by["time"].config.params["method"] != "head"
    assert "unconfirmed" in by["memory"].verdict or by["memory"].verdict == "the best itself"


def test_a_tolerance_admits_a_small_proven_loss_and_never_drops_a_tie():
    rows, correct = build(np.random.default_rng(1), (0.88, 0.85, 0.80))
    _, strict = picks(rows, correct)
    assert strict["memory"].config.params["method"] == "full"  # 3 points lower is not a tie at 1,000 examples
    _, loose = picks(rows, correct, tolerance=6.0)
    assert loose["memory"].config.params["method"] == "lora" and not loose["memory"].tied
    assert loose["memory"].verdict.startswith("a loss within the tolerance: -3.")


def test_a_budget_keeps_the_answer_inside_it():
    rows, correct = build(np.random.default_rng(2), (0.88, 0.85, 0.70))
    for r in rows:
        r.over_budget = ["mem/footprint_mb"] if r.params["method"] == "full" else []
    rec, _ = picks(rows, correct)
    assert rec.best.params["method"] == "lora"


def test_replicates_confirm_a_tie():
    rows, correct = build(np.random.default_rng(3), (0.85, 0.85, 0.70), seeds=3)
    rec, by = picks(rows, correct)
    assert [c.n for c in configurations(rows)] == [3, 3, 3]
    pick = by["memory"]
    if pick.config is not rec.best:
        assert pick.confirmed and "confirmed over 3 seeds" in pick.verdict


def wrong_rate(truths, seeds, trials=200):
    """How often the memory pick is a configuration truly worse than the best (lora's truth below full's)."""
    rng = np.random.default_rng(42)
    wrong = 0
    for _ in range(trials):
        rows, correct = build(rng, truths, seeds)
        _, by = picks(rows, correct)
        wrong += by["memory"].config.params["method"] == "lora"
    return wrong / trials


@pytest.mark.parametrize(
    "gap, seeds, trials, low, high",
    [  # measured 2026-12-06 (docs/report.md): 0.06, 0.52 and 0.225 at 200 simulated sweeps each
        (0.05, 1, 200, 0.01, 0.13),  # 5 points worse: one seed rarely ties it with the best
        (0.03, 1, 200, 0.35, 0.70),  # 3 points worse: one seed ties it half the time
        (0.03, 3, 60, 0.05, 0.45),  # three seeds a side confirm far fewer of those ties
    ],
)
def test_simulated_rate_of_recommending_a_worse_configuration(gap, seeds, trials, low, high):
    """1,000 examples, 60 % easy for every run; the rest right with a probability that sets the true accuracy."""
    assert low <= wrong_rate((0.85, 0.85 - gap, 0.60), seeds, trials) <= high
