"""Probes: a configuration's cost measured in a few steps, before it trains, and what that predicts for its run.

A probe builds a run's batches, model, method and optimizer as training does (FineTuneRecipe.build), takes one
warm-up optimizer step, then a few timed steps on real batches in the run's own order (random or
length-grouped, so their lengths follow the data's distribution) and one step on the longest examples the
data gives, which set the activations' peak. It times one eval batch of median length. Nothing is logged and
no model is kept.

What a run costs depends only on its **cost shape**: model, method with its size options, optimizer, batch_size
and micro_batch_size, the data (its length distribution, max_length), precision, gradient checkpointing, compile
and device, on this host with this torch. A probe is cached under that shape (in the ftsweep cache), so a plan
measures each shape once and the real sweep's prescreening and later plans reuse it; lr, seed, steps and epochs
leave the shape alone and scale the prediction instead (`predict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Optional, cast

import torch
from omegaconf import DictConfig, OmegaConf

from ftsweep import assets, preflight
from ftsweep.artifacts import write_text
from ftsweep.batches import PadCollator
from ftsweep.config import TrainConfig, validate
from ftsweep.evaluation import evaluate
from ftsweep.loop import Loop, LoopSettings
from ftsweep.metrics import SavedForBackward, optimizer_state_mb, tensor_mb
from ftsweep.optim import total_optimizer_steps
from ftsweep.recipe import FineTuneRecipe

log = logging.getLogger("ftsweep.probe")
# bump when what a probe measures changes: older cached probes are then measured again (2: training's CUDA peak
# apart from eval's; precision=auto is bf16 on CPUs with native bf16; 3: widths padded to a multiple of 16,
# precision=auto trains in fp32 and evaluates in bf16 on those CPUs)
VERSION = 3
TIMED_STEPS = 4  # optimizer steps timed after the warm-up, besides the one on the longest examples
# Keys of a run's config that set its cost shape (the method and optimizer nodes lose their lr, which does not).
SHAPE_KEYS = ("model", "method", "optimizer", "batch_size", "data", "precision", "gradient_checkpointing", "compile")


@dataclass
class Probe:
    shape: str  # the cost shape's digest
    device: str  # cpu, or the CUDA card's name
    points: list[list[float]]  # [padded width, seconds] of each timed optimizer step
    base_s: float  # step time = base_s + per_token_s x padded width: a fit to the points
    per_token_s: float
    widths: list[int]  # the padded width of each training batch of one epoch, as the run's sampler forms them
    n_train: int
    eval_batches: int
    eval_batch_s: float  # one eval batch of median length
    train_state_mb: Optional[float]  # params + grads + optimizer state + saved activations (None under compile)
    cuda_peak_mb: Optional[float]  # the CUDA allocator's peak while training, on a GPU
    build_s: float  # data, tokenizer, model and optimizer built
    probe_s: float  # the whole probe, build included
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_mb(self) -> float:
        """The memory axis (`mem/footprint_mb`): the CUDA peak on a GPU, the exact training state on a CPU."""
        value = self.cuda_peak_mb if self.cuda_peak_mb is not None else self.train_state_mb
        return float(value if value is not None else math.nan)

    def step_s(self, width: int) -> float:
        return max(self.base_s + self.per_token_s * width, min(t for _, t in self.points) * 0.5)


# --------------------------------------------------------------------------- the cost shape
def _host(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        models = [
            ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln
        ]
        return f"{models[0]} x{len(models)}" if models else platform.processor()
    except OSError:
        return platform.processor()


def _files(data: dict[str, Any]) -> dict[str, Any]:
    """A local data file's size and time: the same path with other rows is another shape."""
    out = {}
    for name in ("train_file", "eval_file"):
        path = data.get(name)
        if path and os.path.isfile(path):
            stat = os.stat(path)
            out[name] = [stat.st_size, stat.st_mtime_ns]
    return out


