"""Configurations: finished trials that differ only in their `seed` are replicates of one configuration.

Seeds come from `hydra.sweeper.repeats=N` or from a swept `seed=1,2,3`; either way each trial's run records its
seed, and everything else it was given decides its configuration. A configuration's accuracy is its seeds'
mean, with an interval that adds the seeds' spread to the eval sample's (ftsweep/stats.py).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ftsweep import stats
from ftsweep.report.evidence import Comparison, compare
from ftsweep.report.rows import Row

SEED = "seed"
# Params a kept model's logging adds to its run (MLflow's transformers flavour): not what the trial was given.
AFTER_TRAINING = frozenset({"truncation"})


@dataclass
class Configuration:
    rows: list[Row]  # its finished trials, one per seed
    params: dict[str, str]  # what sets it apart from the sweep's other configurations (its seed excluded)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def accuracies(self) -> list[float]:
        return [r.finished_accuracy for r in self.rows]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def sd(self) -> Optional[float]:
        return statistics.stdev(self.accuracies) if self.n > 1 else None

    @property
    def seeds(self) -> list[str]:
        return [r.params.get(SEED, "?") for r in self.rows]

    @property
    def interval(self) -> tuple[float, float]:
        if self.n == 1:
            low, high = self.rows[0].get("eval/accuracy_ci_low"), self.rows[0].get("eval/accuracy_ci_high")
            if low is not None and high is not None:
                return low, high
        return stats.replicate_interval(self.accuracies, self.rows[0].eval_samples or 0)

    def cost(self, axis: str) -> Optional[float]:
        """The median over its seeds of the memory axis (`memory`) or of the training time (`time`)."""
        values = [r.memory_mb if axis == "memory" else r.get("perf/train_time_s") for r in self.rows]
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    @property
    def feasible(self) -> bool:
        return all(r.feasible for r in self.rows)


def given(r: Row) -> dict[str, str]:
    """What sets a trial's configuration: the values the sweep chose for it (its Optuna params) when the study
    can be read, else its run's params less the sweep's bookkeeping (`sweep.trial_id`, ...)."""
    if r.swept is not None:
        return r.swept
    return {k: v for k, v in r.params.items() if not k.startswith("sweep.") and k not in AFTER_TRAINING}


def configurations(rows: list[Row]) -> list[Configuration]:
    """The finished trials grouped by what they were given except their seed, most accurate first."""
    ok = [r for r in rows if r.ok]
    keys = sorted({k for r in ok for k in given(r)} - {SEED})
    varying = [k for k in keys if len({given(r).get(k) for r in ok}) > 1]
    groups: dict[tuple, list[Row]] = {}
    for r in ok:
        groups.setdefault(tuple(given(r).get(k) for k in varying), []).append(r)
    found = [
        Configuration(sorted(g, key=lambda r: r.trial or 0), {k: v for k, v in zip(varying, key) if v is not None})
        for key, g in groups.items()
    ]
    return sorted(found, key=lambda c: -c.mean)


def versus(a: Configuration, b: Configuration, correct: dict[str, np.ndarray]) -> Comparison:
    """Configuration a's accuracy against b's: one seed each is the trials' paired comparison; with more, the
    seeds' means, their spread added to the examples' (paired when every run has predictions on one split)."""
    if a.n == 1 and b.n == 1:
        return compare(a.rows[0], b.rows[0], correct)
    runs_a = [correct.get(r.run_id) for r in a.rows]
    runs_b = [correct.get(r.run_id) for r in b.rows]
    digests = {r.eval_digest for r in a.rows + b.rows}
    shapes = {x.shape for x in runs_a + runs_b if x is not None}
    if len(digests) == 1 and "" not in digests and len(shapes) == 1 and all(x is not None for x in runs_a + runs_b):
        p = stats.replicate_difference(runs_a, runs_b)  # type: ignore[arg-type]  # None ruled out just above
        return Comparison(p.diff, p.low, p.high, p.p_value, paired=True)
    low_a, high_a = a.interval
    low_b, high_b = b.interval
    half = ((high_a - low_a) ** 2 + (high_b - low_b) ** 2) ** 0.5 / 2  # two independent 95 % half-widths
    return Comparison(a.mean - b.mean, a.mean - b.mean - half, a.mean - b.mean + half, None, paired=False)


def against_full(summary: list[dict], configs: list[Configuration], correct: dict[str, np.ndarray]) -> None:
    """Each method's best configuration (the highest mean over its seeds) against full fine-tuning's best on the
    same model: `vs_full` in its summary. Configurations, not single trials: the best of many seeds is lucky."""
    best: dict[str, Configuration] = {}
    for c in configs:  # most accurate first
        best.setdefault(c.rows[0].group or c.rows[0].method, c)
    for s in summary:
        full = next((f for f in summary if f["base"] == "full" and f["model"] == s["model"]), None)
        if full is not None and s is not full and s["method"] in best and full["method"] in best:
            s["vs_full"] = versus(best[s["method"]], best[full["method"]], correct)
