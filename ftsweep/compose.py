"""conf/ composed outside the running app, as `python -m ftsweep` would compose it: for scripts, tests,
`resume=` and the presets' search spaces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path_from_sources
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from ftsweep.config import CONF_DIR


def compose_config(*overrides: str, search_path: Optional[Sequence[str]] = None) -> DictConfig:
    """conf/config.yaml with overrides, as `python -m ftsweep` would compose it (for scripts and tests; inside
    the running app, with the app's own search path). `search_path`: the config source URIs to compose from
    instead (file:///abs/conf, pkg://module), e.g. a composed config's hydra.runtime.config_sources; Hydra's own,
    the search-path plugins' (a user's ./conf) and the ConfigStore are added as for the app."""
    if search_path:
        return _compose_from(list(search_path), list(overrides))
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides))


def _compose_from(sources: list[str], overrides: list[str]) -> DictConfig:
    """Compose with a loader of its own, leaving GlobalHydra alone: a running app (a sweep's custom search space)
    keeps its own, and Hydra's initialize_* refuse to run while one is set. Hydra has no public API for this;
    hydra-core is pinned exactly in pyproject.toml."""
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path_from_sources(sources))
    cfg = loader.load_configuration("config", overrides, run_mode=RunMode.RUN, from_shell=False)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
