"""Hydra plugins: `hydra/sweeper=ftsweep` (the default in conf/config.yaml), and the user's ./conf on the
search path. Hydra finds both through the `hydra.plugins` entry points in pyproject.toml.

The sweeper's logic lives in ftsweep/sweep/; its settings are ftsweep's own SweepSettings, handed through.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ftsweep import interrupt
from ftsweep.config import CONF_DIR, objectives_of
from ftsweep.errors import ConfigError, FtsweepError, describe_config_error
from ftsweep.sweep import results
from ftsweep.sweep.definition import SweepDefinition, SweepSettings
from ftsweep.sweep.storage import default_url


@dataclass
class FtsweepSweeperConf(SweepSettings):
    _target_: str = "hydra_plugins.ftsweep_sweeper.sweeper.FtsweepSweeper"


def _node() -> DictConfig:
    node = OmegaConf.structured(FtsweepSweeperConf)
    # Open to new keys, so that `hydra.sweeper.constraints={mem/peak_mb: 3000}` works on the command line
    # (Hydra's struct mode would refuse every metric name as an unknown key).
    OmegaConf.set_struct(node.constraints, False)
    return node


ConfigStore.instance().store(group="hydra/sweeper", name="ftsweep", node=_node(), provider="ftsweep")


class FtsweepSweeper(Sweeper):
    config: DictConfig  # Optional in Sweeper; here setup(), which Hydra calls before sweep(), sets it

    def __init__(self, **_settings: Any) -> None:
        pass  # read from the composed config in sweep(), where interpolations resolve

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.config_loader = hydra_context.config_loader
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> None:
        # Here, not at the top: Hydra imports this plugin at every start-up, single runs included, and these
        # bring in torch, transformers, peft, MLflow and matplotlib (the runner, the best model, the report).
        from ftsweep.conclude import conclude
        from ftsweep.sweep.plan import make_plan
        from ftsweep.sweep.prescreen import Prescreen
        from ftsweep.sweep.runner import SweepRunner

        try:
            settings = SweepSettings.from_config(self.config.hydra.sweeper)
            definition = SweepDefinition.build(
                settings, objectives_of(self.config), arguments, run_seed=int(self.config.seed)
            )
            self._check_jobs(definition)
            interrupt.check()  # a Ctrl-C during start-up stops here, before a study or run exists
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            if settings.plan:  # predicted, not trained: no study, no run
                make_plan(definition, settings, self._compose, sweep_dir / definition.study_name, self._in_process())
                return
            prescreen = Prescreen.of(definition, settings, self._compose)
            if prescreen is not None:
                prescreen.check_space()
            url = settings.storage or default_url(sweep_dir)
            runner = SweepRunner(settings, definition, self.config, self.launcher, url, sweep_dir, prescreen)
            try:
                summary = runner.run()
            finally:
                if runner.done is not None:  # the best model and the report follow whatever ended the runner
                    with interrupt.deferred():
                        conclude(runner.done)
            assert runner.done is not None  # run() returned, so its _close() wrote the results
            results.log_summary(summary, runner.done.sweep_dir)
        except FtsweepError as exc:
            print(f"ftsweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            print(f"ftsweep: sweep interrupted ({exc or 'Ctrl-C'}); rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
        if not summary["ok"]:
            sys.exit(1)

    def _check_jobs(self, definition) -> None:
        """Compose the jobs this sweep will launch and check them as a single run checks itself, before any
        study, storage file or MLflow run exists: an unknown key, a bad value, unusable data or an unusable
        tracking store is one line now instead of N failed trials. The first job also reads its data."""
        # Here, not at the top, as in sweep(): preflight brings torch, transformers, MLflow and datasets.
        from ftsweep.preflight import check

        for i, point in enumerate(definition.probe_points()):
            check(self._compose({**definition.fixed, **point}), deep=i == 0)

    def _compose(self, overrides: dict[str, Any]) -> DictConfig:
        """The config of the job these overrides launch, as Hydra composes it for the launcher."""
        try:
            job = self.config_loader.load_sweep_config(self.config, [f"{k}={v}" for k, v in overrides.items()])
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(describe_config_error(exc)) from exc
        with open_dict(job):
            del job["hydra"]
        return job

    def _in_process(self) -> bool:
        from ftsweep.sweep.launchers import capabilities

        return capabilities(self.launcher).in_process


class UserConfSearchPath(SearchPathPlugin):
    """A ./conf folder in the working directory adds config group options (./conf/data/mydata.yaml is
    data=mydata) beside ftsweep's own. Only when it exists: Hydra warns about a missing search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        user = Path("conf").resolve()
        if user.is_dir() and user != CONF_DIR.resolve():
            search_path.append(provider="ftsweep-user", path=f"file://{user}")
