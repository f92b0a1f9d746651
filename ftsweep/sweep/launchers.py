"""What a Hydra launcher can do, asked of it rather than guessed from its class name.

A launcher may declare `ftsweep_capabilities` (a `Capabilities`); Hydra's own launchers are described here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from hydra._internal.core_plugins.basic_launcher import BasicLauncher


@dataclass(frozen=True)
class Capabilities:
    # Runs each job in the sweeper's own process, on shared globals (HydraConfig, RNGs, the running
    # process's peak memory): the sweep then has one slot, on the main thread.
    in_process: bool = False
    # Started once, before the slots launch at the same time (each launch would start it otherwise).
    start_engine: Optional[Callable[[Any], None]] = None


def _start_ray(launcher: Any) -> None:
    start_ray = importlib.import_module("hydra_plugins.hydra_ray_launcher._launcher_util").start_ray
    start_ray(launcher.ray_cfg.init)


def _known(launcher: Any) -> Capabilities:
    if isinstance(launcher, BasicLauncher):
        return Capabilities(in_process=True)
    # Here, not at the top: an optional plugin (pip install 'ftsweep[ray]'), which warns when imported.
    try:
        from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
    except ImportError:
        return Capabilities()
    return Capabilities(start_engine=_start_ray) if isinstance(launcher, RayLauncher) else Capabilities()


def capabilities(launcher: Any) -> Capabilities:
    declared = getattr(launcher, "ftsweep_capabilities", None)
    return declared if isinstance(declared, Capabilities) else _known(launcher)
