"""What a run leaves behind: its final metrics (on disk first, then MLflow), its report artifacts, and the
model it keeps. Nothing here trains."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ftsweep import artifacts, keep, stats
from ftsweep import model as model_mod
from ftsweep.config import SaveModel, TrainConfig
from ftsweep.contract import PREDICTIONS
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
    cm = ev["confusion_matrix"]
    low, high = stats.accuracy_interval(int(np.trace(cm)), int(cm.sum()))
    metrics["eval/accuracy_ci_low"], metrics["eval/accuracy_ci_high"] = low, high
    metrics.update(result.perf())
    # A batch_size above the data set's size is allowed (one batch per epoch); the batch that trains is smaller.
    # (With micro_batch_size set, grad_accum_steps is 1: batch_size is then the batch the optimizer sees.)
    metrics["perf/effective_batch_size"] = min(tc.batch_size, train_samples) * tc.grad_accum_steps
    metrics["perf/micro_batch_size"] = min(tc.forward_batch_size, train_samples)  # examples per forward pass
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
        predictions = write_predictions(result.final_eval, label_names, out_dir / PREDICTIONS)
        if predictions is not None:
            tracker.log_artifact(predictions)
        tracker.log_json(classification_report(cm, label_names), "classification_report.json")
        png = out_dir / "confusion_matrix.png"
        artifacts.confusion_matrix_png(cm, label_names, png)
        tracker.log_artifact(png)
    except (OSError, DiskFullError) as exc:  # disk full, read-only artifact store: the metrics are already safe
        raise FtsweepError(
            f"could not write the run's artifacts ({write_failure(exc, out_dir)}); its metrics are "
            f"logged and saved in {out_dir / 'metrics.json'}"
        ) from exc


def write_predictions(evaluation: dict, label_names: list[str], path: Path) -> Optional[Path]:
    """One row per eval example: `example_id` (its index in the eval split), `label`, `predicted` and
    `prob_<class>`, so that two runs on the same eval split (tag ftsweep.eval_digest) compare example by
    example. None when the evaluation did not say which example is which."""
    order, probs = evaluation.get("order"), evaluation.get("probs")
    if order is None or probs is None:
        return None
    names = np.asarray(label_names, dtype=object)
    frame = pd.DataFrame(
        {
            "example_id": np.asarray(order, dtype=np.int64),
            "label": names[evaluation["labels"]],
            "predicted": names[probs.argmax(axis=1)],
        }
    )
    for k, name in enumerate(label_names):
        frame[f"prob_{name}"] = probs[:, k]
    if evaluation.get("tfidf_predicted") is not None:  # the TF-IDF baseline's answer for the same example
        frame["tfidf_predicted"] = names[np.asarray(evaluation["tfidf_predicted"])[frame["example_id"]]]
    data = frame.sort_values("example_id").to_parquet(index=False)
    artifacts.atomic_write(path, lambda f: f.write(data), binary=True, need_bytes=len(data))
    return path


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
