"""What a sweep is: its settings (`hydra.sweeper.*`), and the frozen definition built from them.

The definition is everything that decides which trials a study holds: the search space (replicates' seeds
included, see replicates.py), the fixed overrides, objectives and directions, sampler, pruner and constraints.
Its canonical JSON names the study, so the same command always finds the same study, whatever Optuna version
runs it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional, cast

import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ftsweep.config import TrainConfig
from ftsweep.contract import check_metric_names
from ftsweep.errors import ConfigError
from ftsweep.sweep.replicates import SEED, first_seed_only, grid_with_seeds, with_seeds
from ftsweep.sweep.storage import check_url

log = logging.getLogger("ftsweep.sweep")

MAXIMIZE = ("accuracy", "f1")  # objective names containing these are maximised; everything else minimised
# motpe: the old name of multi-objective TPE; bruteforce: every combination of a conditional (custom) space once
SAMPLERS = ("auto", "grid", "tpe", "gp", "random", "nsga2", "motpe", "bruteforce")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
DIRECTIONS = ("maximize", "minimize")
Direction = Literal["maximize", "minimize"]


@dataclass
class SweepSettings:
    """`hydra.sweeper.*`: the one place where a sweep's settings are declared, with their defaults."""

    sampler: Any = "auto"  # auto (grid when every swept key is a list, else tpe), grid, tpe, gp, random, nsga2,
    # bruteforce (each combination of a conditional custom_search_space once; set n_trials to their number);
    # or hydra-optuna-sweeper's shape, a node {_target_: optuna.samplers.TPESampler, seed: N} (read as tpe, seed N)
    seed: int = 42  # sampler seed
    direction: Optional[Any] = None  # null: from `objectives` (accuracy and f1 maximised, the rest minimised)
    storage: Optional[str] = None  # null: sqlite:///multirun/optuna.db; journal:///path.log; postgresql://...
    study_name: Optional[str] = None  # null: derived from the sweep definition, so the same command resumes
    n_trials: int = 20  # the study's total (a rerun runs only the remainder); a grid's total is its size
    repeats: int = 1  # runs of each configuration, with seeds seed, seed+1, ...; n_trials counts runs, a grid grows N x
    n_jobs: int = 1  # trials in flight at once, one per launcher slot (with hydra/launcher=joblib, ray, submitit_*)
    devices: Optional[List[str]] = None  # GPU ids, one per slot: slot i runs its trials on devices[i % len]
    max_failure_rate: float = 0.5  # stop when more than this fraction of finished trials failed ...
    min_trials_before_abort: int = 4  # ... once at least this many have finished
    stale_after_s: Optional[float] = None  # RUNNING trials of other hosts older than this count as dead
    params: Optional[Dict[str, str]] = None  # search space, in override syntax: {lr: tag(log, interval(1e-5, 1e-3))}
    custom_search_space: Optional[str] = None  # dotpath of fn(cfg, trial) adding conditional parameters
    pruner: str = "none"  # none, median, successive_halving, hyperband: stop hopeless trials at an eval
    pruner_startup_trials: int = 5  # median: no pruning until this many trials completed
    pruner_warmup_steps: int = 0  # median: no pruning before this optimizer step
    constraints: Dict[str, float] = field(default_factory=dict)  # budgets {metric: upper bound}; above: infeasible
    tolerance: float = 0.0  # accuracy points a recommended cheaper configuration may lose; 0: ties only (the report)
    plan: bool = False  # probe each cost shape, predict each trial's time and memory, write plan.json; train nothing
    prescreen: bool = True  # with a bound on a predicted metric: skip trials predicted over it, untrained
    # skip only above bound x (1 + margin): above the predictions' measured overshoot (at most 20.3 % on step
    # time, 10.0 % on trial time, none on memory: docs/sweeps.md), so that no configuration that fits is skipped
    prescreen_margin: float = 0.25

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"hydra.sweeper.{message}")

        if isinstance(self.sampler, dict):
            self.sampler, seed = _sampler_from_node(self.sampler)
            self.seed = self.seed if seed is None else seed
        need(self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}; got '{self.sampler}'")
        need(self.pruner in PRUNERS, f"pruner must be one of {', '.join(PRUNERS)}; got '{self.pruner}'")
        need(self.n_trials >= 1, f"n_trials must be >= 1, got {self.n_trials}")
        need(
            isinstance(self.repeats, int) and not isinstance(self.repeats, bool) and self.repeats >= 1,
            f"repeats must be an integer >= 1 (runs of each configuration, one seed each), got {self.repeats!r}",
        )
        need(self.n_jobs >= 1, f"n_jobs must be >= 1, got {self.n_jobs}")
        need(self.devices is None or len(self.devices) > 0, "devices must list at least one device id, or be null")
        need(0.0 <= self.max_failure_rate <= 1.0, f"max_failure_rate must be in [0, 1], got {self.max_failure_rate}")
        need(
            self.min_trials_before_abort >= 1,
            f"min_trials_before_abort must be >= 1, got {self.min_trials_before_abort}",
        )
        need(
            self.stale_after_s is None or self.stale_after_s > 0, f"stale_after_s must be > 0, got {self.stale_after_s}"
        )
        need(
            self.pruner_startup_trials >= 0 and self.pruner_warmup_steps >= 0,
            "pruner_startup_trials and pruner_warmup_steps must be >= 0",
        )
        for name, bound in (self.constraints or {}).items():
            need(
                isinstance(bound, (int, float)) and math.isfinite(bound),
                f"constraints.{name} must be a number (an upper bound), got {bound!r}",
            )
        check_metric_names(self.constraints or {}, "hydra.sweeper.constraints")
        need(
            isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 100,
            f"tolerance is in accuracy points, 0 <= tolerance < 100, got {self.tolerance!r}",
        )
        for name in ("plan", "prescreen"):
            value = getattr(self, name)
            need(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        need(
            isinstance(self.prescreen_margin, (int, float))
            and not isinstance(self.prescreen_margin, bool)
            and 0 <= self.prescreen_margin < 10,
            f"prescreen_margin is a fraction of the bound, 0 <= prescreen_margin < 10 (0.25: 25 %), "
            f"got {self.prescreen_margin!r}",
        )
        if self.storage is not None:
            check_url(self.storage)

    @classmethod
    def from_config(cls, node: Any) -> "SweepSettings":
        """From the composed `hydra.sweeper` node (interpolations resolved), minus Hydra's `_target_`."""
        values = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
        values.pop("_target_", None)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"hydra.sweeper: {exc}") from exc


