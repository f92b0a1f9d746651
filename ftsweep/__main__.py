"""The one entry point: `python -m ftsweep [overrides]` (add -m for a sweep).

Hydra composes conf/ on top of the schemas in ftsweep/config.py; this wrapper
only calls train() and hands the objective back to the sweeper.
"""

from __future__ import annotations

import logging
import os
import sys

# Quieter start-up: no tokenizer fork warnings, no artifact progress bars in logs.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")  # SQLAlchemy 1.4 is pinned on purpose (optuna 2.10)
# An unreachable tracking server should fail in seconds, not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import ftsweep.config  # noqa: E402,F401  (registers the schemas)
from ftsweep import interrupt  # noqa: E402
from ftsweep.errors import FtsweepError  # noqa: E402

log = logging.getLogger("ftsweep")
SUMMARY = ("eval/accuracy", "eval/f1_macro", "perf/step_time_ms", "perf/train_time_s", "mem/cpu_peak_rss_mb",
           "mem/cuda_peak_allocated_mb", "params/trainable_pct")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | list[float]:
    from ftsweep.sweep import record_run_id
    from ftsweep.train import objective, train

    hc = HydraConfig.get()
    try:
        metrics = train(cfg, output_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task),
                        on_start=lambda run_id: record_run_id(cfg.sweep, run_id))
    except FtsweepError as exc:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records this trial as failed and goes on
        print(f"ftsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper marks the trial FAIL, ends the parent run FAILED and exits
        print(f"ftsweep: interrupted ({exc or 'Ctrl-C'}); the MLflow run is marked KILLED", file=sys.stderr)
        sys.exit(130)
    log.info("  ".join(f"{k}={metrics[k]:.4g}" for k in SUMMARY if k in metrics))
    return objective(metrics, list(cfg.objectives))


if __name__ == "__main__":
    # SIGTERM (kill, a scheduler's preemption) takes Ctrl-C's path: runs end KILLED, trials FAIL and rerun.
    interrupt.install()
    main()
