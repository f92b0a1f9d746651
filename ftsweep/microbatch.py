"""`micro_batch_size=auto`: the largest micro-batch whose probed memory fits the budget, found before a run starts.

With `micro_batch_size` set, `batch_size` is the batch the optimizer sees and each batch goes through the model
in forward passes of micro_batch_size examples, their gradients accumulated (ftsweep/loop.py, micro_batches), so
`perf/effective_batch_size` stays batch_size whatever the micro-batch. `auto` tries the divisors of batch_size
from the largest down and keeps the first whose probe (ftsweep/probe.py) puts the memory axis (the exact training
state on a CPU, the CUDA peak on a GPU) under the budget less MARGIN. The budget is `memory_budget_mb`, else on
CUDA the card's free memory; a CPU has no such number, so there `auto` needs a budget.

The finding is not stored apart: each candidate's probe is cached under its cost shape (micro_batch_size is part
of it), so the next run of the same shape finds the same micro-batch from the cache without a step, while a
CUDA budget read from the free memory may choose again.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Callable, Optional

import torch
from omegaconf import DictConfig

from ftsweep import preflight
from ftsweep import probe as probe_mod
from ftsweep.config import TrainConfig, validate
from ftsweep.errors import ConfigError, check_config

log = logging.getLogger("ftsweep.microbatch")
# A probe's memory is exact on a CPU and within a few % on a GPU (docs/sweeps.md); the margin also leaves room for
# what a probe does not see (DDP's gradient buckets, a longer eval batch, the allocator's fragmentation).
MARGIN = 0.10


def fitted(cfg: DictConfig, pinned: Optional[str] = None) -> DictConfig:
    """`cfg` with micro_batch_size=auto replaced by the micro-batch that fits (a copy), else `cfg` itself.
    `pinned`: a sweep trial's device id (hydra.sweeper.devices). A ConfigError when even 1 does not fit."""
    if cfg.get("micro_batch_size") != "auto":
        return cfg
    tc = validate(cfg)
    device = preflight.resolve_device(tc.device, pinned)
    budget = budget_mb(tc, device)

    def memory_of(micro: int) -> float:
        return probed_memory_mb(cfg, micro // tc.distributed.nproc, str(device))

    micro = choose(candidates(tc.batch_size, tc.distributed.nproc), budget, memory_of)
    out = copy.deepcopy(cfg)
    out.micro_batch_size = micro
    return out


def budget_mb(tc: TrainConfig, device: torch.device) -> float:
    if tc.memory_budget_mb is not None:
        return tc.memory_budget_mb
    check_config(
        device.type == "cuda",
        "micro_batch_size=auto on a CPU needs memory_budget_mb (the MB its training state may take); "
        "on CUDA it defaults to the card's free memory",
    )
    free, _ = torch.cuda.mem_get_info(device)
    return free / 2**20


def candidates(batch_size: int, nproc: int) -> list[int]:
    """The micro-batches that split batch_size evenly, and each rank's share of them too; largest first."""
    return [m for m in range(batch_size, 0, -1) if batch_size % m == 0 and m % nproc == 0]


def choose(sizes: list[int], budget: float, memory_of: Callable[[int], float]) -> int:
    """The first of `sizes` whose memory fits budget x (1 - MARGIN)."""
    limit = budget * (1 - MARGIN)
    check_config(bool(sizes), "micro_batch_size=auto: no micro-batch splits batch_size across distributed.nproc")
    for size in sizes:
        memory = memory_of(size)
        if math.isnan(memory):
            raise ConfigError(
                "micro_batch_size=auto needs the probe's memory, which compile=true on a CPU does not count; "
                "set micro_batch_size=N or compile=false"
            )
        if memory <= limit:
            log.info(
                "micro_batch_size=auto: %d (%.0f MB of a %.0f MB budget less %.0f %%)",
                size,
                memory,
                budget,
                100 * MARGIN,
            )
            return size
    raise ConfigError(
        f"micro_batch_size=auto: even {sizes[-1]} example(s) per forward pass needs {memory:,.0f} MB, above the "
        f"{budget:,.0f} MB budget less its {100 * MARGIN:.0f} % margin ({limit:,.0f} MB); raise memory_budget_mb "
        f"or lower data.max_length"
    )


def probed_memory_mb(cfg: DictConfig, micro: int, device: str) -> float:
    """The memory axis of one process of this run in forward passes of `micro` examples (inf: its probe ran out
    of CUDA memory, so it does not fit)."""
    job = copy.deepcopy(cfg)
    job.micro_batch_size, job.device = micro, device
    job.distributed.nproc = 1  # one rank's share, measured in one process
    try:
        found, measured = probe_mod.probe(job)
    except torch.cuda.OutOfMemoryError:
        log.info("micro_batch_size=auto: %d examples per forward pass ran out of CUDA memory", micro)
        return math.inf
    if measured:
        log.info("micro_batch_size=auto: probed %d examples per forward pass in %.1f s", micro, found.probe_s)
    return found.memory_mb
