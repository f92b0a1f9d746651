"""train(cfg): config -> data -> model + method -> loop -> metrics -> tracker.

Knows nothing of Hydra or Optuna, so tests and other programs call it directly; a sweep reaches in
only through `Hooks`. Everything a user can fix is checked before a model loads and before an MLflow
run exists; once the run exists it always ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import ftsweep
from ftsweep import artifacts, checkpoint, distributed, interrupt, keep, orphans, spool
from ftsweep import data as data_mod
from ftsweep import model as model_mod
from ftsweep.config import LoraMethodConfig, Precision, SaveModel, TinyModelConfig, TrainConfig, validate
from ftsweep.errors import ConfigError, DiskFullError, FtsweepError, first_line
from ftsweep.loop import (FitResult, Hooks, LoopSettings, build_optimizer, build_scheduler, fit, resolve_precision,
                          seed_everything, total_optimizer_steps)
from ftsweep.metrics import PeakMemory, classification_report, memory_breakdown
from ftsweep.locks import file_of
from ftsweep.tracking import Tracker, flatten

log = logging.getLogger("ftsweep")
HELPER_EXIT_TAG = "ftsweep.helper_exit"  # a helper rank that exited non-zero after the results were in


def resolve_device(name: str, pinned: str | None = None) -> torch.device:
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
        raise ConfigError(f"hydra.sweeper.devices names device {device_id}, which this process cannot see "
                          f"(visible: {','.join(ids) or 'none'})")
    device = torch.device("cuda", ids.index(device_id))
    torch.cuda.set_device(device)  # CUDA's context and default allocations go there too, not to device 0
    return device


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


def check_settings(cfg: TrainConfig, device: torch.device) -> None:
    """The checks that need neither data nor weights: method, precision, lengths against the model's."""
    model_mod.check_method(cfg.method, device)
    model_mod.check_fits(cfg.method, cfg.model)
    if cfg.checkpoint_every_steps and cfg.method.name == "adalora":
        raise ConfigError("checkpoint_every_steps does not work with method=adalora: its rank allocator's state is "
                          "not in the checkpoint, so a resumed run would not be the same run; use method=lora")
    if cfg.distributed.nproc > 1:
        check_distributed(cfg, device)
    if cfg.precision == Precision.fp16 and device.type != "cuda":
        raise ConfigError(f"precision=fp16 needs CUDA (its GradScaler and kernels); this run's device is {device.type}. "
                          f"Use precision=bf16 or fp32")
    extra = model_mod.extra_positions(cfg.method)
    limit = model_mod.max_positions(cfg.model) - extra
    if cfg.data.max_length > limit:
        raise ConfigError(f"data.max_length={cfg.data.max_length} is above model '{cfg.model.name}' limit of {limit} "
                          f"tokens" + (" with this method's virtual tokens" if extra else ""))


def check_distributed(cfg: TrainConfig, device: torch.device) -> None:
    n = cfg.distributed.nproc
    if cfg.checkpoint_every_steps or cfg.resume:
        raise ConfigError(f"distributed.nproc={n} does not write or resume checkpoints yet; leave "
                          "checkpoint_every_steps and resume unset, or train on one process")
    if cfg.sweep.device is not None:
        raise ConfigError(f"hydra.sweeper.devices gives each trial one device; distributed.nproc={n} needs {n}. "
                          "Leave hydra.sweeper.devices unset (each trial then takes the devices after its own)")
    if cfg.batch_size < n:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch, split across distributed.nproc={n} "
                          f"processes: it must be at least {n}")
    if device.type == "cuda" and (device.index or 0) + n > torch.cuda.device_count():
        raise ConfigError(f"distributed.nproc={n} needs {n} CUDA devices from {device}; this machine has "
                          f"{torch.cuda.device_count()}")


def prepare(cfg: TrainConfig, device: torch.device) -> tuple[data_mod.TextSplits, Any]:
    """Every check a user can fix, then the data and tokenizer. No weights are loaded."""
    check_settings(cfg, device)
    splits = data_mod.load_splits(cfg.data)
    tokenizer = model_mod.load_tokenizer(cfg.model)
    return splits, tokenizer


