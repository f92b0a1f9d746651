"""The training loop ftsweep owns: forward, loss, backward, clip, step, schedule, log.

Plain PyTorch so that step time and memory are what the method costs, not what a
framework adds. It knows nothing of Hydra, Optuna or MLflow: it reports through `log` and asks `Hooks` whether to stop.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ftsweep import interrupt
from ftsweep.config import Precision, TrainConfig
from ftsweep.early_stopping import EarlyStopping
from ftsweep.errors import TrainingError
from ftsweep.evaluation import autocast, evaluate, to_device
from ftsweep.hooks import Hooks
from ftsweep.metrics import SavedForBackward, release_free_heap, step_time_stats, tensor_mb
from ftsweep.rng import loader_state, rng_states, set_loader_state, set_rng_states

LogFn = Callable[[dict[str, float], int], None]
# The training batches: a DataLoader, a distributed rank's ShardedLoader in front of one, or a plain list.
TrainBatches = Iterable[dict[str, torch.Tensor]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# How often a CPU run hands freed heap back to the OS (metrics.release_free_heap): each release makes the next
# step fault its pages in again, so not every step.
RELEASE_HEAP_EVERY_STEPS = 8


@dataclass
class LoopSettings:
    total_steps: int  # optimizer steps
    epochs: int
    num_labels: int
    grad_accum_steps: int = 1
    micro_batch_size: Optional[int] = None  # this process's examples per forward pass; None: a whole batch
    max_grad_norm: Optional[float] = None
    eval_every_steps: Optional[int] = None  # None: at each epoch end only
    log_every_steps: int = 10
    precision: Precision = Precision.auto
    compile: bool = False
    progress: bool = True
    early_stopping: Optional[int] = None  # patience, in evaluations
    early_stopping_metric: str = "eval/accuracy"
    early_stopping_min_delta: float = 0.0
    checkpoint_every_steps: Optional[int] = None  # with a `checkpoint` callback: also written on Ctrl-C/SIGTERM

    @classmethod
    def of(cls, tc: TrainConfig, total_steps: int, num_labels: int, progress: bool = True) -> LoopSettings:
        """The settings a run's config gives the loop."""
        micro = tc.micro_batch()  # global: each rank's share of a batch goes through in forward passes of micro/nproc
        return cls(
            total_steps=total_steps,
            epochs=tc.epochs,
            num_labels=num_labels,
            grad_accum_steps=tc.grad_accum_steps,
            micro_batch_size=micro // tc.distributed.nproc if micro is not None else None,
            max_grad_norm=tc.optimizer.max_grad_norm,
            eval_every_steps=tc.eval_every_steps,
            log_every_steps=tc.log_every_steps,
            precision=tc.precision,
            compile=tc.compile,
            progress=tc.progress_bar and progress,
            early_stopping=tc.early_stopping.patience,
            early_stopping_metric=tc.early_stopping.metric,
            early_stopping_min_delta=tc.early_stopping.min_delta,
            checkpoint_every_steps=tc.checkpoint_every_steps,
        )


@dataclass
class FitResult:
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    step_times_s: list[float] = field(default_factory=list)
    final_eval: dict = field(default_factory=dict)
    last_eval_step: int = -1
    grads_mb: float = 0.0  # gradient tensors at the first optimizer step
    activations_saved_mb: Optional[float] = None  # peak of what a step saved for backward (None: not counted)
    compiled: bool = False
    stopped_at: Optional[int] = None  # the step after whose evaluation a hook stopped training
    stop_reason: Optional[str] = None  # what stopped it: "pruned" (a hook), "stopped_early" (early stopping)
    best_step: int = -1  # the step whose weights the final eval (and a saved model) used

    def perf(self) -> dict[str, float]:
        out = step_time_stats(self.step_times_s)
        if self.compiled and self.step_times_s:
            # The first step pays for tracing and code generation; the median does not.
            out["perf/compile_time_s"] = max(self.step_times_s[0] - out["perf/step_time_ms"] / 1000, 0.0)
        out.update(
            {
                "perf/train_time_s": self.train_time_s,
                "perf/eval_time_s": self.eval_time_s,
                "perf/samples_per_s": self.samples / self.train_time_s if self.train_time_s else 0.0,
                "perf/tokens_per_s": self.tokens / self.train_time_s if self.train_time_s else 0.0,
            }
        )
        return out