# hydra-optuna-sweeper's sampler nodes (its config.py) and the ftsweep sampler each one means.
SAMPLER_TARGETS = {
    "optuna.samplers.TPESampler": "tpe",
    "optuna.samplers.GPSampler": "gp",
    "optuna.samplers.RandomSampler": "random",
    "optuna.samplers.GridSampler": "grid",
    "optuna.samplers.NSGAIISampler": "nsga2",
    "hydra_plugins.hydra_optuna_sweeper._impl.create_nsgaii_sampler": "nsga2",
    "optuna.samplers.BruteForceSampler": "bruteforce",
}
_NODE_KEYS = ("_target_", "seed", "_partial_")  # the rest (n_startup_trials, ...) ftsweep's sweeper sets itself


def _sampler_from_node(node: dict) -> tuple[str, Optional[int]]:
    """`hydra.sweeper.sampler` written for hydra-optuna-sweeper: its sampler name and seed in ftsweep's terms."""
    target = node.get("_target_")
    choices = "hydra.sweeper.sampler=" + "|".join(s for s in SAMPLERS if s != "motpe")
    if target not in SAMPLER_TARGETS:
        raise ConfigError(
            f"hydra.sweeper.sampler._target_={target} has no equivalent in ftsweep's sweeper; use "
            f"{choices}, or hydra/sweeper=optuna for hydra-optuna-sweeper's own"
        )
    extra = sorted(k for k, v in node.items() if k not in _NODE_KEYS and v is not None)
    if extra:
        raise ConfigError(
            f"hydra.sweeper.sampler.{extra[0]}: ftsweep's sweeper sets its sampler's settings itself "
            f"(sampler={SAMPLER_TARGETS[target]}, seed); drop {', '.join(extra)}, or use "
            f"hydra/sweeper=optuna for hydra-optuna-sweeper's own"
        )
    seed = node.get("seed")
    return SAMPLER_TARGETS[target], None if seed is None else int(seed)