def shape_of(job: DictConfig) -> dict[str, Any]:
    """The parts of a composed run config that set what a step costs, as plain data."""
    resolved = cast(dict[str, Any], OmegaConf.to_container(job, resolve=True, enum_to_str=True))
    shape = {k: resolved.get(k) for k in SHAPE_KEYS}
    if resolved.get("micro_batch_size") is not None:  # only when set: the shapes of runs without keep their digests
        shape["micro_batch_size"] = resolved["micro_batch_size"]
    for node in ("method", "optimizer"):
        shape[node] = {k: v for k, v in (shape[node] or {}).items() if k != "lr"}
    device = str(preflight.resolve_device(str(resolved.get("device", "auto"))))
    shape.update(device=device, host=_host(device), torch=torch.__version__, files=_files(shape["data"] or {}))
    return shape


def shape_key(job: DictConfig) -> str:
    text = json.dumps({"version": VERSION, **shape_of(job)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_file(key: str) -> Path:
    return assets.cache_dir() / "probes" / f"{key}.json"


def cached(key: str) -> Optional[Probe]:
    try:
        return Probe(**json.loads(_cache_file(key).read_text()))
    except (OSError, ValueError, TypeError):  # none yet, or written by another version: measure again
        return None


def probe(job: DictConfig) -> tuple[Probe, bool]:
    """The cost shape's probe, from the cache or measured now (and cached); True when it was measured now."""
    key = shape_key(job)
    found = cached(key)
    if found is not None:
        return found, False
    measured = measure(job, key)
    write_text(_cache_file(key), json.dumps(asdict(measured)))
    return measured, True


# --------------------------------------------------------------------------- measuring
def measure(job: DictConfig, key: str = "") -> Probe:
    started = time.perf_counter()
    recipe = FineTuneRecipe(job)  # its peak memory counts from here, as a run's does
    tc, device = recipe.cfg, recipe.device
    preflight.check_settings(tc, device)
    recipe.splits, recipe.tokenizer = preflight.load_inputs(tc)
    with tempfile.TemporaryDirectory(prefix="ftsweep-probe-") as scratch:
        recipe.out_dir = Path(scratch)  # a tiny model's random base may be written here: not kept
        try:
            recipe.build()
            build_s = time.perf_counter() - started
            found = _steps(recipe, tc, device)
        finally:
            recipe.cleanup()
    return Probe(
        shape=key,
        device=_host(str(device)) if device.type == "cuda" else "cpu",
        build_s=build_s,
        probe_s=time.perf_counter() - started,
        **found,
    )


def _steps(recipe: FineTuneRecipe, tc: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Warm-up, timed steps on the run's own batches, one on the longest examples; one timed eval batch."""
    train, evaluation = recipe.loaders.train, recipe.loaders.eval
    settings = LoopSettings.of(tc, recipe.loaders.total_steps, recipe.splits.num_labels, progress=False)
    loop = Loop(recipe.model, recipe.optimizer, recipe.scheduler, settings, device)
    recipe.model.train()
    batches = iter(train)
    loop.timed_step([next(batches)])  # allocator, caches, compilation: not what a step costs afterwards
    points = [[float(b["input_ids"].shape[1]), loop.timed_step([b])] for b in islice(batches, TIMED_STEPS)]
    lengths = [len(ids) for ids in train.dataset.input_ids]
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[: tc.batch_size]
    batch = train.collate_fn([train.dataset[i] for i in longest])
    points.append([float(batch["input_ids"].shape[1]), loop.timed_step([batch])])
    # training's CUDA peak is the memory axis (mem/cuda_train_peak_allocated_mb), so it is read before any eval
    train_peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    eval_batches = list(evaluation)  # longest first: the first sets an eval's peak, the middle one its pace
    evaluate(recipe.model, cast(Any, eval_batches[:1]), device, recipe.splits.num_labels, tc.precision)
    t0 = time.perf_counter()
    middle = eval_batches[len(eval_batches) // 2 : len(eval_batches) // 2 + 1]
    evaluate(recipe.model, cast(Any, middle), device, recipe.splits.num_labels, tc.precision)
    eval_batch_s = time.perf_counter() - t0
    saved = loop.saved.peak_mb if isinstance(loop.saved, SavedForBackward) else None  # None: compiled
    state = tensor_mb(recipe.model.parameters()) + loop.result.grads_mb + optimizer_state_mb(recipe.optimizer)
    base_s, per_token_s = _fit(points)
    return {
        "points": points,
        "base_s": base_s,
        "per_token_s": per_token_s,
        "widths": [cast(PadCollator, train.collate_fn).width(max(lengths[i] for i in b)) for b in train.batch_sampler],
        "n_train": len(lengths),
        "eval_batches": len(eval_batches),
        "eval_batch_s": eval_batch_s,
        "train_state_mb": state + saved if saved is not None else None,
        "cuda_peak_mb": train_peak_mb,
    }


def _fit(points: list[list[float]]) -> tuple[float, float]:
    """Step time against padded width, by least squares; flat (the median) when the widths hardly differ."""
    widths, times = [p[0] for p in points], [p[1] for p in points]
    if max(widths) < 1.2 * min(widths):
        return statistics.median(times), 0.0
    mw, mt = statistics.fmean(widths), statistics.fmean(times)
    slope = sum((w - mw) * (t - mt) for w, t in zip(widths, times)) / sum((w - mw) ** 2 for w in widths)
    slope = max(slope, 0.0)
    return mt - slope * mw, slope


# --------------------------------------------------------------------------- predicting
@dataclass
class Prediction:
    step_ms: float  # the median optimizer step (perf/step_time_ms)
    train_s: float  # every optimizer step (perf/train_time_s)
    eval_s: float  # every evaluation
    steps: int
    evals: int
    memory_mb: float  # the memory axis (mem/footprint_mb)
    train_state_mb: Optional[float]
    cuda_peak_mb: Optional[float]

    def metrics(self) -> dict[str, float]:
        """The logged metrics this prediction stands for, under their own names (prescreening compares these)."""
        out = {"perf/step_time_ms": self.step_ms, "perf/train_time_s": self.train_s, "mem/footprint_mb": self.memory_mb}
        if self.train_state_mb is not None:
            out["mem/train_state_mb"] = self.train_state_mb
        if self.cuda_peak_mb is not None:  # on a CPU mem/peak_mb is RSS, not predicted
            out["mem/peak_mb"] = out["mem/cuda_train_peak_allocated_mb"] = self.cuda_peak_mb
        return out


def predict(job: DictConfig | TrainConfig, p: Probe) -> Prediction:
    """A run of this config, from its shape's probe: its steps' batches at the epoch's widths (each step
    grad_accum_steps of them), its evaluations counted as the loop makes them."""
    tc = validate(job) if isinstance(job, DictConfig) else job
    per_epoch = len(p.widths)
    steps = total_optimizer_steps(per_epoch, tc.grad_accum_steps, tc.epochs, tc.max_steps)
    batch_s = sorted(p.step_s(w) for w in p.widths)
    micro = min(steps * tc.grad_accum_steps, per_epoch * tc.epochs)
    train_s = micro * statistics.fmean(batch_s)
    step_s = statistics.median(batch_s) * tc.grad_accum_steps
    evals = _evaluations(steps, math.ceil(per_epoch / tc.grad_accum_steps), tc.epochs, tc.eval_every_steps)
    return Prediction(
        step_ms=1000 * step_s,
        train_s=train_s,
        eval_s=evals * p.eval_batches * p.eval_batch_s,
        steps=steps,
        evals=evals,
        memory_mb=p.memory_mb,
        train_state_mb=p.train_state_mb,
        cuda_peak_mb=p.cuda_peak_mb,
    )


def _evaluations(steps: int, per_epoch: int, epochs: int, every: Optional[int]) -> int:
    """The loop evaluates every `every` steps and at each epoch's end, once per step at most."""
    ends = {min(per_epoch * (e + 1), steps) for e in range(epochs) if per_epoch * e < steps}
    return len(ends | (set(range(every, steps + 1, every)) if every else set()))
