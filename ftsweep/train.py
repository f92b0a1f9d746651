"""train(cfg): config -> data -> model + method -> loop -> metrics -> tracker, as one FineTuneRecipe.

Knows nothing of Hydra or Optuna, so tests and other programs call it directly; a sweep reaches in only
through `Hooks`. Everything a user can fix is checked before a model loads and before an MLflow run exists;
once the run exists it always ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from ftsweep import microbatch
from ftsweep.config import TrainConfig
from ftsweep.hooks import Hooks
from ftsweep.recipe import FineTuneRecipe
from ftsweep.tracking import Tracker


def train(
    cfg: DictConfig | TrainConfig,
    output_dir: str | Path | None = None,
    overrides: Optional[list[str]] = None,
    tracker: Optional[Tracker] = None,
    hooks: Optional[Hooks] = None,
) -> dict[str, float]:
    """Fine-tune as configured; return the final metrics (all logged to MLflow)."""
    if isinstance(cfg, TrainConfig) and cfg.micro_batch_size == "auto":
        cfg = OmegaConf.structured(cfg)
    if isinstance(cfg, DictConfig):  # micro_batch_size=auto: fitted by probes before the run exists
        cfg = microbatch.fitted(cfg, hooks.device_id if hooks else None)
    recipe = FineTuneRecipe(cfg, output_dir, overrides, tracker, hooks)
    recipe.prepare()
    recipe.start_run()
    try:
        recipe.log_inputs()
        recipe.setup()
        return recipe.finish(recipe.train())
    except BaseException as exc:
        recipe.fail(exc)
        raise
    finally:
        recipe.cleanup()