def _search(
    settings: SweepSettings, arguments: List[str], run_seed: int
) -> tuple[Dict[str, BaseDistribution], Dict[str, Any], tuple[int, ...], Optional[list[dict[str, Any]]]]:
    """The search space (the seed in it with replicates), the fixed overrides, the seeds and the grid (None unless
    every swept key is a choice list) that the settings and the command line's sweep arguments describe."""
    try:
        given = _last_of_each(list(arguments))
        params = _last_of_each([f"{k}={v}" for k, v in (settings.params or {}).items()])
        # The command line wins over hydra.sweeper.params, whether it sweeps the key or fixes it.
        overrides = [o for k, o in params.items() if k not in given] + list(given.values())
        space, fixed, _ = create_params_from_overrides(overrides)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's override grammar, Optuna's bounds checks
        raise ConfigError(f"cannot read the sweep's search space: {exc}") from exc
    space, fixed, seeds = with_seeds(space, fixed, settings.repeats, run_seed)
    configs = {k: v for k, v in space.items() if k != SEED}  # what a sampler searches: never the seed
    grid = None
    if settings.sampler in ("auto", "grid") and not settings.custom_search_space:
        points = _grid(configs)
        grid = grid_with_seeds(points, seeds) if points is not None else None
    if settings.sampler == "grid" and grid is None:
        raise ConfigError("hydra.sweeper.sampler=grid needs every swept key to be a choice list")
    if not space and not settings.custom_search_space:
        raise ConfigError(
            "a sweep (-m) needs at least one swept key, e.g. batch_size=8,16 or "
            "'lr=tag(log, interval(1e-5, 1e-3))'; to run once, drop -m"
        )
    if not configs and grid is None and not settings.custom_search_space:
        raise ConfigError(
            f"hydra.sweeper.sampler={settings.sampler} has nothing to search: only the seed varies "
            "(drop the sampler, and each seed runs once)"
        )
    return space, fixed, seeds, grid


def _last_of_each(overrides: List[str]) -> dict[str, str]:
    """Each key's override. Where a key is given twice the later one wins, as in Hydra (`... max_steps=2
    max_steps=6` is a shorter base made longer), and a warning names the one dropped: a sweep of it would
    otherwise vanish without a word. A deletion (`~key`) is an error: the trials' configs would not see it."""
    kept: dict[str, str] = {}
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if o.is_delete():  # each trial composes its config from set values only
            raise ConfigError(f"a sweep cannot delete a key ({text}); set it to a value instead")
        key = o.key_or_group + (f"@{o.package}" if o.package else "")
        if key in kept:
            log.warning("%s is given twice: %s replaces %s (the later one wins)", key, text, kept.pop(key))
        kept[key] = text
    return kept


def directions_for(objectives: List[str]) -> list[str]:
    return ["maximize" if any(m in name for m in MAXIMIZE) else "minimize" for name in objectives]


def canonical(dist: BaseDistribution) -> dict[str, Any]:
    """A distribution as plain data that stays the same across Optuna versions (unlike its repr)."""
    if isinstance(dist, CategoricalDistribution):
        return {"choices": list(dist.choices)}
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    if not isinstance(dist, (IntDistribution, FloatDistribution)):
        raise ConfigError(f"unsupported search-space distribution {type(dist).__name__}")
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log, "step": dist.step}


_ONLY_THESE = "a sweep's space holds categorical, int and float distributions (create_params_from_overrides)"


def _legacy_repr(dist: BaseDistribution) -> str:
    """repr() of the same distribution under optuna 2.10, which named studies made by ftsweep 0.1."""
    if isinstance(dist, CategoricalDistribution):
        return f"CategoricalDistribution(choices={tuple(dist.choices)!r})"
    if isinstance(dist, IntDistribution):
        name = "IntLogUniformDistribution" if dist.log else "IntUniformDistribution"
        return f"{name}(high={dist.high}, low={dist.low}, step={dist.step})"
    assert isinstance(dist, FloatDistribution), _ONLY_THESE
    if dist.log:
        return f"LogUniformDistribution(high={dist.high}, low={dist.low})"
    if dist.step is not None:
        return f"DiscreteUniformDistribution(high={dist.high}, low={dist.low}, q={dist.step})"
    return f"UniformDistribution(high={dist.high}, low={dist.low})"


def _range_ends(dist: BaseDistribution) -> list[Any]:
    """Both ends of an int or float range."""
    assert isinstance(dist, (IntDistribution, FloatDistribution)), _ONLY_THESE
    return [dist.low, dist.high]


