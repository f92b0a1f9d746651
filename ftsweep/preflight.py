"""Everything a user can fix, checked before a model loads and before an MLflow run exists.

A single run checks itself with these at its start; a sweep checks its jobs with `check` before it creates
a study, a storage file or a run."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from ftsweep import data as data_mod
from ftsweep import methods
from ftsweep import model as model_mod
from ftsweep.config import Precision, TrainConfig, validate
from ftsweep.errors import ConfigError
from ftsweep.tracking import Tracker


def resolve_device(name: str, pinned: Optional[str] = None) -> torch.device:
    """`device` as configured; `pinned` is the GPU id of a sweep trial's launcher slot (hydra.sweeper.devices)."""
    if pinned is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        return _pinned_device(pinned)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


def _pinned_device(device_id: str) -> torch.device:
    """The CUDA device with this id, selected by its ordinal among the ones this process sees.

    Not by setting CUDA_VISIBLE_DEVICES here: joblib's workers run one trial after another, and CUDA reads
    that variable once per process, so the second trial of a worker would stay on the first one's device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(torch.cuda.device_count())]
    if device_id not in ids:
        raise ConfigError(
            f"hydra.sweeper.devices names device {device_id}, which this process cannot see "
            f"(visible: {','.join(ids) or 'none'})"
        )
    device = torch.device("cuda", ids.index(device_id))
    torch.cuda.set_device(device)  # CUDA's context and default allocations go there too, not to device 0
    return device


def check_settings(cfg: TrainConfig, device: torch.device, pinned: Optional[str] = None) -> None:
    """The checks that need neither data nor weights: method, precision, lengths against the model's."""
    methods.check(cfg.method, device.type)
    model_mod.check_fits(cfg.method, cfg.model)
    if cfg.checkpoint_every_steps:
        methods.check_checkpointing(cfg.method)
    if cfg.distributed.nproc > 1:
        check_distributed(cfg, device, pinned)
    if cfg.precision == Precision.fp16 and device.type != "cuda":
        raise ConfigError(
            f"precision=fp16 needs CUDA (its GradScaler and kernels); this run's device is "
            f"{device.type}. Use precision=bf16 or fp32"
        )
    extra = methods.spec(cfg.method).extra_positions(cfg.method)
    limit = model_mod.max_positions(cfg.model) - extra
    if cfg.data.max_length > limit:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} is above model '{cfg.model.name}' limit of {limit} "
            f"tokens" + (" with this method's virtual tokens" if extra else "")
        )


def check_distributed(cfg: TrainConfig, device: torch.device, pinned: Optional[str] = None) -> None:
    n = cfg.distributed.nproc
    if cfg.checkpoint_every_steps or cfg.resume:
        raise ConfigError(
            f"distributed.nproc={n} does not write or resume checkpoints yet; leave "
            "checkpoint_every_steps and resume unset, or train on one process"
        )
    if pinned is not None:
        raise ConfigError(
            f"hydra.sweeper.devices gives each trial one device; distributed.nproc={n} needs {n}. "
            "Leave hydra.sweeper.devices unset (each trial then takes the devices after its own)"
        )
    if cfg.batch_size < n:  # a micro_batch_size is a multiple of n (config.py)
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch, split across distributed.nproc={n} "
            f"processes: it must be at least {n}"
        )
    if device.type == "cuda" and (device.index or 0) + n > torch.cuda.device_count():
        raise ConfigError(
            f"distributed.nproc={n} needs {n} CUDA devices from {device}; this machine has {torch.cuda.device_count()}"
        )


def load_inputs(cfg: TrainConfig) -> tuple[data_mod.TextSplits, Any]:
    """The data (read and checked) and the tokenizer; no weights."""
    return data_mod.load_splits(cfg.data), model_mod.load_tokenizer(cfg.model)


def check(cfg: DictConfig | TrainConfig, deep: bool = True) -> TrainConfig:
    """What a run checks before it exists, without training. `deep` also opens the tracking store and reads
    the data and tokenizer."""
    tc = validate(cfg)
    device = resolve_device(tc.device)
    if deep:
        Tracker().experiment_id(tc.experiment_name or tc.data.name)
    check_settings(tc, device)
    if deep:
        load_inputs(tc)
    return tc
