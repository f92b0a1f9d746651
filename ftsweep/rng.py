"""Seeds and random states: the same config and seed give the same run, and a resumed run draws exactly what
it would have drawn (its data order, its dropout masks)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loader_state(loader) -> Any:
    """What decides the order of the next epoch's batches; nothing for a plain list of batches."""
    sampler = getattr(loader, "batch_sampler", None)
    if sampler is not None and hasattr(sampler, "epoch"):  # LengthGroupedBatchSampler: seed + epoch decide the order
        return {"epoch": sampler.epoch}
    generator = getattr(loader, "generator", None)
    return {"generator": generator.get_state()} if generator is not None else {}


def set_loader_state(loader: Any, state: Any) -> None:
    """`loader`: a DataLoader, or a distributed rank's ShardedLoader in front of one (it passes these through)."""
    if "epoch" in state:
        loader.batch_sampler.epoch = state["epoch"]
    elif "generator" in state:
        loader.generator.set_state(state["generator"])


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
