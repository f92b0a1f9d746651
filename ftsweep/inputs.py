"""What a run records about itself before it trains: its name, the tags it starts with, and what went in (the
resolved config as params and YAML, the overrides, the label map, the data sets)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import ftsweep
from ftsweep import methods
from ftsweep.config import TrainConfig
from ftsweep.data import TextSplits, eval_digest, sources
from ftsweep.evaluation import precision_tag
from ftsweep.hooks import Hooks
from ftsweep.tracking import Tracker, flatten


def run_name(cfg: TrainConfig) -> str:
    if cfg.run_name:
        return cfg.run_name
    part = methods.spec(cfg.method).run_name_part(cfg.method)
    parts = [cfg.method.name] + ([part] if part else [])
    parts += [f"lr{cfg.lr:.0e}".replace("e-0", "e-").replace("e+0", "e"), f"bs{cfg.batch_size}"]
    return "-".join(parts)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_tags(tc: TrainConfig, device: torch.device, hooks: Hooks, splits: TextSplits) -> dict[str, Any]:
    """The tags a new run starts with (docs/contract.md), the hooks' own (a sweep's trial) included."""
    return {
        "method": tc.method.name,
        "model": tc.model.name,
        "dataset": tc.data.name,
        "device": device.type,
        "precision": precision_tag(tc.precision, device),
        **({"ftsweep.device_id": hooks.device_id} if hooks.device_id is not None else {}),
        "ftsweep.eval_digest": eval_digest(splits),
        "git_commit": _git_commit(),
        "ftsweep_version": ftsweep.__version__,
        **hooks.tags,
    }


def log_inputs(
    tracker: Tracker,
    tc: TrainConfig,
    raw: DictConfig,
    resolved: dict[str, Any],
    overrides: Optional[list[str]],
    splits: TextSplits,
) -> None:
    tracker.log_params(flatten(resolved))
    tracker.log_text(OmegaConf.to_yaml(raw, resolve=True), "config.yaml")
    tracker.log_text("\n".join(overrides or []) + "\n", "overrides.txt")
    label_map = dict(enumerate(splits.label_names))
    tracker.log_json(label_map, "label_map.json")
    train_source, eval_source = sources(tc.data)
    for context, texts, labels, source in (
        ("train", splits.train_texts, splits.train_labels, train_source),
        ("eval", splits.eval_texts, splits.eval_labels, eval_source),
    ):
        frame = pd.DataFrame({"text": texts, "label": [splits.label_names[i] for i in labels]})
        tracker.log_dataset(frame, f"{tc.data.name}-{context}", source, context)
    tracker.log_params(
        {
            "label_map": json.dumps(label_map),
            "num_labels": splits.num_labels,
            "train_samples": len(splits.train_texts),
            "eval_samples": len(splits.eval_texts),
        }
    )
