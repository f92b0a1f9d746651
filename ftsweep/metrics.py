"""Measurements: classification scores, step-time statistics, tensor sizes, the activations saved for backward
and this run's peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import statistics
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


# --------------------------------------------------------------------------- scores
def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm  # rows: true class, columns: predicted class


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(axis=1)}


def classification_scores(cm: np.ndarray) -> dict[str, float]:
    total = cm.sum()
    return {
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "f1_macro": float(per_class(cm)["f1"].mean()),
    }


def classification_report(cm: np.ndarray, label_names: list[str]) -> dict:
    stats = per_class(cm)
    report: dict[str, Any] = {
        name: {key: float(stats[key][i]) if key != "support" else int(stats[key][i]) for key in stats}
        for i, name in enumerate(label_names)
    }
    report.update(classification_scores(cm))
    return report


# --------------------------------------------------------------------------- time
def step_time_stats(step_times_s: list[float]) -> dict[str, float]:
    """Median and p90 of optimizer-step wall times, skipping warm-up steps (allocator, caches, autotuning)."""
    if not step_times_s:
        return {}
    warmup = min(3, len(step_times_s) // 4)
    times_ms = np.asarray(step_times_s[warmup:]) * 1000.0
    return {
        "perf/step_time_ms": float(statistics.median(times_ms)),
        "perf/step_time_p90_ms": float(np.percentile(times_ms, 90)),
    }


# --------------------------------------------------------------------------- memory
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # non-Linux: best effort


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Training on a CPU frees and allocates activations of a new size at every batch width, and glibc keeps the
    freed pieces: a default run's RSS grew from 1.7 GB after 2 steps to 3.0 GB after 157 with the same training
    state. Releasing them every few steps keeps the peak near the state, for a page fault per reused page."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """This run's own peak memory, even when several runs share one process.

    CPU: Linux lets a process reset its high-water mark (`echo 5 > /proc/self/clear_refs`),
    after which VmHWM is the peak since the reset. Where that is not allowed, a
    sampling thread tracks the peak instead. Freed heap is handed back to the OS
    first (gc + malloc_trim), so an earlier, bigger run does not inflate this one.
    CUDA: the allocator's peak statistics, reset at start.
    """

    def __init__(self, device: torch.device, sample_interval_s: float = 0.01):
        self.device = device
        self.interval = sample_interval_s
        self._sampled_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline_rss_mb = 0.0
        self.baseline_cuda_mb = 0.0
        self._cuda_peak_mb = {"train": 0.0, "eval": 0.0}
        self._cuda_reserved_mb = 0.0

    def start(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_cuda_mb = torch.cuda.memory_allocated(self.device) / 2**20
        release_free_heap()
        self.baseline_rss_mb = current_rss_mb()
        try:
            _CLEAR_REFS.write_text("5")
            self._use_hwm = _status_kb("VmHWM") is not None
        except OSError:
            self._use_hwm = False
        if not self._use_hwm:
            self._sampled_peak_mb = self.baseline_rss_mb
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled_peak_mb = max(self._sampled_peak_mb, current_rss_mb())

    def cpu_peak_rss_mb(self) -> float:
        if self._use_hwm:
            hwm_kb = _status_kb("VmHWM")
            assert hwm_kb is not None  # start() found VmHWM, so it set _use_hwm
            return hwm_kb / 1024
        return max(self._sampled_peak_mb, current_rss_mb())

    def _fold_cuda(self, phase: str) -> None:
        """Add the CUDA peak since the last reset to `phase`'s, and reset, so the next phase starts from zero."""
        if self.device.type == "cuda":
            allocated = torch.cuda.max_memory_allocated(self.device) / 2**20
            self._cuda_peak_mb[phase] = max(self._cuda_peak_mb[phase], allocated)
            self._cuda_reserved_mb = max(self._cuda_reserved_mb, torch.cuda.max_memory_reserved(self.device) / 2**20)
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Count evaluation's CUDA peak apart from training's. The memory axis is training's peak, so a big eval
        batch (which only speeds evaluation up) neither moves a configuration on it nor shrinks what fits."""
        self._fold_cuda("train")
        try:
            yield
        finally:
            self._fold_cuda("eval")

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        out = {"mem/cpu_peak_rss_mb": self.cpu_peak_rss_mb()}
        if self.device.type == "cuda":
            self._fold_cuda("train")
            train, evaluation = self._cuda_peak_mb["train"], self._cuda_peak_mb["eval"]
            out["mem/cuda_peak_allocated_mb"] = max(train, evaluation)
            out["mem/cuda_peak_reserved_mb"] = self._cuda_reserved_mb
            out["mem/cuda_train_peak_allocated_mb"] = train
            out["mem/cuda_eval_peak_allocated_mb"] = evaluation
        return out


# --------------------------------------------------------------------------- tensor sizes and the breakdown
def tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def optimizer_state_mb(optimizer: torch.optim.Optimizer) -> float:
    return tensor_mb(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


class _Held:
    """What autograd keeps in place of a saved tensor while SavedForBackward counts it."""

    __slots__ = ("tensor", "key", "counter")

    def __init__(self, tensor: torch.Tensor, key, counter: "SavedForBackward"):
        self.tensor, self.key, self.counter = tensor, key, counter

    def __del__(self):  # autograd frees saved tensors once backward has used them
        self.counter._release(self.key)


class SavedForBackward:
    """The activations a training step keeps for backward, in bytes, counted exactly on any device.

    Inside `with counter:` every tensor autograd saves passes through a pack hook. Each storage counts once
    while anything saved still holds it; parameters are left out (they count as params). `peak_mb` is the
    largest live total seen, which for a plain step is the end of its forward. Under non-reentrant gradient
    checkpointing only what checkpointing keeps is seen (each layer's input); the one layer that backward
    recomputes at a time runs under checkpointing's own hooks and is not counted.
    """

    def __init__(self, exclude=()):
        self._skip = {self._key(t) for t in exclude}
        self._live: dict = {}  # storage key -> [bytes, holders]
        self.live_bytes = self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    @staticmethod
    def _key(t: torch.Tensor):
        return t.device, t.untyped_storage().data_ptr()

    def _pack(self, t: torch.Tensor):
        try:
            key = self._key(t)
        except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. sparse): not countable
            return t
        if key in self._skip:
            return t
        entry = self._live.get(key)
        if entry is None:
            nbytes = t.untyped_storage().nbytes()
            self._live[key] = [nbytes, 1]
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            entry[1] += 1
        # Detached: a holder that kept the tensor itself would close a cycle (tensor -> grad_fn -> saved slot
        # -> holder) that only backward breaks, so a step that raised would keep its graph alive.
        return _Held(t.detach(), key, self)

    @staticmethod
    def _unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, key) -> None:
        entry = self._live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self._live[key]
                self.live_bytes -= entry[0]

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def __enter__(self) -> "SavedForBackward":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def memory_breakdown(
    peak: dict[str, float],
    model,
    grads_mb: float,
    optimizer,
    memory: PeakMemory,
    activations_saved_mb: float | None = None,
) -> dict[str, float]:
    """Split the measured peak: params + grads + optimizer state (exact, from the tensors) + baseline + the rest.

    The rest is mostly activations (and allocator slack), hence `activations_est`. It uses the CUDA
    allocator's peak on a GPU and this run's peak RSS on the CPU; the baseline is what was already
    allocated or resident when the run started. `mem/peak_mb` is that same peak under one name, so a
    Pareto search can minimise it on any device.

    `mem/train_state_mb` is exact on any device: params + grads + optimizer state + the activations saved
    for backward (SavedForBackward; None when they were not counted, e.g. under torch.compile).
    `mem/footprint_mb` is the memory axis of the report and the Pareto presets: training's CUDA allocator peak
    on a GPU (evaluation's is logged apart), the training state on a CPU (where the RSS peak is mostly allocator noise).
    """
    on_cuda = "mem/cuda_peak_allocated_mb" in peak
    total = peak["mem/cuda_peak_allocated_mb"] if on_cuda else peak["mem/cpu_peak_rss_mb"]
    training = peak.get("mem/cuda_train_peak_allocated_mb", total) if on_cuda else total
    baseline = memory.baseline_cuda_mb if on_cuda else memory.baseline_rss_mb
    params_mb, optim_mb = tensor_mb(model.parameters()), optimizer_state_mb(optimizer)
    out = {
        **peak,
        "mem/peak_mb": total,
        "mem/params_mb": params_mb,
        "mem/grads_mb": grads_mb,
        "mem/optimizer_state_mb": optim_mb,
        "mem/baseline_mb": baseline,
        "mem/activations_est_mb": training - baseline - params_mb - grads_mb - optim_mb,
    }
    if activations_saved_mb is not None:
        out["mem/activations_saved_mb"] = activations_saved_mb
        out["mem/train_state_mb"] = params_mb + grads_mb + optim_mb + activations_saved_mb
    out["mem/footprint_mb"] = training if on_cuda or activations_saved_mb is None else out["mem/train_state_mb"]
    return out
