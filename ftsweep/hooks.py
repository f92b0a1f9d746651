"""What the world around a run may do at its edges: the one way a sweep reaches into a run.

The recipe (ftsweep/recipe.py) and the loop call these; the default does nothing. A sweep's trial
(ftsweep/sweep/trial_link.py) records the run id on its Optuna trial, nests the run under the sweep's parent
run, pins the run to its launcher slot's device, leaves the model for the sweeper to keep, and may stop
training after an evaluation (pruning).
"""

from __future__ import annotations

from typing import Any, Optional


class Hooks:
    parent_run_id: Optional[str] = None  # the MLflow run this run nests under
    tags: dict[str, Any] = {}  # added to the run's own
    device_id: Optional[str] = None  # a CUDA device id this run must use (hydra.sweeper.devices)
    # save_model=best writes the model into the run's folder only: whoever launched the run logs and
    # registers it if the run wins (a sweep keeps its best trial's model alone).
    keep_in_folder: bool = False

    def on_start(self, run_id: str) -> None:
        pass

    def should_stop(self, step: int, evaluation: dict[str, float]) -> Optional[str]:
        """After each evaluation: a reason to stop now (e.g. "pruned"), or None to go on."""
        return None