def check(cfg: DictConfig | TrainConfig, deep: bool = True) -> TrainConfig:
    """What train() checks before its run exists, without training. `deep` also opens the tracking store and
    reads the data and tokenizer. A sweep checks its jobs with this before it creates anything."""
    tc = validate(cfg)
    device = resolve_device(tc.device)
    if deep:
        Tracker().experiment_id(tc.experiment_name or tc.data.name)
        prepare(tc, device)
    else:
        check_settings(tc, device)
    return tc


@dataclass
class Loaders:
    train: Any
    eval: Any
    total_steps: int


def setup_data(tc: TrainConfig, splits: data_mod.TextSplits, tokenizer) -> Loaders:
    if tc.batch_size > len(splits.train_texts):
        log.warning("batch_size=%d is above the %d training examples: each epoch is one batch of %d",
                    tc.batch_size, len(splits.train_texts), len(splits.train_texts))
    train_ids = data_mod.tokenize(splits.train_texts, tokenizer, tc.data.max_length, tc.data.truncation)
    eval_ids = data_mod.tokenize(splits.eval_texts, tokenizer, tc.data.max_length, tc.data.truncation)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train = data_mod.make_loader(train_ids, splits.train_labels, tc.batch_size, pad_id, shuffle=True, seed=tc.seed,
                                 group_by_length=tc.data.group_by_length)
    # 2 x batch_size by default, on CUDA too: a larger eval batch fills a card (docs/benchmarks.md, "GPU throughput") but
    # would often set the run's CUDA peak, which is the memory axis of a sweep's trade-offs.
    evaluation = data_mod.make_loader(eval_ids, splits.eval_labels, tc.data.eval_batch_size or 2 * tc.batch_size,
                                      pad_id, shuffle=False, seed=tc.seed)
    return Loaders(train, evaluation, total_optimizer_steps(len(train), tc.grad_accum_steps, tc.epochs, tc.max_steps))


def setup_model(tc: TrainConfig, splits: data_mod.TextSplits, tokenizer, total_steps: int, device: torch.device,
                out_dir: Path):
    base = model_mod.load_model(tc.model, splits.label_names, tokenizer, tc.method)
    if isinstance(tc.model, TinyModelConfig) and tc.method.name in model_mod.PEFT_METHODS \
            and tc.save_model != SaveModel.none:
        keep.save_base(base, out_dir / "base_model")  # random weights: a kept adapter needs them on disk
    model = model_mod.to_device(model_mod.apply_method(base, tc.method, total_steps), device)
    if tc.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the embeddings are frozen (LoRA, prompt tuning).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def log_inputs(tracker: Tracker, tc: TrainConfig, raw: DictConfig, resolved: dict, overrides: list[str] | None,
               splits: data_mod.TextSplits) -> None:
    """What went in: the resolved config as params and YAML, the overrides, the label map, the data sets."""
    tracker.log_params(flatten(resolved))
    tracker.log_text(OmegaConf.to_yaml(raw, resolve=True), "config.yaml")
    tracker.log_text("\n".join(overrides or []) + "\n", "overrides.txt")
    label_map = dict(enumerate(splits.label_names))
    tracker.log_json(label_map, "label_map.json")
    train_source, eval_source = data_mod.sources(tc.data)
    for context, texts, labels, source in (("train", splits.train_texts, splits.train_labels, train_source),
                                           ("eval", splits.eval_texts, splits.eval_labels, eval_source)):
        frame = pd.DataFrame({"text": texts, "label": [splits.label_names[i] for i in labels]})
        tracker.log_dataset(frame, f"{tc.data.name}-{context}", source, context)
    tracker.log_params({"label_map": json.dumps(label_map), "num_labels": splits.num_labels,
                        "train_samples": len(splits.train_texts), "eval_samples": len(splits.eval_texts)})


def param_counts(model) -> dict[str, float]:
    trainable, total = model_mod.count_params(model)
    return {"params/trainable": trainable, "params/total": total, "params/trainable_pct": 100.0 * trainable / total}