@dataclass
class Position:
    """Where training is: enough, with the RNG states, to continue exactly where it stopped."""

    epoch: int = 0
    batches: int = 0  # batches drawn from this epoch's loader
    loader: Any = None  # the train loader's shuffling state at the start of this epoch


class Loop:
    """One run's training, top to bottom: forward, loss, backward, clip, step, schedule, log; evaluate and ask
    whether to stop. `model` is evaluated as is; a compiled (or DDP-wrapped) copy does the training.

    After each evaluation `hooks.should_stop` may end training early (a pruner's verdict), and so may early
    stopping. `checkpoint(state)` receives the loop's whole state every s.checkpoint_every_steps steps and on
    Ctrl-C/SIGTERM; `run(resume=state)` (model and optimizer already restored) continues from such a state.
    `group` (ftsweep/distributed.py): this process is one rank of a distributed run, its train loader giving
    its shares of the global batches; only rank 0 evaluates."""

    def __init__(  # noqa: PLR0913 (the keyword-only wiring is what fit() passes through; each is optional)
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        s: LoopSettings,
        device: torch.device,
        *,
        hooks: Optional[Hooks] = None,
        log: Optional[LogFn] = None,
        step_hook: Optional[Callable[[int], None]] = None,
        checkpoint: Optional[Callable[[dict], None]] = None,
        group=None,
        evaluating: Optional[Callable[[], ContextManager]] = None,
    ):
        self.model, self.optimizer, self.scheduler, self.s, self.device = model, optimizer, scheduler, s, device
        self.hooks, self.log = hooks or Hooks(), log or (lambda metrics, step: None)
        self.step_hook, self.checkpoint, self.group = step_hook, checkpoint, group
        self.evaluating = evaluating or contextlib.nullcontext  # PeakMemory.evaluating: eval's CUDA peak apart
        self.result = FitResult(compiled=s.compile)
        self.early = EarlyStopping(s.early_stopping, s.early_stopping_metric, s.early_stopping_min_delta)
        train_model = group.wrap(model) if group is not None else model
        # dynamic: padding varies per batch
        self.train_model = torch.compile(train_model, dynamic=True) if s.compile else train_model
        self.world = group.world if group is not None else 1
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(device.type) if s.precision == Precision.fp16 else None
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        # Saved-tensor hooks and torch.compile's graphs do not mix: a compiled run does not count its activations.
        self.saved = contextlib.nullcontext() if s.compile else SavedForBackward(exclude=model.parameters())
        self.loss_sum, self.loss_count = torch.zeros((), device=device), 0  # summed on device: no per-step sync
        self.pos = Position()
        self.in_step = False  # inside an optimizer step: a checkpoint then would hold half a step

    # ---- the loop's whole state, for checkpoints
    def state(self) -> dict:
        pos, scaler = self.pos, self.scaler
        return {
            "position": Position(pos.epoch, pos.batches, pos.loader),
            "result": self.result,
            "early_stopping": self.early.state_dict(),
            "loss_sum": float(self.loss_sum.item()),
            "loss_count": self.loss_count,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_states(),
        }

    def _load(self, state: dict) -> None:
        self.pos, self.result = state["position"], state["result"]
        self.early.load_state_dict(state["early_stopping"])
        self.loss_sum, self.loss_count = torch.tensor(state["loss_sum"], device=self.device), state["loss_count"]
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    # ---- the loop
    def run(
        self, train_loader: TrainBatches, eval_loader: Optional[DataLoader], resume: Optional[dict] = None
    ) -> FitResult:
        """Train for s.total_steps optimizer steps (or until a stop); the final evaluation is in the result."""
        if resume is not None:
            self._load(resume)
        result, s = self.result, self.s
        self.model.train()
        bar = tqdm(
            total=s.total_steps, initial=result.steps, desc="training", unit="step", disable=not s.progress, leave=False
        )
        try:
            for epoch in range(self.pos.epoch, s.epochs):
                if resume is not None and epoch == self.pos.epoch:
                    batches = self._resume_epoch(train_loader, eval_loader, resume)
                else:
                    self.pos.epoch, self.pos.batches, self.pos.loader = epoch, 0, loader_state(train_loader)
                    batches = iter(train_loader)
                self._train_epoch(batches, eval_loader, bar)
                if result.last_eval_step != result.steps:
                    self._evaluate(eval_loader, result.steps)  # epoch end
                if result.steps >= s.total_steps or result.stopped_at is not None:
                    break
        except KeyboardInterrupt:
            if self.checkpoint is not None and s.checkpoint_every_steps and not self.in_step:
                with interrupt.deferred():
                    self.checkpoint(self.state())  # at a step boundary (or inside an eval, redone on resume)
            raise
        finally:
            bar.close()
        return self._close()

    def _resume_epoch(self, train_loader, eval_loader, resume: dict) -> Iterator[dict]:
        """The interrupted epoch's batches from where it stopped: the same shuffle, the same place in it, and the
        same dropout masks from here on. An evaluation it stopped inside is done again."""
        set_loader_state(train_loader, self.pos.loader)
        batches = iter(train_loader)
        for _ in range(self.pos.batches):
            next(batches)
        set_rng_states(resume["rng"])
        steps, every = self.result.steps, self.s.eval_every_steps
        if every and steps % every == 0 and steps > 0 and self.result.last_eval_step != steps:
            self._evaluate(eval_loader, steps)
        return batches

    def _train_epoch(self, batches: Iterator[dict], eval_loader, bar) -> None:
        s, result = self.s, self.result
        while result.steps < s.total_steps and result.stopped_at is None:
            self._check_signal()
            self.in_step = True
            micro = [b for _, b in zip(range(s.grad_accum_steps), batches)]
            if not micro:
                self.in_step = False
                return  # epoch done
            self.pos.batches += len(micro)
            t0 = time.perf_counter()
            self.loss_sum += self._optimizer_step(micro)
            self.loss_count += len(micro)
            _sync(self.device)
            result.step_times_s.append(time.perf_counter() - t0)
            result.train_time_s += result.step_times_s[-1]
            result.steps += 1
            self.in_step = False
            step = result.steps
            bar.update(1)
            if step % s.log_every_steps == 0 or step == s.total_steps:
                self._log_loss(step, bar)
            if s.eval_every_steps and step % s.eval_every_steps == 0:
                self._evaluate(eval_loader, step)
            if (
                self.checkpoint is not None
                and s.checkpoint_every_steps
                and step % s.checkpoint_every_steps == 0
                and step < s.total_steps
            ):
                self.checkpoint(self.state())

    def timed_step(self, micro: list[dict]) -> float:
        """One optimizer step over `micro` outside any epoch, its activations counted as training counts them:
        its wall time in seconds. A plan's probe (ftsweep/probe.py) measures a configuration so."""
        t0 = time.perf_counter()
        self._optimizer_step(micro)
        _sync(self.device)
        return time.perf_counter() - t0

    def _optimizer_step(self, micro: list[dict]) -> torch.Tensor:
        """One optimizer step over `micro` (grad_accum_steps batches, each in forward passes of at most
        s.micro_batch_size examples); returns the batches' summed loss, on device."""
        device, s, result, scaler, trainable = self.device, self.s, self.result, self.scaler, self.trainable
        loss_sum = torch.zeros((), device=device)
        for batch in (part for whole in micro for part in micro_batches(whole, s.micro_batch_size)):
            # a distributed rank's share of the global batch, a micro-batch's share of its batch (or both)
            weight = batch.pop("loss_weight", None)
            if weight is None or weight > 0:  # a rank with no share of a last, small batch counts nothing
                result.samples += batch["labels"].numel()
                result.tokens += int(batch["attention_mask"].sum())  # CPU tensor: no device sync
            batch = to_device(batch, device)
            with self.saved, autocast(device, s.precision):
                # The model computes the loss: cross-entropy, plus a method's own term (AdaLoRA's orthogonality).
                loss = self.train_model(**batch).loss
            if weight is not None:
                loss = loss * weight.to(device)
            scaled = loss / len(micro)
            (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += loss.detach().float()
        if scaler:
            scaler.unscale_(self.optimizer)
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, s.max_grad_norm)
        if result.steps == 0:
            result.grads_mb = tensor_mb(p.grad for p in trainable if p.grad is not None)
        if scaler:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.step_hook is not None:
            self.step_hook(result.steps)  # before zero_grad: AdaLoRA scores ranks from the gradients
        self.optimizer.zero_grad(set_to_none=True)
        if device.type == "cpu" and (result.steps + 1) % RELEASE_HEAP_EVERY_STEPS == 0:
            release_free_heap()  # inside the timed step: what it costs is the step's
        return loss_sum

    def _check_signal(self) -> None:
        if self.group is None:
            interrupt.check()
        elif self.group.agree(interrupt.requested()):  # every rank stops at the same step, or none does
            raise KeyboardInterrupt("terminated (a signal reached one of the ranks)")

    def _log_loss(self, step: int, bar) -> None:
        # The ranks' weighted losses average to the global batches' mean loss.
        total = self.group.sum([self.loss_sum.item()])[0] if self.group is not None else self.loss_sum.item()
        mean_loss = total / (self.loss_count * self.world)
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"training diverged: loss became {mean_loss} by step {step}; "
                f"lower lr or keep optimizer.max_grad_norm set"
            )
        self.log({"train/loss": mean_loss, "train/lr": self.scheduler.get_last_lr()[0]}, step)
        bar.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{self.result.samples / self.result.train_time_s:.1f}")
        self.loss_sum.zero_()
        self.loss_count = 0

    def _evaluate(self, eval_loader, step: int) -> None:
        """Evaluate, log, and ask early stopping and the hooks whether to stop. In a distributed run rank 0
        evaluates and decides, and the other ranks learn the verdict."""
        result, s = self.result, self.s
        if self.group is not None and not self.group.main:
            result.last_eval_step = step
        else:
            t0 = time.perf_counter()
            with self.evaluating():
                ev = evaluate(self.model, eval_loader, self.device, s.num_labels, s.precision)
            result.eval_time_s += time.perf_counter() - t0
            result.final_eval, result.last_eval_step = ev, step
            self.log({f"eval/{k}": ev[k] for k in ("accuracy", "f1_macro", "loss")}, step)
            stop_early = self.early.update(self.model, step, ev)
            if step < s.total_steps:
                reason = self.hooks.should_stop(step, ev) or ("stopped_early" if stop_early else None)
                if reason:
                    result.stopped_at, result.stop_reason = step, reason
        if self.group is not None and self.group.agree(result.stopped_at is not None) and result.stopped_at is None:
            result.stopped_at, result.stop_reason = step, "stopped by rank 0"

    def _close(self) -> FitResult:
        result = self.result
        if isinstance(self.saved, SavedForBackward) and self.saved.peak_bytes:
            result.activations_saved_mb = max(result.activations_saved_mb or 0.0, self.saved.peak_mb)
        if self.group is not None:  # throughput counts every rank's examples
            result.samples, result.tokens = (int(v) for v in self.group.sum([result.samples, result.tokens]))
        result.best_step, best_eval = self.early.restore(self.model, result.last_eval_step)
        if best_eval is not None:
            result.final_eval = best_eval
        return result


