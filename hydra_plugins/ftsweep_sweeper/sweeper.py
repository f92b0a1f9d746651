"""Hydra plugin shim: `hydra/sweeper=ftsweep` (the default in conf/config.yaml).

Hydra only loads sweepers from the hydra_plugins namespace; the logic lives in ftsweep/sweep.py.
"""


import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class FtsweepSweeperConf:
    _target_: str = "hydra_plugins.ftsweep_sweeper.sweeper.FtsweepSweeper"
    sampler: str = "auto"  # auto (grid when every swept key is a list, else tpe / motpe), grid, tpe, random, motpe, nsga2
    seed: int = 42  # sampler seed
    direction: Optional[Any] = None  # null: from `objectives` (accuracy and f1 maximised, the rest minimised)
    storage: Optional[str] = None  # null: sqlite:///multirun/optuna.db; any RDB URL (postgresql://...) works
    study_name: Optional[str] = None  # null: derived from the sweep definition, so the same command resumes
    n_trials: int = 20  # the study's total (a rerun runs only the remainder); a grid's total is its size
    n_jobs: int = 1  # trials launched together (use with hydra/launcher=joblib)
    max_failure_rate: float = 0.5  # stop when more than this fraction of finished trials failed ...
    min_trials_before_abort: int = 4  # ... once at least this many have finished
    stale_after_s: Optional[float] = None  # RUNNING trials of other hosts older than this count as dead
    params: Optional[Dict[str, str]] = None  # search space, in override syntax: {lr: tag(log, interval(1e-5, 1e-3))}
    custom_search_space: Optional[str] = None  # dotpath of fn(cfg, trial) adding conditional parameters
    pruner: str = "none"  # none, median, successive_halving, hyperband: stop hopeless trials at an eval
    pruner_startup_trials: int = 5  # median: no pruning until this many trials completed
    pruner_warmup_steps: int = 0  # median: no pruning before this optimizer step


ConfigStore.instance().store(group="hydra/sweeper", name="ftsweep", node=FtsweepSweeperConf, provider="ftsweep")


class FtsweepSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from ftsweep.sweep import SweepSettings

        settings.pop("params", None)  # read from the full config in sweep(), where interpolations resolve
        self.settings = SweepSettings(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: List[str]) -> None:
        from ftsweep.sweep import SweepRunner

        try:
            summary = SweepRunner(self.settings, self.config, self.launcher, arguments).run()
        except KeyboardInterrupt as exc:
            print(f"ftsweep: sweep interrupted ({exc or 'Ctrl-C'}); rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
        if not summary["ok"]:
            sys.exit(1)
