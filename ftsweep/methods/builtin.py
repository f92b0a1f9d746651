"""Methods that choose which of the model's own weights train: full, head, bitfit, freeze."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, cast

from ftsweep.errors import ModelError, check_config
from ftsweep.methods.registry import HEAD_MODULES, MethodConfig, register_method

if TYPE_CHECKING:
    from torch import nn


def is_head(param_name: str) -> bool:
    return any(part in HEAD_MODULES for part in param_name.split("."))


def train_only(model: nn.Module, keep: Callable[[str], bool]) -> nn.Module:
    """Only the parameters `keep` names train, and the classifier head (which always does)."""
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name) or is_head(name))
    return model


# --------------------------------------------------------------------------- full
@dataclass
class FullMethodConfig(MethodConfig):
    # 1e-4, not 5e-5: the default run's 157 steps reached 0.881 against 0.865 (3 seeds each; TF-IDF 0.865), and
    # both studies' best lay at 1e-4 to 1.25e-4 (docs/benchmarks.md, "default run")
    lr: float = 1e-4
    lr_range: List[float] = field(default_factory=lambda: [1e-5, 2e-4])


register_method("full", FullMethodConfig, lambda model, cfg, total_steps: model)


# --------------------------------------------------------------------------- head (linear probe)
@dataclass
class HeadMethodConfig(MethodConfig):
    lr: float = 1e-3  # only a linear layer trains: a high rate
    lr_range: List[float] = field(default_factory=lambda: [1e-4, 1e-2])


register_method("head", HeadMethodConfig, lambda model, cfg, total_steps: train_only(model, lambda name: False))


# --------------------------------------------------------------------------- bitfit
@dataclass
class BitFitMethodConfig(MethodConfig):
    lr: float = 1e-3
    lr_range: List[float] = field(default_factory=lambda: [1e-4, 1e-2])


register_method(
    "bitfit", BitFitMethodConfig, lambda model, cfg, total_steps: train_only(model, lambda name: name.endswith(".bias"))
)


# --------------------------------------------------------------------------- freeze
@dataclass
class FreezeMethodConfig(MethodConfig):
    lr: float = 5e-5
    lr_range: List[float] = field(default_factory=lambda: [1e-5, 2e-4])
    frozen_layers: int = 3  # the embeddings and the bottom N encoder layers stay frozen

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(self.frozen_layers >= 0, f"method.frozen_layers must be >= 0, got {self.frozen_layers}")


_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def _freeze(model: nn.Module, cfg: FreezeMethodConfig, total_steps: int) -> nn.Module:
    n_layers = cast(Any, model).config.num_hidden_layers  # a transformers model: nn.Module's stub types it Tensor
    if cfg.frozen_layers > n_layers:
        raise ModelError(f"method.frozen_layers={cfg.frozen_layers} but the model has {n_layers} layers")

    def trains(name: str) -> bool:
        if "embeddings" in name.split("."):
            return False
        layer = _LAYER.search(name)
        return layer is None or int(layer.group(1)) >= cfg.frozen_layers

    return train_only(model, trains)


register_method("freeze", FreezeMethodConfig, _freeze)