def micro_batches(batch: dict[str, torch.Tensor], size: Optional[int]) -> list[dict[str, torch.Tensor]]:
    """A batch as forward passes of at most `size` examples, each trimmed to its own longest row (the collator
    pads on the right). Each part's `loss_weight` is its fraction of the batch (times the batch's own weight, a
    distributed rank's share), so the parts' weighted losses add up to the whole batch's mean loss: the same
    gradient as the batch in one pass, up to float rounding."""
    n = batch["labels"].shape[0]
    if size is None or n <= size:
        return [batch]
    weight = batch.get("loss_weight", torch.tensor(1.0))
    parts = []
    for lo in range(0, n, size):
        part = {k: v[lo : lo + size] for k, v in batch.items() if k != "loss_weight"}
        width = int(part["attention_mask"].sum(dim=1).max())
        part = {k: v[:, :width] if v.dim() == 2 else v for k, v in part.items()}
        parts.append({**part, "loss_weight": weight * (part["labels"].shape[0] / n)})
    return parts


def fit(
    model: nn.Module,
    train_loader: TrainBatches,
    eval_loader: Optional[DataLoader],
    optimizer: torch.optim.Optimizer,
    scheduler,
    s: LoopSettings,
    device: torch.device,
    resume: Optional[dict] = None,
    **wiring: Any,
) -> FitResult:
    """`Loop(...).run(...)` in one call; `wiring` is Loop's keyword arguments (hooks, log, step_hook,
    checkpoint, group, evaluating)."""
    return Loop(model, optimizer, scheduler, s, device, **wiring).run(train_loader, eval_loader, resume)