def _digest(definition: dict[str, Any]) -> str:
    return "ftsweep-" + hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SweepDefinition:
    space: Dict[str, BaseDistribution]
    fixed: Dict[str, str]
    objectives: tuple[str, ...]
    directions: tuple[Direction, ...]  # each checked against DIRECTIONS in build()
    sampler: str  # resolved: grid, tpe, gp, random or nsga2
    requested_sampler: str  # as the user wrote it (only the legacy study name needs it)
    n_trials: int
    seed: int
    grid: Optional[tuple[dict, ...]]
    custom_search_space: Optional[str]
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_steps: int
    constraints: Dict[str, float] = field(default_factory=dict)
    study_name_override: Optional[str] = None
    seeds: tuple[int, ...] = ()  # each configuration's seeds (space[SEED]'s choices); (): one run each, as before
    tolerance: float = 0.0  # the report's, not the study's: not part of its identity

    @classmethod
    def build(
        cls, settings: SweepSettings, objectives: List[str], arguments: List[str], run_seed: int = TrainConfig.seed
    ) -> "SweepDefinition":
        """From the settings and the command line's sweep arguments; every mistake is a ConfigError here.
        `run_seed`: the composed config's `seed`, the first of each configuration's seeds with repeats."""
        space, fixed, seeds, grid = _search(settings, arguments, run_seed)
        objectives = list(objectives)
        check_metric_names(objectives, "objectives")
        if settings.direction is None:
            directions = directions_for(objectives)
        else:
            directions = [settings.direction] if isinstance(settings.direction, str) else list(settings.direction)
        if len(directions) != len(objectives) or any(d not in DIRECTIONS for d in directions):
            raise ConfigError(
                f"hydra.sweeper.direction must be maximize/minimize, one per objective {objectives}; got {directions}"
            )
        sampler = "grid" if grid is not None else settings.sampler
        if sampler in ("auto", "motpe"):
            sampler = "tpe"  # TPE handles several objectives itself since optuna 4 (MOTPESampler is gone)
        if settings.pruner != "none":
            if len(objectives) > 1:
                raise ConfigError(
                    "Optuna cannot prune a multi-objective study: set hydra.sweeper.pruner=none "
                    f"(objectives: {objectives})"
                )
            if not objectives[0].startswith("eval/"):
                raise ConfigError(f"pruning needs an eval/ objective reported during training, not {objectives[0]}")
        return cls(
            space=space,
            fixed={k: str(v) for k, v in fixed.items()},
            objectives=tuple(objectives),
            directions=cast(tuple[Direction, ...], tuple(directions)),  # each checked against DIRECTIONS above
            sampler=sampler,
            requested_sampler=settings.sampler,
            n_trials=len(grid) if grid is not None else settings.n_trials,
            seed=settings.seed,
            grid=tuple(grid) if grid is not None else None,
            custom_search_space=settings.custom_search_space,
            pruner=settings.pruner,
            pruner_startup_trials=settings.pruner_startup_trials,
            pruner_warmup_steps=settings.pruner_warmup_steps,
            constraints={k: float(v) for k, v in (settings.constraints or {}).items()},
            study_name_override=settings.study_name,
            seeds=seeds,
            tolerance=float(settings.tolerance),
        )

    def probe_points(self) -> list[dict[str, Any]]:
        """Parameter sets that together try every choice and both ends of every range once: enough to find
        an unknown key or a bad value in any trial before the sweep starts (not the whole grid)."""
        ends = {
            k: list(d.choices) if isinstance(d, CategoricalDistribution) else _range_ends(d)
            for k, d in self.space.items()
        }
        base = {k: values[0] for k, values in ends.items()}
        points, seen = [base], {json.dumps(base, sort_keys=True, default=str)}
        for key, values in ends.items():
            for value in values[1:]:
                point = {**base, key: value}
                if (ident := json.dumps(point, sort_keys=True, default=str)) not in seen:
                    seen.add(ident)
                    points.append(point)
        return points

    def plan(self) -> str:
        """What the sweep runs, for its start-up line: with replicates, how the trials multiply."""
        n = len(self.seeds)
        if not n:
            return f"{self.sampler}, {self.n_trials} trials in all"
        seeds = self.seeds if n <= 5 else (*self.seeds[:2], "...", self.seeds[-1])
        shown = ", ".join(map(str, seeds))
        if self.grid is not None:
            return f"grid of {len(self.grid) // n} points × {n} seeds = {self.n_trials} trials; seeds {shown}"
        full, last = divmod(self.n_trials, n)
        parts = [f"{full} configuration{'s' if full != 1 else ''} × {n} seeds"] if full else []
        parts += [f"1 with {last} of its {n} seeds"] if last else []
        return (
            f"{self.sampler}: {' + '.join(parts)} = {self.n_trials} trials, hydra.sweeper.n_trials counting trials, "
            f"not configurations; seeds {shown}"
        )

    # ---- identity
    def canonical(self) -> dict[str, Any]:
        """The definition as plain data: what the study name hashes and what the parent run records."""
        out: dict[str, Any] = {
            "space": {k: canonical(v) for k, v in sorted(self.space.items())},
            "fixed": dict(sorted(self.fixed.items())),
            "objectives": list(self.objectives),
            "directions": list(self.directions),
            "sampler": self.sampler,
            "custom": self.custom_search_space,
        }
        if self.pruner != "none":
            out["pruner"] = self.pruner
        if self.constraints:
            out["constraints"] = dict(sorted(self.constraints.items()))
        return out

    @property
    def study_name(self) -> str:
        return self.study_name_override or _digest(self.canonical())

    @property
    def legacy_study_name(self) -> str:
        """The name ftsweep 0.1 (optuna 2.10) gave this definition, so an old study is found again."""
        sampler = "grid" if self.grid is not None else self.requested_sampler
        old: dict[str, Any] = {
            "space": {k: _legacy_repr(v) for k, v in sorted(self.space.items())},
            "fixed": dict(sorted(self.fixed.items())),
            "directions": list(self.directions),
            "objectives": list(self.objectives),
            "sampler": sampler,
            "custom": self.custom_search_space,
        }
        if self.pruner != "none":
            old["pruner"] = self.pruner
        return _digest(old)

    # ---- the Optuna objects it implies
    def make_sampler(self, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
        """Seeded, and the seed moves on with the study (see runner._claim). SeedSequence keeps the streams of
        (seed, k) apart: a plain seed + k would make seed 1's second trial seed 2's first."""
        seed = int(np.random.SeedSequence([self.seed, trials_so_far]).generate_state(1)[0])
        # TPE/GP need some random configurations; not 10 of a 12-trial budget. Counted in trials: with its seeds each.
        per = max(1, len(self.seeds))
        startup = per * min(10, max(3, -(-self.n_trials // per) // 3))
        constraints = constraint_values if self.constraints else None  # None: the samplers' default
        samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
            "tpe": lambda: optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, constraints_func=constraints
            ),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, constraints_func=constraints),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: optuna.samplers.RandomSampler(seed=seed),  # grid points are enqueued, fixed
            "bruteforce": lambda: _Exhaustive(seed=seed),
        }
        sampler = samplers[self.sampler]()
        return first_seed_only(sampler, self.seeds) if self.seeds and self.grid is None else sampler

    def pruner_spec(self) -> dict[str, Any]:
        return {
            "name": self.pruner,
            "startup_trials": self.pruner_startup_trials,
            "warmup_steps": self.pruner_warmup_steps,
        }

    def feasibility(self, metrics: dict[str, float]) -> list[float]:
        """Optuna's convention: one value per constraint, <= 0 when the budget is met."""
        return [metrics.get(name, math.inf) - bound for name, bound in sorted(self.constraints.items())]


CONSTRAINTS_ATTR = "constraint_values"  # user attr holding feasibility() of a finished trial
SKIPPED_ATTR = "skipped"  # user attr of a trial that prescreening did not train: why (sweep/prescreen.py)


def constraint_values(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Samplers' constraints_func: read back what the sweeper stored before telling the trial."""
    return list(trial.user_attrs.get(CONSTRAINTS_ATTR, []))


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The same pruner in the sweeper and in every trial (Optuna pruners keep no state of their own)."""
    name = spec.get("name", "none")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"], n_warmup_steps=spec["warmup_steps"])
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


# Swept keys that scale a trial's work about linearly: their product orders a grid, largest first.
WORK_KEYS = ("batch_size", "grad_accum_steps", "max_steps", "epochs", "data.max_length", "data.max_train_samples")


def _work(point: dict[str, Any]) -> float:
    return math.prod(float(v) for k, v in point.items() if k in WORK_KEYS and isinstance(v, (int, float)))


def _grid(space: Dict[str, BaseDistribution]) -> Optional[list[dict[str, Any]]]:
    """Every combination when every swept key is a discrete choice list, in a fixed order: the largest
    trials first (longest-processing-time order), so that slots finish together instead of one slot running
    the longest trial alone at the end; and the largest batch fails first if memory is short."""
    choices = {k: d.choices for k, d in space.items() if isinstance(d, CategoricalDistribution)}
    if len(choices) < len(space):
        return None  # an empty space is one point: the run's own config (with its seeds, if the seed is swept)
    names = sorted(space)
    points = [dict(zip(names, values)) for values in itertools.product(*(choices[n] for n in names))]
    return sorted(points, key=_work, reverse=True)  # stable: equal work keeps the product's order


class _Exhaustive(optuna.samplers.BruteForceSampler):
    """Optuna's brute-force sampler for ask-and-tell: it stops a study through Study.stop(), which only works
    inside study.optimize; here n_trials ends the sweep (and the runner stops at the first repeat), so its stop
    is left out."""

    def __init__(self, seed: int):
        with warnings.catch_warnings():  # "experimental" since optuna 3.1: a warning per claimed trial otherwise
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(seed=seed)

    def after_trial(self, study, trial, state, values) -> None:
        pass
