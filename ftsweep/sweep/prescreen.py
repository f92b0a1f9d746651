"""Prescreening: a configuration whose probe predicts that it breaks a budget by more than the margin is not
trained (`hydra.sweeper.prescreen`, on by default; the margin is `hydra.sweeper.prescreen_margin`).

Only what a probe predicts can be prescreened (PREDICTED); a bound on any other metric is checked after the
trial, as before. The runner asks `verdict` for each claimed trial before launching it; a skipped trial is
told to Optuna by outcomes.Outcomes.skip.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable, Optional

from omegaconf import DictConfig
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ftsweep import microbatch
from ftsweep import probe as probe_mod
from ftsweep.errors import ConfigError, first_line, is_out_of_memory
from ftsweep.sweep.definition import SweepDefinition, SweepSettings
from ftsweep.sweep.replicates import SEED

log = logging.getLogger("ftsweep.sweep")
# The metrics a probe predicts (mem/peak_mb only on a GPU, where it is the CUDA peak; on a CPU it is RSS).
PREDICTED = (
    "mem/footprint_mb",
    "mem/peak_mb",
    "mem/cuda_train_peak_allocated_mb",
    "mem/train_state_mb",
    "perf/step_time_ms",
    "perf/train_time_s",
)
# Swept keys that cannot change a prediction: a search over these alone has one cost per choice of the others.
COST_FREE = ("lr", "seed", "optimizer.weight_decay", "optimizer.warmup_ratio", "log_every_steps")
MAX_ENUMERATED = 32  # configurations checked before a search starts, at most
Compose = Callable[[dict[str, Any]], DictConfig]  # overrides {key: value} -> the job's composed config


def _unit(metric: str) -> str:
    return " MB" if metric.endswith("_mb") else " ms" if metric.endswith("_ms") else " s"


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def over_budget(predicted: dict[str, float], constraints: dict[str, float], margin: float) -> list[str]:
    """Each bound a prediction breaks by more than `margin` (a fraction), as "predicted 5,210 MB > 4,000 MB"."""
    return [
        f"predicted {_num(predicted[name])}{_unit(name)} > {_num(bound)}{_unit(name)} ({name})"
        for name, bound in sorted(constraints.items())
        if name in predicted and predicted[name] > bound * (1 + margin)
    ]


class Prescreen:
    """Predictions for a running sweep's trials, one probe per new cost shape (cached across sweeps)."""

    def __init__(self, definition: SweepDefinition, settings: SweepSettings, compose: Compose):
        self.d, self.margin, self.compose = definition, settings.prescreen_margin, compose
        self.bounds = {k: v for k, v in definition.constraints.items() if k in PREDICTED}
        self.lock = threading.Lock()  # one probe at a time: probes time themselves

    @classmethod
    def of(cls, definition: SweepDefinition, settings: SweepSettings, compose: Compose) -> Optional["Prescreen"]:
        """None when prescreening is off or no bound is on a metric a probe predicts."""
        if not settings.prescreen or not any(k in PREDICTED for k in definition.constraints):
            return None
        return cls(definition, settings, compose)

    def predicted(self, overrides: dict[str, Any]) -> dict[str, float]:
        with self.lock:
            job = microbatch.fitted(self.compose(overrides))  # the micro-batch that its trial will fit
            found, measured = probe_mod.probe(job)
            if measured:
                log.info("probed a new cost shape in %.1f s", found.probe_s)
            return probe_mod.predict(job, found).metrics()

    def verdict(self, overrides: dict[str, Any]) -> Optional[tuple[str, dict[str, float]]]:
        """(why it is skipped, the predicted metrics), or None to train it."""
        try:
            predicted = self.predicted(overrides)
        except Exception as exc:  # a probe that cannot run is no reason to skip; its trial will say why
            if is_out_of_memory(first_line(exc, with_type=True)):
                return "its probe ran out of memory", {}
            log.warning("prescreening could not probe %s: %s; training it", overrides, first_line(exc))
            return None
        broken = over_budget(predicted, self.bounds, self.margin)
        return ("; ".join(broken), predicted) if broken else None

    def check_space(self) -> None:
        """A search (not a grid: its points are each skipped once) whose every configuration is predicted over
        budget would propose skipped trials until n_trials: one line now instead, before a study exists."""
        if self.d.grid is not None or self.d.custom_search_space:
            return
        points = _enumerate(self.d)
        if points is None:
            return
        reasons = []
        for point in points:
            verdict = self.verdict({**self.d.fixed, **point})
            if verdict is None:
                return
            reasons.append(verdict[0])
        raise ConfigError(
            f"every configuration of the search space is predicted over budget ({reasons[0]}, ...), "
            f"margin {100 * self.margin:.0f} %: nothing to train; raise hydra.sweeper.constraints, or set "
            "hydra.sweeper.prescreen=false to train them anyway"
        )


def _enumerate(d: SweepDefinition) -> Optional[list[dict[str, Any]]]:
    """One configuration per combination of the swept choices, any value for the cost-free ranges; None when
    a range could change the cost (batch_size=int(interval(8, 64))) or there are too many combinations."""
    lists: dict[str, list] = {}
    for name, dist in d.space.items():
        if name == SEED:
            continue
        if isinstance(dist, CategoricalDistribution):
            lists[name] = list(dist.choices)
        elif name in COST_FREE and isinstance(dist, (IntDistribution, FloatDistribution)):
            lists[name] = [dist.low]
        else:
            return None
    combos = list(itertools.islice(itertools.product(*lists.values()), MAX_ENUMERATED + 1))
    if len(combos) > MAX_ENUMERATED:
        return None
    return [dict(zip(lists, values)) for values in combos]
