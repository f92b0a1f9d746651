"""Seed replicates: the seeds every configuration of a sweep runs with, and which replicate is missing.

`hydra.sweeper.repeats=N` runs each configuration with the run's `seed` and the N-1 after it (seed, seed+1, ...);
a swept `seed=1,2,3` means the same with those seeds. Either way the seed becomes a categorical parameter of the
search space, placed first. So each trial records its seed as it records any parameter (Optuna's params, the
MLflow run's, trials.csv), a grid point with one seed is a point of its own to claim, and the seeds are part of
the study's identity (`seed=7 repeats=3` is the study of `seed=7,8,9`).

No sampler ever chooses a seed: a grid lists every point with every seed, and any other sampler proposes
configurations with the first seed, the seed left out of what it models (Optuna's PartialFixedSampler); the
other seeds run with the proposal's parameters (claims.py), and each replicate's value is told to the study.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Dict, Optional

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from ftsweep.errors import ConfigError

SEED = "seed"  # the run's top-level seed (TrainConfig.seed): what varies between a configuration's replicates
MAX_SEEDS = 1000  # a swept int range wider than this is an interval to search, not a list of seeds
REPLICATE_ATTR = "replicate"  # trial user attr: the index of its seed among the sweep's seeds


def with_seeds(
    space: Dict[str, BaseDistribution], fixed: Dict[str, Any], repeats: int, run_seed: int
) -> tuple[Dict[str, BaseDistribution], Dict[str, Any], tuple[int, ...]]:
    """(space, fixed, seeds): the search space with `seed` first when a configuration runs with several seeds,
    the fixed overrides without it, and those seeds; () when each configuration runs once, as before."""
    swept = space.get(SEED)
    if swept is not None and repeats > 1:
        raise ConfigError(
            f"hydra.sweeper.repeats={repeats} and a swept seed both set each configuration's seeds; keep one "
            "(a swept seed=1,2,3 runs every configuration once with each of those seeds)"
        )
    if swept is None and repeats == 1:
        return space, fixed, ()
    if swept is not None:
        seeds = _listed(swept)
    else:
        base = fixed.get(SEED, run_seed)  # `seed=7` on the command line is the first seed
        try:
            first = int(str(base))  # not int(7.5)
        except ValueError:
            raise ConfigError(f"seed must be an integer, got '{base}'") from None
        seeds = tuple(first + k for k in range(repeats))  # each one checked with the jobs (0 <= seed < 2**32)
    rest = {k: v for k, v in space.items() if k != SEED}
    return {SEED: CategoricalDistribution(list(seeds)), **rest}, {k: v for k, v in fixed.items() if k != SEED}, seeds


def _listed(dist: BaseDistribution) -> tuple[int, ...]:
    """The seeds a swept `seed` lists: seed=1,2,3, choice(1,2,3) or range(1,4)."""
    values: list[Any] = []
    if isinstance(dist, CategoricalDistribution):
        values = list(dist.choices)
    elif isinstance(dist, IntDistribution) and not dist.log and (dist.high - dist.low) // dist.step < MAX_SEEDS:
        values = list(range(dist.low, dist.high + 1, dist.step))
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"a swept seed lists its replicates' seeds (seed=1,2,3 or seed=range(1,4), at most {MAX_SEEDS}), "
            f"got {dist}; or run each configuration with N seeds: hydra.sweeper.repeats=N"
        )
    return tuple(dict.fromkeys(values))  # each seed once, in the order given


def grid_with_seeds(points: list[dict[str, Any]], seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """Every point with every seed, a point's seeds one after the other: the points keep their order (the largest
    trials first), and each configuration's replicates finish together."""
    if not seeds:
        return points
    return [{**point, SEED: seed} for point in points for seed in seeds]


def missing(taken: list[dict[str, Any]], seeds: tuple[int, ...]) -> Optional[dict[str, Any]]:
    """The parameters of the first configuration among `taken` (trials' parameters, oldest first) that lacks one of
    its seeds, with the first seed it lacks; None when every configuration has all of them."""
    found: dict[str, tuple[dict[str, Any], set]] = {}
    for params in taken:
        config = {k: v for k, v in params.items() if k != SEED}
        found.setdefault(json.dumps(config, sort_keys=True, default=str), (config, set()))[1].add(params.get(SEED))
    for config, present in found.values():
        for seed in seeds:
            if seed not in present:
                return {**config, SEED: seed}
    return None


def first_seed_only(sampler: optuna.samplers.BaseSampler, seeds: tuple[int, ...]) -> optuna.samplers.BaseSampler:
    """`sampler` proposing configurations with the first seed. The seed is also left out of the space it models
    (relative sampling: GP, NSGA-II), so it sees a configuration's replicates as values at one point."""
    with warnings.catch_warnings():  # "experimental" in Optuna: one warning per claim otherwise
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.PartialFixedSampler({SEED: seeds[0]}, sampler)