def finish(tc: TrainConfig, tracker: Tracker, result: FitResult, model, optimizer, memory: PeakMemory,
           splits: data_mod.TextSplits, total_steps: int, params: dict[str, float], out_dir: Path,
           ranks: dict[str, float]) -> dict[str, float]:
    """What came out: metrics (on disk first, then MLflow), the classification report, the confusion matrix.
    `ranks`: each rank's memory peak, for a distributed run."""
    ev = result.final_eval
    metrics = {f"eval/{k}": ev[k] for k in ("accuracy", "f1_macro", "loss")}
    metrics.update(result.perf())
    # A batch_size above the data set's size is allowed (one batch per epoch); the batch that trains is smaller.
    metrics["perf/effective_batch_size"] = min(tc.batch_size, len(splits.train_texts)) * tc.grad_accum_steps
    metrics["train/steps"], metrics["train/total_steps"] = result.steps, total_steps
    metrics["train/stopped_early"] = float(result.stop_reason == "stopped_early")
    metrics["train/best_step"] = result.best_step  # the weights the final eval used (early stopping restores)
    metrics.update(params)
    metrics.update(memory_breakdown(memory.stop(), model, result.grads_mb, optimizer, memory,
                                    result.activations_saved_mb))
    metrics.update(ranks)
    if result.stop_reason:
        tracker.set_tags({result.stop_reason: "true", f"{result.stop_reason}_at_step": result.stopped_at})
    # The result is on disk before anything else can fail.
    artifacts.write_json(out_dir / "metrics.json", {"run_id": tracker.run_id, "steps": result.steps, **metrics})
    tracker.log_metrics(metrics, step=result.steps)
    try:
        tracker.log_json(classification_report(ev["confusion_matrix"], splits.label_names), "classification_report.json")
        png = out_dir / "confusion_matrix.png"
        artifacts.confusion_matrix_png(ev["confusion_matrix"], splits.label_names, png)
        tracker.log_artifact(png)
    except (OSError, DiskFullError) as exc:  # disk full, read-only artifact store: the metrics are already safe
        raise FtsweepError(f"could not write the run's artifacts ({_write_failure(exc, out_dir)}); its metrics are "
                           f"logged and saved in {out_dir / 'metrics.json'}") from exc
    return metrics


def keep_model(tc: TrainConfig, tracker: Tracker, model, tokenizer, splits: data_mod.TextSplits,
               out_dir: Path) -> None:
    """save_model: a single run keeps its model (best or all); a sweep's trial logs it only for `all`, and for
    `best` leaves a folder that the sweeper logs and registers if this trial wins (ftsweep/sweep/runner.py)."""
    if tc.save_model == SaveModel.none:
        return
    model = model_mod.to_device(model, torch.device("cpu"))  # a 4-bit model stays where it is
    tokenizer = copy.deepcopy(tokenizer)  # the process keeps one tokenizer per folder (model.py): not this one
    keep.set_length(tokenizer, tc.data.max_length, tail=tc.data.truncation.value == "tail")
    cut = {"max_length": tc.data.max_length, "truncation": tc.data.truncation.value}  # predict cuts the same way
    try:
        if tc.sweep.trial_id is not None and tc.save_model == SaveModel.best:
            keep.save_folder(model, tokenizer, out_dir / keep.MODEL_NAME, splits.eval_texts, cut)
            return
        uri = keep.log_model(tracker.tracking_uri, tracker.run_id, model, tokenizer, splits.eval_texts,
                             splits.label_names, cut)
        tracker.set_tags({"ftsweep.model_uri": uri})
        log.info("model kept: %s (also runs:/%s/%s)", uri, tracker.run_id, keep.MODEL_NAME)
    except Exception as exc:  # disk full, read-only artifact store: the metrics are already safe
        if not isinstance(exc, OSError) and artifacts.no_space(exc, out_dir) is None:
            raise
        store = file_of(tracker.tracking_uri) or tracker.tracking_uri  # where log_model writes
        in_folder = tc.sweep.trial_id is not None and tc.save_model == SaveModel.best
        reason = _write_failure(exc, out_dir / keep.MODEL_NAME if in_folder else store, keep.saved_bytes(model))
        raise FtsweepError(f"could not keep the model ({reason}); its metrics are logged and saved in "
                           f"{out_dir / 'metrics.json'}") from exc


def _write_failure(exc: BaseException, path: Path, need_bytes: int | None = None) -> str:
    """Why a write failed, in a few words: a full disk names the path it hit and the space needed."""
    full = artifacts.no_space(exc, path, need_bytes)
    return str(full) if full is not None else (getattr(exc, "strerror", None) or str(exc))


