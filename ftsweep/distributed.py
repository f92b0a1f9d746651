"""One run on N processes (`distributed.nproc=N`): torch.distributed, gloo on CPU and nccl on CUDA.

The process that runs train() is rank 0. It owns everything a run has beside training: the MLflow run,
the sweep's trial (pruning), evaluation, the model it keeps. It starts ranks 1..N-1 as helper processes
(`python -m ftsweep.recipe SPEC RANK`), which build the same data, model and optimizer from the same config
and train in lockstep through DistributedDataParallel; they log nothing. This module holds only the process
group, the sharding and the rank processes: it imports no training code.

Same results as one process with the same `batch_size`: every rank draws the same global batches (same
loader, same seed) and trains on its contiguous share of each, its loss weighted by its share, so the
gradient DDP averages is the global batch's. Only the order of float sums differs (and dropout masks, which
each rank draws for its own share). Decisions reach every rank at the next step boundary: a signal on any
rank, a pruner's or early stopping's verdict after rank 0's evaluation.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ftsweep import interrupt
from ftsweep.errors import first_line

log = logging.getLogger("ftsweep")
TIMEOUT = timedelta(hours=1)  # a collective waits this long: helpers wait out rank 0's evaluations
JOIN_TIMEOUT = timedelta(minutes=5)  # the helpers' start-up: imports, data, tokenizer


@dataclass
class Group:
    rank: int
    world: int
    device: torch.device
    helpers: list[subprocess.Popen] = field(default_factory=list)  # rank 0 only
    spec: Optional[Path] = None
    threads: int = 0  # this process's torch threads before the group, given back at the end (CPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _reduce(self, values: list[float], op) -> list[float]:
        # nccl reduces CUDA tensors only; gloo CPU ones.
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=op)
        return t.tolist()

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is True on any."""
        return self._reduce([float(flag)], dist.ReduceOp.MAX)[0] > 0

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def gather(self, value: float) -> list[float]:
        """One value from each rank, in rank order, on every rank."""
        values = [0.0] * self.world
        values[self.rank] = value
        return self.sum(values)

    def sharded(self, loader) -> "ShardedLoader":
        return ShardedLoader(loader, self.rank, self.world)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's contiguous share of a global batch, and `loss_weight`: its share of the batch times the
    number of ranks, so that DDP's mean of the ranks' weighted losses is the global batch's mean loss.

    A rank whose share is empty (a last batch smaller than the number of ranks) still takes part in the
    step, on one example with weight 0: DDP needs every rank's backward."""
    n = batch["labels"].shape[0]
    lo, hi = n * rank // world, n * (rank + 1) // world
    if hi == lo:
        return {**{k: v[:1] for k, v in batch.items()}, "loss_weight": torch.tensor(0.0)}
    return {**{k: v[lo:hi] for k, v in batch.items()}, "loss_weight": torch.tensor((hi - lo) * world / n)}


class ShardedLoader:
    """A train loader whose batches are this rank's shares of the single-process loader's batches."""

    def __init__(self, loader, rank: int, world: int):
        self.loader, self.rank, self.world = loader, rank, world

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (shard(batch, self.rank, self.world) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # generator, batch_sampler: the shuffling state
        return getattr(self.loader, name)


def device_of(rank: int, device: torch.device) -> torch.device:
    """Rank r's device: the CPU, or the r-th CUDA device after rank 0's."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(raw_cfg, world: int, device: torch.device, entry: str) -> Group:
    """Rank 0: start ranks 1..world-1 as `python -m ENTRY SPEC RANK` (a module whose main calls
    `helper_main`) and join them in one process group on loopback."""
    port = _free_port()
    spec = Path(tempfile.mkdtemp(prefix="ftsweep-ddp-")) / "spec.pkl"
    with open(spec, "wb") as f:
        pickle.dump({"cfg": raw_cfg, "world": world, "port": port, "device": str(device)}, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))}
    helpers = [
        subprocess.Popen([sys.executable, "-m", entry, str(spec), str(rank)], env=env) for rank in range(1, world)
    ]
    group = Group(0, world, device, helpers, spec)
    try:
        _init(group, port)
    except BaseException:
        stop(group, finished=False)
        raise
    log.info("distributed: %d processes (%s), global batch split across them", world, backend_for(device))
    return group


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)  # helpers import this very ftsweep


def _init(group: Group, port: int) -> None:
    if group.device.type == "cuda":
        torch.cuda.set_device(group.device)
    else:  # N ranks with a thread per core each would fight over the cores
        group.threads = torch.get_num_threads()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // group.world))
    # Joining waits JOIN_TIMEOUT at most: a helper that died while starting must not hold rank 0 for an hour.
    store = dist.TCPStore("127.0.0.1", port, group.world, is_master=group.main, timeout=JOIN_TIMEOUT)
    dist.init_process_group(
        backend_for(group.device), store=store, rank=group.rank, world_size=group.world, timeout=TIMEOUT
    )


def stop(group: Optional[Group], wait_s: float = 60.0, finished: bool = True) -> dict[int, int]:
    """Wait for the helpers and leave the process group; return the exit code of each helper that did not
    exit 0 (rank -> code). A helper still running after `wait_s` is stopped.

    After a finished run rank 0 leaves last: it hosts the TCPStore the group was built on, and a helper
    whose store vanished while it was still tearing its own group down could abort ("terminate called
    without an active exception", exit -6) after training had finished. After a failure (`finished` False)
    rank 0 leaves first, so that helpers blocked in a collective see it gone and stop."""
    if group is None:
        return {}
    if not finished:
        _leave(group)
    codes = {rank: _wait(proc, wait_s) for rank, proc in enumerate(group.helpers, start=1)}
    if finished:
        _leave(group)
    if group.spec is not None:
        group.spec.unlink(missing_ok=True)
        group.spec.parent.rmdir()
    return {rank: code for rank, code in codes.items() if code != 0}


def _leave(group: Group) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    if group.threads:
        torch.set_num_threads(group.threads)
        group.threads = 0


def _wait(proc: subprocess.Popen, wait_s: float) -> int:
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def describe(failed: dict[int, int]) -> str:
    return "; ".join(f"rank {rank} exited with code {code}" for rank, code in sorted(failed.items()))


def helper_main(spec_path: str, rank: int, train_rank: Callable[[Any, Group], None]) -> None:
    """A helper rank's process: join rank 0's group, run `train_rank(cfg, group)`, leave. Its exit code is 0,
    130 (a signal) or 1 (rank 0 gone, or a failure: rank 0 reports why)."""
    interrupt.install()  # Ctrl-C reaches every rank: each stops at the next step, together
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    group = Group(rank, spec["world"], device_of(rank, torch.device(spec["device"])))
    _init(group, spec["port"])
    code = 0
    try:
        train_rank(spec["cfg"], group)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # mostly rank 0 gone (it failed, or stopped in an evaluation): it reports why
        print(f"ftsweep.distributed: rank {rank} stopped: {first_line(exc, with_type=True)}", file=sys.stderr)
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # A helper has nothing left to write once its group is gone. Leaving through os._exit skips the C++
    # static destructors of gloo and the store client, whose threads could abort an exit that had
    # nothing left to do (exit -6 after training had finished).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
