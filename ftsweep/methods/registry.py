"""The method registry: a method is one config dataclass and one `register_method` call.

The registration carries everything the rest of ftsweep asks about a method (its apply function, whether it is
a peft adapter, its checkpoint support, CUDA-only, extra positions, the run-name part, default target modules
per architecture), so model.py and train.py ask `spec(cfg)` and never branch on the config's class. It also puts
the schema in Hydra's ConfigStore, so `method=<name>` composes without a YAML file.

No torch, transformers or peft here or in the methods' modules at import time: ftsweep.config imports them (the
schemas must be in the ConfigStore before the command line composes), and the CLI starts without loading them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ftsweep.errors import ConfigError, ModelError, check_config

if TYPE_CHECKING:
    from torch import nn

# Names of classification-head modules across BERT-family models (peft uses the same list for SEQ_CLS).
HEAD_MODULES = ("classifier", "pre_classifier", "score")


@dataclass
class MethodConfig:
    """What every method has. A method's own dataclass subclasses it and holds its defaults (lr included)."""

    name: str = MISSING  # the `method=` choice; register_method sets it in the composed schema
    lr: float = MISSING  # the method's default learning rate; top-level `lr` wins
    lr_range: List[float] = field(default_factory=lambda: [1e-5, 1e-3])  # log-uniform bounds for lr searches

    def __post_init__(self) -> None:
        check_config(
            len(self.lr_range) == 2 and 0 < self.lr_range[0] < self.lr_range[1],
            f"method.lr_range must be [low, high] with 0 < low < high, got {self.lr_range}",
        )


ApplyFn = Callable[["nn.Module", Any, int], "nn.Module"]  # (model, method config, total optimizer steps)


def _zero(cfg: Any) -> int:
    return 0


def _nothing(cfg: Any) -> None:
    return None


def _empty(cfg: Any) -> dict:
    return {}


@dataclass(frozen=True)
class MethodSpec:
    """What ftsweep knows of a method beyond its config. Callables take the method's (validated) config."""

    name: str
    config_cls: type
    apply: ApplyFn  # decides what trains (the classifier head always does); may wrap the model
    peft: bool = False  # a peft adapter on a frozen base: a kept model is the adapter (and a random base beside it)
    no_checkpoint: Optional[str] = None  # why checkpoint_every_steps cannot resume it the same; None: it can
    cuda_only: Optional[str] = None  # why it needs a CUDA GPU; None: any device
    requires: Mapping[str, str] = field(default_factory=dict)  # module it imports -> how to install it
    instead: Optional[str] = None  # the method to suggest where this one cannot run or checkpoint
    default_targets: Mapping[str, List[str]] = field(default_factory=dict)  # model_type -> target_modules for null
    extra_positions: Callable[[Any], int] = _zero  # positions it adds to every sequence (prompt tuning's tokens)
    run_name_part: Callable[[Any], Optional[str]] = _nothing  # e.g. "r8" in lora-r8-lr5e-4-bs16; None: no part
    ranks: Callable[[Any], Dict[str, int]] = _empty  # {setting: rank}: each must fit the model's hidden size
    load_kwargs: Callable[[Any], dict] = _empty  # extra from_pretrained kwargs (QLoRA's 4-bit base)

    @property
    def supports_checkpoint(self) -> bool:
        return self.no_checkpoint is None


SPECS: Dict[str, MethodSpec] = {}  # name -> spec, in registration order (the order error messages list them)


def register_method(
    name: str, config_cls: type, apply: ApplyFn, *, replace: bool = False, **settings: Any
) -> MethodSpec:
    """Make `method=<name>` a method: its spec here, and its schema in Hydra's ConfigStore as method/<name>
    (composable as it is) and method/base_<name> (for YAML files that extend it). `settings`: MethodSpec's
    fields. A conf/method/<name>.yaml, where there is one, comes first on the search path. A name already
    registered is an error unless `replace`."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
        raise TypeError(f"register_method('{name}'): {config_cls!r} is not a MethodConfig dataclass")
    if name in SPECS and not replace:
        raise ValueError(f"register_method('{name}'): a method of that name is registered; pass replace=True")
    spec = MethodSpec(name=name, config_cls=config_cls, apply=apply, **settings)
    node = OmegaConf.structured(config_cls)
    node.name = name
    store = ConfigStore.instance()
    store.store(group="method", name=name, node=node)
    store.store(group="method", name=f"base_{name}", node=node)
    SPECS[name] = spec
    return spec


def spec(method: Any) -> MethodSpec:
    """The spec of a method config (by its name), or of a method name."""
    name = method if isinstance(method, str) else method.name
    try:
        return SPECS[name]
    except KeyError:
        raise ModelError(f"unknown method '{name}'; known: {', '.join(SPECS)}") from None


def check(cfg: Any, device_type: str) -> None:
    """What can be known before loading anything: the name, CUDA-only methods on CUDA, their extra modules."""
    s = spec(cfg)
    instead = f" Use method={s.instead} here" if s.instead else ""
    if s.cuda_only and device_type != "cuda":
        raise ModelError(
            f"method={s.name} needs a CUDA GPU ({s.cuda_only}); this run's device is {device_type}.{instead}"
        )
    for module, install in s.requires.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ModelError(f"method={s.name} needs {module}: {install}") from exc


def check_checkpointing(cfg: Any) -> None:
    """checkpoint_every_steps with a method whose state a checkpoint cannot hold: a ConfigError."""
    s = spec(cfg)
    if not s.supports_checkpoint:
        instead = f"; use method={s.instead}" if s.instead else ""
        raise ConfigError(f"checkpoint_every_steps does not work with method={s.name}: {s.no_checkpoint}{instead}")


ConfigStore.instance().store(group="method", name="base_method", node=MethodConfig)
