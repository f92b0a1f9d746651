"""Hydra plugin shim: `hydra/sweeper=ftsweep` (the default in conf/config.yaml).

Hydra only loads sweepers from the hydra_plugins namespace; the logic lives in ftsweep/sweep/.
The settings are ftsweep's own SweepSettings, handed straight through.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from ftsweep.sweep.definition import SweepSettings


@dataclass
class FtsweepSweeperConf(SweepSettings):
    _target_: str = "hydra_plugins.ftsweep_sweeper.sweeper.FtsweepSweeper"


def _node() -> DictConfig:
    from omegaconf import OmegaConf

    node = OmegaConf.structured(FtsweepSweeperConf)
    # Open to new keys, so that `hydra.sweeper.constraints={mem/peak_mb: 3000}` works on the command line
    # (Hydra's struct mode would refuse every metric name as an unknown key).
    OmegaConf.set_struct(node.constraints, False)
    return node


ConfigStore.instance().store(group="hydra/sweeper", name="ftsweep", node=_node(), provider="ftsweep")


class FtsweepSweeper(Sweeper):
    def __init__(self, **_settings: Any) -> None:
        pass  # read from the composed config in sweep(), where interpolations resolve

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: List[str]) -> None:
        from ftsweep.errors import FtsweepError
        from ftsweep.sweep.definition import SweepDefinition
        from ftsweep.sweep.runner import SweepRunner
        from ftsweep.sweep.storage import default_url

        try:
            settings = SweepSettings.from_config(self.config.hydra.sweeper)
            definition = SweepDefinition.build(settings, list(self.config.objectives), arguments)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            runner = SweepRunner(settings, definition, self.config, self.launcher,
                                 settings.storage or default_url(sweep_dir), sweep_dir)
            summary = runner.run()
        except FtsweepError as exc:
            print(f"ftsweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            print(f"ftsweep: sweep interrupted ({exc or 'Ctrl-C'}); rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
        if not summary["ok"]:
            sys.exit(1)
