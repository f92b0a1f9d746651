"""What a run leaves behind: its final metrics (on disk first, then MLflow), its report artifacts, and the
model it keeps. Nothing here trains."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Optional

import torch

from ftsweep import artifacts, keep
from ftsweep import model as model_mod
from ftsweep.config import SaveModel, TrainConfig
from ftsweep.data import TextSplits
from ftsweep.errors import DiskFullError, FtsweepError
from ftsweep.locks import file_of
from ftsweep.loop import FitResult
from ftsweep.metrics import classification_report
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep")


def param_counts(model) -> dict[str, float]:
    trainable, total = model_mod.count_params(model)
    return {"params/trainable": trainable, "params/total": total, "params/trainable_pct": 100.0 * trainable / total}


def final_metrics(tc: TrainConfig, result: FitResult, train_samples: int, total_steps: int) -> dict[str, float]:
    """The run's scores, speed and steps (memory and parameter counts are added by the recipe)."""
    ev = result.final_eval
    metrics = {f"eval/{k}": ev[k] for k in ("accuracy", "f1_macro", "loss")}
    metrics.update(result.perf())
    # A batch_size above the data set's size is allowed (one batch per epoch); the batch that trains is smaller.
    metrics["perf/effective_batch_size"] = min(tc.batch_size, train_samples) * tc.grad_accum_steps
    metrics["train/steps"], metrics["train/total_steps"] = result.steps, total_steps
    metrics["train/stopped_early"] = float(result.stop_reason == "stopped_early")
    metrics["train/best_step"] = result.best_step  # the weights the final eval used (early stopping restores)
    return metrics


def record(
    tracker: Tracker, result: FitResult, metrics: dict[str, float], label_names: list[str], out_dir: Path
) -> None:
    """Metrics on disk before anything else can fail, then MLflow; then the classification report and the
    confusion matrix."""
    if result.stop_reason:
        tracker.set_tags({result.stop_reason: "true", f"{result.stop_reason}_at_step": result.stopped_at})
    artifacts.write_json(out_dir / "metrics.json", {"run_id": tracker.run_id, "steps": result.steps, **metrics})
    tracker.log_metrics(metrics, step=result.steps)
    cm = result.final_eval["confusion_matrix"]
    try:
        tracker.log_json(classification_report(cm, label_names), "classification_report.json")
        png = out_dir / "confusion_matrix.png"
        artifacts.confusion_matrix_png(cm, label_names, png)
        tracker.log_artifact(png)
    except (OSError, DiskFullError) as exc:  # disk full, read-only artifact store: the metrics are already safe
        raise FtsweepError(
            f"could not write the run's artifacts ({write_failure(exc, out_dir)}); its metrics are "
            f"logged and saved in {out_dir / 'metrics.json'}"
        ) from exc


def keep_model(
    tc: TrainConfig, tracker: Tracker, model, tokenizer, splits: TextSplits, out_dir: Path, in_folder: bool
) -> None:
    """save_model: a run keeps its model (best or all), logged to MLflow. `in_folder` (a sweep's trial with
    save_model=best) only writes it into the run's folder, for the sweeper to log and register if it wins."""
    if tc.save_model == SaveModel.none:
        return
    in_folder = in_folder and tc.save_model == SaveModel.best
    model = model_mod.to_device(model, torch.device("cpu"))  # a 4-bit model stays where it is
    tokenizer = copy.deepcopy(tokenizer)  # the process keeps one tokenizer per folder (model.py): not this one
    keep.set_length(tokenizer, tc.data.max_length, tail=tc.data.truncation.value == "tail")
    cut = {"max_length": tc.data.max_length, "truncation": tc.data.truncation.value}  # predict cuts the same way
    try:
        if in_folder:
            keep.save_folder(model, tokenizer, out_dir / keep.MODEL_NAME, splits.eval_texts, cut)
            return
        uri = keep.log_model(
            tracker.tracking_uri, tracker.active_run_id, model, tokenizer, splits.eval_texts, splits.label_names, cut
        )
        tracker.set_tags({"ftsweep.model_uri": uri})
        log.info("model kept: %s (also runs:/%s/%s)", uri, tracker.run_id, keep.MODEL_NAME)
    except Exception as exc:  # disk full, read-only artifact store: the metrics are already safe
        if not isinstance(exc, OSError) and artifacts.no_space(exc, out_dir) is None:
            raise
        store = file_of(tracker.tracking_uri) or tracker.tracking_uri  # where log_model writes
        where = out_dir / keep.MODEL_NAME if in_folder else store
        reason = write_failure(exc, where, keep.saved_bytes(model))
        raise FtsweepError(
            f"could not keep the model ({reason}); its metrics are logged and saved in {out_dir / 'metrics.json'}"
        ) from exc


def write_failure(exc: BaseException, path: Path | str, need_bytes: Optional[int] = None) -> str:
    """Why a write failed, in a few words: a full disk names the path it hit and the space needed."""
    full = artifacts.no_space(exc, path, need_bytes)
    return str(full) if full is not None else (getattr(exc, "strerror", None) or str(exc))
