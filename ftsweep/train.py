"""train(cfg): config -> data -> model + method -> loop -> metrics -> tracker.

Knows nothing of Hydra, so tests and other programs call it directly.
Everything a user can fix is checked before a model loads and before an MLflow
run exists; once the run exists it always ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

import ftsweep
from ftsweep import data as data_mod
from ftsweep import model as model_mod
from ftsweep.config import LoraMethodConfig, Precision, TrainConfig, validate
from ftsweep.errors import ConfigError, FtsweepError
from ftsweep.loop import (build_optimizer, build_scheduler, fit, optimizer_state_mb, seed_everything, tensor_mb,
                          total_optimizer_steps)
from ftsweep.metrics import PeakMemory, classification_report
from ftsweep.sweep import pruning_hook
from ftsweep.tracking import Tracker, flatten


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


def run_name(cfg: TrainConfig) -> str:
    if cfg.run_name:
        return cfg.run_name
    parts = [cfg.method.name]
    if isinstance(cfg.method, LoraMethodConfig):
        parts.append(f"r{cfg.method.r}")
    parts += [f"lr{cfg.lr:.0e}".replace("e-0", "e-").replace("e+0", "e"), f"bs{cfg.batch_size}"]
    return "-".join(parts)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(f.name, path)


def _confusion_png(cm, label_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.7 * len(label_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (eval, n={int(cm.sum())})")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax, label="examples")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)  # never a half-written PNG


def memory_breakdown(metrics: dict[str, float], model, grads_mb: float, optimizer_mb: float, memory: PeakMemory,
                     device: torch.device) -> dict[str, float]:
    """Split the measured peak: params + grads + optimizer state (exact, from the tensors) + baseline + the rest.

    The rest is mostly activations (and allocator slack), hence `activations_est`. It uses the CUDA
    allocator's peak on a GPU and this run's peak RSS on the CPU; the baseline is what was already
    allocated or resident when the run started.
    """
    params_mb = tensor_mb(model.parameters())
    if device.type == "cuda":
        peak, baseline = metrics["mem/cuda_peak_allocated_mb"], memory.baseline_cuda_mb
    else:
        peak, baseline = metrics["mem/cpu_peak_rss_mb"], memory.baseline_rss_mb
    return {
        "mem/params_mb": params_mb,
        "mem/grads_mb": grads_mb,
        "mem/optimizer_state_mb": optimizer_mb,
        "mem/baseline_mb": baseline,
        "mem/activations_est_mb": peak - baseline - params_mb - grads_mb - optimizer_mb,
    }


def prepare(cfg: TrainConfig, device: torch.device) -> tuple[data_mod.TextSplits, Any]:
    """Every check a user can fix: method, precision, data, tokenizer, lengths. No weights are loaded."""
    model_mod.check_method(cfg.method, device)
    if cfg.precision == Precision.fp16 and device.type != "cuda":
        raise ConfigError(f"precision=fp16 needs CUDA (its GradScaler and kernels); this run's device is {device.type}. "
                          f"Use precision=bf16 or fp32")
    splits = data_mod.load_splits(cfg.data)
    extra = model_mod.extra_positions(cfg.method)
    limit = model_mod.max_positions(cfg.model) - extra
    if cfg.data.max_length > limit:
        raise ConfigError(f"data.max_length={cfg.data.max_length} is above model '{cfg.model.name}' limit of {limit} "
                          f"tokens" + (" with this method's virtual tokens" if extra else ""))
    tokenizer = model_mod.load_tokenizer(cfg.model)
    return splits, tokenizer


def train(cfg: DictConfig | TrainConfig, output_dir: str | Path | None = None,
          overrides: list[str] | None = None, tracker: Tracker | None = None,
          on_start: Callable[[str], None] | None = None) -> dict[str, float]:
    """Fine-tune as configured; return the final metrics (all logged to MLflow)."""
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    tc = validate(cfg)
    device = resolve_device(tc.device)
    memory = PeakMemory(device).start()
    seed_everything(tc.seed)
    splits, tokenizer = prepare(tc, device)

    tracker = tracker or Tracker()
    tags = {"method": tc.method.name, "model": tc.model.name, "dataset": tc.data.name, "device": device.type,
            "git_commit": _git_commit(), "ftsweep_version": ftsweep.__version__}
    if tc.sweep.study:
        tags.update({"optuna.study_name": tc.sweep.study, "optuna.trial_number": tc.sweep.trial})
    tracker.start(experiment=tc.experiment_name or tc.data.name, run_name=run_name(tc), tags=tags,
                  parent_run_id=tc.sweep.parent_run_id)
    out_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="ftsweep-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model = None
    try:
        if on_start is not None:
            on_start(tracker.run_id)
        resolved = OmegaConf.to_container(raw, resolve=True, enum_to_str=True)
        tracker.log_params(flatten(resolved))
        tracker.log_text(OmegaConf.to_yaml(raw, resolve=True), "config.yaml")
        tracker.log_text("\n".join(overrides or []) + "\n", "overrides.txt")
        label_map = dict(enumerate(splits.label_names))
        tracker.log_json(label_map, "label_map.json")
        tracker.log_params({"label_map": json.dumps(label_map), "num_labels": splits.num_labels,
                            "train_samples": len(splits.train_texts), "eval_samples": len(splits.eval_texts)})

        train_ids = data_mod.tokenize(splits.train_texts, tokenizer, tc.data.max_length, tc.data.truncation)
        eval_ids = data_mod.tokenize(splits.eval_texts, tokenizer, tc.data.max_length, tc.data.truncation)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        train_loader = data_mod.make_loader(train_ids, splits.train_labels, tc.batch_size, pad_id, shuffle=True,
                                            seed=tc.seed, group_by_length=tc.data.group_by_length)
        eval_loader = data_mod.make_loader(eval_ids, splits.eval_labels, tc.data.eval_batch_size or 2 * tc.batch_size,
                                           pad_id, shuffle=False, seed=tc.seed)

        total_steps = total_optimizer_steps(len(train_loader), tc.grad_accum_steps, tc.epochs, tc.max_steps)

        model = model_mod.to_device(model_mod.build(tc.model, tc.method, splits.label_names, tokenizer, total_steps),
                                    device)
        if tc.gradient_checkpointing:
            # Non-reentrant checkpointing also works when the embeddings are frozen (LoRA, prompt tuning).
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainable, total = model_mod.count_params(model)
        params = {"params/trainable": trainable, "params/total": total,
                  "params/trainable_pct": 100.0 * trainable / total}
        tracker.log_metrics(params, step=0)
        optimizer = build_optimizer(model, tc.optimizer, tc.lr)
        scheduler = build_scheduler(optimizer, tc.optimizer, total_steps)
        result = fit(model, train_loader, eval_loader, optimizer, scheduler, device=device,
                     num_labels=splits.num_labels, epochs=tc.epochs, total_steps=total_steps,
                     grad_accum_steps=tc.grad_accum_steps, max_grad_norm=tc.optimizer.max_grad_norm,
                     eval_every_steps=tc.eval_every_steps, log_every_steps=tc.log_every_steps,
                     log=tracker.log_metrics, progress=tc.progress_bar, precision=tc.precision,
                     step_hook=model_mod.step_hook(model), compile=tc.compile,
                     should_stop=pruning_hook(tc.sweep, tc.objectives[0]))

        ev = result.final_eval
        metrics = {f"eval/{k}": ev[k] for k in ("accuracy", "f1_macro", "loss")}
        metrics.update(result.perf())
        metrics["perf/effective_batch_size"] = tc.batch_size * tc.grad_accum_steps
        metrics["train/steps"], metrics["train/total_steps"] = result.steps, total_steps
        if result.stopped_at is not None:
            tracker.set_tags({"pruned": "true", "pruned_at_step": result.stopped_at})
        metrics.update(memory.stop())
        # One name for "the peak that matters here", so a Pareto search can minimise it on any device.
        metrics["mem/peak_mb"] = metrics.get("mem/cuda_peak_allocated_mb", metrics["mem/cpu_peak_rss_mb"])
        metrics.update(params)
        metrics.update(memory_breakdown(metrics, model, result.grads_mb, optimizer_state_mb(optimizer), memory, device))
        # The result is on disk before anything else can fail.
        _write_json_atomic(out_dir / "metrics.json", {"run_id": tracker.run_id, "steps": result.steps, **metrics})
        tracker.log_metrics(metrics, step=result.steps)

        try:
            report = classification_report(ev["confusion_matrix"], splits.label_names)
            tracker.log_json(report, "classification_report.json")
            png = out_dir / "confusion_matrix.png"
            _confusion_png(ev["confusion_matrix"], splits.label_names, png)
            tracker.log_artifact(png)
        except OSError as exc:  # disk full, read-only artifact store: the metrics above are already safe
            raise FtsweepError(f"could not write the run's artifacts ({exc.strerror or exc}); its metrics are logged "
                               f"and saved in {out_dir / 'metrics.json'}") from exc
        tracker.end("FINISHED")
        return metrics
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            message = traceback.format_exception_only(type(exc), exc)[-1].strip()
            tracker.set_tags({"error": message, "error_type": type(exc).__name__})
        finally:
            tracker.end(status)
        raise
    finally:
        memory.stop()
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def objective(metrics: dict[str, float], objectives: list[str]) -> float | list[float]:
    """The value(s) the sweeper optimises: always finite, because the optuna sweeper cannot take NaN.

    A pruned run raises optuna.TrialPruned (after its MLflow run ended FINISHED), so the sweeper records PRUNED."""
    if metrics.get("train/steps", 0) < metrics.get("train/total_steps", 0):
        import optuna

        raise optuna.TrialPruned(f"pruned at step {int(metrics['train/steps'])} of {int(metrics['train/total_steps'])}")
    values = []
    for name in objectives:
        if name not in metrics:
            raise FtsweepError(f"objective '{name}' is not a logged metric; choose from {', '.join(sorted(metrics))}")
        values.append(float(metrics[name]))
    return values[0] if len(values) == 1 else values