def setup_training(tc: TrainConfig, splits: data_mod.TextSplits, tokenizer, device: torch.device, out_dir: Path):
    """Loaders, model (with its method), optimizer and scheduler: the same on every rank of a run."""
    loaders = setup_data(tc, splits, tokenizer)
    model = setup_model(tc, splits, tokenizer, loaders.total_steps, device, out_dir)
    optimizer = build_optimizer(model, tc.optimizer, tc.lr)
    return loaders, model, optimizer, build_scheduler(optimizer, tc.optimizer, loaders.total_steps)


def loop_settings(tc: TrainConfig, loaders: Loaders, splits: data_mod.TextSplits, progress: bool = True) -> LoopSettings:
    return LoopSettings(
        total_steps=loaders.total_steps, epochs=tc.epochs, num_labels=splits.num_labels,
        grad_accum_steps=tc.grad_accum_steps, max_grad_norm=tc.optimizer.max_grad_norm,
        eval_every_steps=tc.eval_every_steps, log_every_steps=tc.log_every_steps, precision=tc.precision,
        compile=tc.compile, progress=tc.progress_bar and progress, early_stopping=tc.early_stopping.patience,
        early_stopping_metric=tc.early_stopping.metric, early_stopping_min_delta=tc.early_stopping.min_delta,
        checkpoint_every_steps=tc.checkpoint_every_steps)


def rank_memory(group: distributed.Group, memory: PeakMemory) -> dict[str, float]:
    """Every rank's peak (the CUDA allocator's on a GPU, RSS on the CPU), gathered on all of them."""
    peak = memory.stop()
    peaks = group.gather(peak.get("mem/cuda_peak_allocated_mb", peak["mem/cpu_peak_rss_mb"]))
    return {**{f"mem/peak_mb_rank{i}": v for i, v in enumerate(peaks)}, "mem/peak_mb_all_ranks": sum(peaks)}


def train_helper_rank(raw: DictConfig, group: distributed.Group) -> None:
    """Ranks 1..N-1 of a distributed run: rank 0's data, model and optimizer, trained in lockstep with it.
    Nothing is logged or kept here; rank 0 evaluates, decides and logs for all (ftsweep/distributed.py)."""
    tc = validate(raw)
    memory = PeakMemory(group.device).start()
    seed_everything(tc.seed)
    # Rank 0 checked every setting already, against its own device; only the data and tokenizer are needed.
    splits, tokenizer = data_mod.load_splits(tc.data), model_mod.load_tokenizer(tc.model)
    with tempfile.TemporaryDirectory(prefix="ftsweep-rank-") as scratch:
        loaders, model, optimizer, scheduler = setup_training(tc, splits, tokenizer, group.device, Path(scratch))
    fit(model, group.sharded(loaders.train), None, optimizer, scheduler,
        loop_settings(tc, loaders, splits, progress=False), group.device, step_hook=model_mod.step_hook(model),
        group=group)
    rank_memory(group, memory)


