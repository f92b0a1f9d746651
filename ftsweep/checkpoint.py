"""Checkpoints: what a run needs to continue exactly where it stopped, in one file written whole.

The file holds the trainable weights (the frozen ones are rebuilt, identically, from the seed), the
optimizer, scheduler and loop state (data position, RNG states, loss accumulators, early stopping), the
config it was made with and its MLflow run id. A run records the file's path in its `ftsweep.checkpoint`
tag, so `resume=<run id>` finds it; `resume=<folder>` names it directly.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from mlflow.exceptions import MlflowException
from torch import nn

from ftsweep import artifacts
from ftsweep.errors import ConfigError

FILE = "checkpoint.pt"
RUN_TAG = "ftsweep.checkpoint"
# Settings that may differ between a run and its resumption: they change neither the data nor the numbers.
FREE_ON_RESUME = ("resume", "progress_bar", "run_name", "sweep", "checkpoint_every_steps", "save_model", "tracking")


def comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in FREE_ON_RESUME}


def save(
    path: Path,
    model: nn.Module,
    optimizer,
    scheduler,
    loop_state: dict,
    run_id: str,
    overrides: list[str],
    config: dict,
) -> None:
    state = {
        "format": 1,
        "run_id": run_id,
        "overrides": list(overrides),
        "config": comparable(config),
        "model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loop": loop_state,
    }
    artifacts.atomic_write(path, lambda f: torch.save(state, f), binary=True, need_bytes=artifacts.tensor_bytes(state))
    # Beside it, small: what `python -m ftsweep resume=...` needs to compose the same config again.
    artifacts.write_json(path.with_suffix(".json"), {"run_id": run_id, "overrides": list(overrides)})


def overrides_of(path: Path) -> list[str]:
    """The command-line overrides of the run that wrote this checkpoint, less a sweep's links to its trial
    (resumed alone, a trial's run is a single run)."""
    meta = path.with_suffix(".json")
    overrides = json.loads(meta.read_text())["overrides"] if meta.is_file() else []
    return [o for o in overrides if not o.lstrip("+~").startswith(("sweep.", "resume="))]


def remove(*paths: Path | None) -> None:
    """Delete finished checkpoints; one that cannot be deleted (a read-only folder) is only worth a warning."""
    for path in {p for p in paths if p is not None}:
        for file in (path, path.with_suffix(".json")):
            try:
                file.unlink(missing_ok=True)
            except OSError as exc:
                logging.getLogger("ftsweep").warning("could not delete %s (%s)", file, exc.strerror or exc)


def locate(value: str, tracking_client=None) -> Path:
    """A checkpoint file from `resume=`: a file, a folder holding one, or an MLflow run id whose tag names one."""
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / FILE
    if path.is_file():
        return path
    if re.fullmatch(r"[0-9a-f]{32}", value) and tracking_client is not None:
        try:
            tagged = tracking_client.get_run(value).data.tags.get(RUN_TAG)
        except MlflowException:
            tagged = None
            reason = "no such MLflow run"
        else:
            reason = (
                "it never wrote a checkpoint (set checkpoint_every_steps)"
                if not tagged
                else f"its checkpoint {tagged} is gone (a run that finished removed it)"
            )
        if tagged and Path(tagged).is_file():
            return Path(tagged)
        raise ConfigError(f"resume={value}: {reason}")
    raise ConfigError(
        f"resume={value}: no checkpoint there; give the MLflow run id of an interrupted run or its checkpoint folder"
    )


def load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: it holds plain objects
    except Exception as exc:
        raise ConfigError(f"resume: {path} is not a readable ftsweep checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != 1:
        raise ConfigError(f"resume: {path} is not an ftsweep checkpoint")
    return state


def check_same_config(state: dict, config: dict, where: Path) -> None:
    """A run resumes with the config it started with; a changed setting would silently change the numbers."""
    before, now = state["config"], comparable(config)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        key = changed[0]
        raise ConfigError(
            f"resume from {where}: {key} differs from the interrupted run ({before.get(key)!r}, now "
            f"{now.get(key)!r}); resume with the same settings (python -m ftsweep resume=... alone "
            f"reuses them)"
        )


def restore(model: nn.Module, optimizer, scheduler, state: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
