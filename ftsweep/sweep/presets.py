"""Search spaces of the presets that Optuna's override syntax cannot express (conditional parameters).

Used as `hydra.sweeper.custom_search_space: ftsweep.sweep.presets.pareto_space`: fn(cfg, trial).
A method's lr and lr_range come from composing `method=<name>` as the sweep's own config was composed (its
config sources: ftsweep's conf/, the user's ./conf, hydra.searchpath), never from a file path."""

from __future__ import annotations

import functools
from typing import Any, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.trial import Trial

from ftsweep.compose import compose_config
from ftsweep.config import CONF_DIR, SEARCH_BATCH_SIZES

METHODS = ("full", "lora", "head")
ALWAYS_ON_THE_PATH = ("hydra", "schema")  # the providers of Hydra's own configs and the ConfigStore: always added


def _config_sources(cfg: DictConfig) -> tuple[str, ...]:
    """The config source URIs `cfg` was composed from (hydra.runtime.config_sources), else ftsweep's conf/."""
    sources = OmegaConf.select(cfg, "hydra.runtime.config_sources")
    uris = tuple(f"{s.schema}://{s.path}" for s in sources or () if s.provider not in ALWAYS_ON_THE_PATH)
    return uris or (f"file://{CONF_DIR}",)


@functools.lru_cache(maxsize=32)
def _composed_method(sources: tuple[str, ...], method: str) -> dict:
    """The `method` node that `method=<method>` composes to (once per sweep process and method)."""
    return cast(
        dict[str, Any],
        OmegaConf.to_container(compose_config(f"method={method}", search_path=sources).method, resolve=True),
    )


def method_defaults(cfg: DictConfig, method: str) -> dict:
    """What `method=<method>` brings (lr, lr_range, ...), composed from the config sources of `cfg`."""
    return _composed_method(_config_sources(cfg), method)


def method_lr_range(cfg: DictConfig, method: str) -> tuple[float, float]:
    """The lr bounds of `method`: an explicit `method.lr_range=` on the command line, else the method's own."""
    for override in OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task)):
        if override.get_key_element().lstrip("+") == "method.lr_range" and not override.is_sweep_override():
            low, high = cast(list, override.value())  # not a sweep: the list [low, high]
            return float(low), float(high)
    low, high = method_defaults(cfg, method)["lr_range"]
    return float(low), float(high)


def pareto_space(cfg: DictConfig, trial: Trial) -> None:
    """Method, its lr, batch size, and the LoRA rank only where the method is LoRA."""
    method = trial.suggest_categorical("method", list(METHODS))
    trial.suggest_float("lr", *method_lr_range(cfg, method), log=True)
    trial.suggest_categorical("batch_size", list(SEARCH_BATCH_SIZES))
    if method == "lora":
        trial.suggest_categorical("method.r", [4, 8, 16])


# `make study`'s learning rates, chosen by a pilot on the same slice (docs/study/README.md): each method's best sits
# inside its range. Evenly spaced, so that a float step expresses them: how a brute-force lr may depend on the method.
STUDY_LRS = {"full": (5e-5, 1.25e-4, 2e-4), "lora": (1e-3, 3e-3, 5e-3)}


def method_default_lr(cfg: DictConfig, method: str) -> float:
    return float(method_defaults(cfg, method)["lr"])


def study_space(cfg: DictConfig, trial: Trial) -> None:
    """`make study`: full fine-tuning and LoRA, each at the three learning rates of STUDY_LRS (batch size fixed
    by the preset). With sampler=bruteforce and hydra.sweeper.repeats=3, each of the 6 runs with 3 seeds."""
    method = trial.suggest_categorical("method", ["full", "lora"])
    low, mid, high = STUDY_LRS[method]
    trial.suggest_float("lr", low, high, step=float(f"{mid - low:.6g}"))