def train(cfg: DictConfig | TrainConfig, output_dir: str | Path | None = None, overrides: list[str] | None = None,
          tracker: Tracker | None = None, hooks: Hooks | None = None) -> dict[str, float]:
    """Fine-tune as configured; return the final metrics (all logged to MLflow)."""
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    tc = validate(cfg)
    resolved = OmegaConf.to_container(raw, resolve=True, enum_to_str=True)
    hooks = hooks or Hooks()
    device = resolve_device(tc.device, tc.sweep.device)
    memory = PeakMemory(device).start()
    seed_everything(tc.seed)
    tracker = tracker or Tracker()
    tracker.experiment_id(tc.experiment_name or tc.data.name)  # a store that cannot work fails before data loads
    orphans.end_orphans(tracker.client)  # runs this host left RUNNING (killed, or a store too full to end)
    ck, where = None, None
    if tc.resume:
        where = checkpoint.locate(tc.resume, tracker.client)
        ck = checkpoint.load(where)
        checkpoint.check_same_config(ck, resolved, where)
    splits, tokenizer = prepare(tc, device)
    out_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="ftsweep-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = (out_dir / "checkpoint" / checkpoint.FILE).resolve()
    interrupt.check()  # a Ctrl-C during start-up stops here, before a run exists

    # A resumed run goes on in its own MLflow run when the store still has it, else in a new one that says so.
    resumed = ck is not None and tracker.resume(ck["run_id"])
    if not resumed:
        tags = {"method": tc.method.name, "model": tc.model.name, "dataset": tc.data.name, "device": device.type,
                "precision": resolve_precision(tc.precision, device).value,
                **({"ftsweep.device_id": tc.sweep.device} if tc.sweep.device is not None else {}),
                "git_commit": _git_commit(), "ftsweep_version": ftsweep.__version__, **hooks.tags}
        if ck is not None:
            tags["ftsweep.resumed_from"] = ck["run_id"]
        tracker.start(experiment=tc.experiment_name or tc.data.name, run_name=run_name(tc), tags=tags,
                      parent_run_id=hooks.parent_run_id)
    # From here a store that stops answering delays the run's writes (kept on disk) instead of ending it.
    tracker.keep_writes(out_dir / spool.FOLDER, tc.tracking.retry_window_s)
    model, group = None, None
    try:
        hooks.on_start(tracker.run_id)
        if resumed:  # no longer the interrupted run it was; a sweep's trial takes it over with its own tags
            tracker.delete_tags("error", "error_type")
            tracker.set_tags({**hooks.tags, "ftsweep.resumed_at_step": ck["loop"]["result"].steps})
        if not resumed:
            log_inputs(tracker, tc, raw, resolved, overrides, splits)
        if tc.distributed.nproc > 1:  # the helpers start up while this rank builds its model
            group = distributed.start(raw, tc.distributed.nproc, device)
        loaders, model, optimizer, scheduler = setup_training(tc, splits, tokenizer, device, out_dir)
        params = param_counts(model)
        if not resumed:
            tracker.log_metrics(params, step=0)
        if ck is not None:
            checkpoint.restore(model, optimizer, scheduler, ck)
        settings = loop_settings(tc, loaders, splits)

        def save_checkpoint(loop_state: dict) -> None:
            checkpoint.save(ckpt_path, model, optimizer, scheduler, loop_state, tracker.run_id,
                            ck["overrides"] if ck else overrides or [], resolved)
            if not tagged:  # the run points at its checkpoint only once there is one
                tracker.set_tags({checkpoint.RUN_TAG: str(ckpt_path)})
                tagged.append(True)

        tagged: list[bool] = []

        log_metrics = tracker.log_metrics
        if resumed:  # steps the run logged after its last checkpoint, before it died, are not logged twice
            logged = tracker.last_step("train/loss", "eval/accuracy")
            log_metrics = lambda metrics, step: tracker.log_metrics(metrics, step) if step > logged else None  # noqa: E731
        result = fit(model, group.sharded(loaders.train) if group else loaders.train, loaders.eval, optimizer, scheduler, settings, device, hooks=hooks,
                     log=log_metrics, step_hook=model_mod.step_hook(model),
                     checkpoint=save_checkpoint if tc.checkpoint_every_steps else None,
                     resume=ck["loop"] if ck else None, group=group)
        ranks = rank_memory(group, memory) if group else {}
        if group:  # rank 0 holds the final results now: a helper's exit can no longer fail the run
            failed, group = distributed.stop(group), None
            if failed:
                tracker.set_tags({HELPER_EXIT_TAG: distributed.describe(failed)})
                log.warning("distributed: %s after training had finished; the run keeps its results",
                            distributed.describe(failed))
        metrics = finish(tc, tracker, result, model, optimizer, memory, splits, loaders.total_steps, params, out_dir,
                         ranks)
        if result.stop_reason != "pruned":  # a pruned trial is never a sweep's best
            keep_model(tc, tracker, model, tokenizer, splits, out_dir)
        tracker.end("FINISHED")
        checkpoint.remove(ckpt_path, where)  # finished: nothing to resume (the one resumed from included)
        return metrics
    except BaseException as exc:
        with interrupt.deferred():  # a second Ctrl-C must not leave the run RUNNING
            tracker.fail(exc, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if group is not None:  # rank 0 failed or was interrupted: the helpers must not wait for it
            with contextlib.suppress(Exception):
                distributed.stop(group, wait_s=10, finished=False)
        memory.stop()
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
