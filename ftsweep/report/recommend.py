"""The recommendation: the cheapest configuration the eval set cannot tell from the best, by memory and by time.

A configuration qualifies when its accuracy against the best configuration's is *tied* (the 95 % interval
covers 0) or, with a tolerance of t points (`hydra.sweeper.tolerance`, `--tolerance`), *non-inferior* (the
interval's low end is above -t). So t = 0 means ties only, and a larger t never drops a configuration. Within
a budget (`hydra.sweeper.constraints`) only the configurations inside it are candidates.

A tie from one seed may be luck: with many configurations, some tie by chance. The report calls a cheaper
configuration's "no measurable loss" *confirmed* only when it and the best were each run with at least two
seeds (`hydra.sweeper.repeats`, or `seed=1,2,3`) and still qualify on the seeds' means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ftsweep.report.evidence import Comparison
from ftsweep.report.replicates import Configuration, versus

AXES = ("memory", "time")
CONFIRMING_SEEDS = 2


@dataclass(frozen=True)
class Pick:
    axis: str  # "memory" or "time"
    config: Configuration
    vs_best: Comparison
    confirmed: bool  # both it and the best ran with several seeds

    @property
    def tied(self) -> bool:
        """Within noise of the best (else only within the tolerance)."""
        return self.vs_best.tied

    @property
    def verdict(self) -> str:
        if self.vs_best == Comparison.itself():
            return "the best itself"
        if not self.tied:
            return f"a loss within the tolerance: {self.vs_best.points()}"
        if self.confirmed:
            return f"no measurable loss, confirmed over {self.config.n} seeds: {self.vs_best.points()}"
        return f"no measurable loss on one seed (unconfirmed): {self.vs_best.points()}"


@dataclass(frozen=True)
class Recommendation:
    best: Optional[Configuration]  # the most accurate configuration within budget; None when there is none
    picks: list[Pick]  # the cheapest that qualifies, per axis
    tolerance_points: float
    versus_best: list[tuple[Configuration, Comparison]]  # every configuration within budget against the best


def qualifies(c: Comparison, tolerance_points: float) -> bool:
    return c.tied or c.low >= -tolerance_points / 100.0


def recommend(
    configs: list[Configuration], correct: dict[str, np.ndarray], tolerance_points: float = 0.0
) -> Recommendation:
    """The best configuration within budget (highest mean accuracy), and for each axis the cheapest one that
    qualifies against it (the best itself when nothing cheaper does)."""
    within = [c for c in configs if c.feasible]
    if not within:
        return Recommendation(None, [], tolerance_points, [])
    best = max(within, key=lambda c: c.mean)
    against = {id(c): (Comparison.itself() if c is best else versus(c, best, correct)) for c in within}
    picks = []
    for axis in AXES:
        candidates = [c for c in within if c.cost(axis) is not None and qualifies(against[id(c)], tolerance_points)]
        if not candidates:
            continue
        cheapest = min(candidates, key=lambda c: (c.cost(axis), -c.mean))
        vs = against[id(cheapest)]
        confirmed = cheapest.n >= CONFIRMING_SEEDS and best.n >= CONFIRMING_SEEDS
        picks.append(Pick(axis, cheapest, vs, confirmed))
    return Recommendation(best, picks, tolerance_points, [(c, against[id(c)]) for c in within])
