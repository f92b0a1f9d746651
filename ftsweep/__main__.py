"""The one entry point: `python -m ftsweep [overrides]` or `ftsweep [overrides]` (add -m for a sweep).

Hydra composes conf/ on top of the schemas in ftsweep/config.py; this wrapper links a sweep's job to
its Optuna trial, calls train(), and hands the run's metrics back to the sweeper.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from ftsweep import interrupt

if __name__ == "__main__":
    interrupt.install()  # before the slow imports below: a Ctrl-C during start-up is a clean stop too

# hydra-ray-launcher 1.2.2 warns on import, and Hydra imports every installed plugin at each start-up, here
# and in each Ray worker (which learns the filter from the environment).
_PLUGIN_WARNING = "ignore:register_new_resolver() is deprecated:UserWarning"
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
if _PLUGIN_WARNING not in os.environ.get("PYTHONWARNINGS", ""):
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _PLUGIN_WARNING]))
# Quieter start-up: no tokenizer fork warnings, no artifact progress bars in logs.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# An unreachable tracking server should fail in seconds, not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from ftsweep.compose import compose_config  # noqa: E402
from ftsweep.config import CONF_DIR, objectives_of  # noqa: E402  (importing it registers the schemas)
from ftsweep.errors import FtsweepError, describe_config_error  # noqa: E402

log = logging.getLogger("ftsweep")
SUMMARY = (
    "eval/accuracy",
    "eval/f1_macro",
    "baseline/tfidf_accuracy",
    "baseline/majority_accuracy",
    "perf/step_time_ms",
    "perf/train_time_s",
    "mem/cpu_peak_rss_mb",
    "mem/cuda_peak_allocated_mb",
    "params/trainable_pct",
)


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> dict[str, float]:
    # Here, not at the top: train() brings torch, transformers, peft and MLflow, which must not load before
    # main() has installed the interrupt handler, nor for a command line that fails at composition (measured:
    # `ftsweep lrr=1` prints its one line after 0.6 s with this import here, 6.5 s with it at the top).
    # TrialLink is for a sweep's jobs only.
    from ftsweep.train import train

    hc = HydraConfig.get()
    sweep_job = hc.mode == RunMode.MULTIRUN
    in_worker = sweep_job and interrupt.in_worker()
    try:
        link = None
        if cfg.resume and not sweep_job:
            cfg = _with_resumed_settings(cfg, list(hc.overrides.task))
        with interrupt.job_scope() if in_worker else contextlib.nullcontext():
            if cfg.sweep.trial_id is not None:
                from ftsweep.sweep.trial_link import TrialLink

                link = TrialLink.from_config(cfg.sweep)
            metrics = train(cfg, output_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task), hooks=link)
    except FtsweepError as exc:
        if sweep_job:
            raise  # the sweeper records this trial as failed and goes on
        print(f"ftsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        if in_worker:  # this job alone was stopped (preempted): the sweeper runs its trial again
            raise interrupt.TrialInterrupted(str(exc) or "Ctrl-C") from None
        if sweep_job:
            raise  # the sweeper marks the trial FAIL, ends the parent run FAILED and exits
        print(f"ftsweep: interrupted ({exc or 'Ctrl-C'}); the MLflow run is marked KILLED", file=sys.stderr)
        sys.exit(130)
    if link is not None:
        link.raise_if_pruned()
    log.info(summary_line(metrics))
    return sweeper_return(metrics, objectives_of(cfg), str(hc.sweeper.get("_target_", "")) if sweep_job else "")


def summary_line(metrics: dict[str, float]) -> str:
    """The run's one line: `eval/accuracy=0.87 [0.85, 0.89]` (its 95 % interval), then speed and memory."""
    parts = [f"{k}={metrics[k]:.4g}" for k in SUMMARY if k in metrics]
    if "eval/accuracy_ci_low" in metrics and parts and parts[0].startswith("eval/accuracy="):
        parts[0] += f" [{metrics['eval/accuracy_ci_low']:.4g}, {metrics['eval/accuracy_ci_high']:.4g}]"
    return "  ".join(parts)


FTSWEEP_SWEEPER = "hydra_plugins.ftsweep_sweeper.sweeper.FtsweepSweeper"


def sweeper_return(metrics: dict[str, float], objectives: list[str], sweeper: str):
    """What the job hands back: ftsweep's sweeper (and a single run) takes every metric; any other sweeper,
    hydra-optuna-sweeper's `hydra/sweeper=optuna` among them, gets what it expects of a task, the objective
    as a float, or a tuple for several, in the order of `objectives` (`optimized_metric` sets that list)."""
    if not sweeper or sweeper == FTSWEEP_SWEEPER:
        return metrics
    values = tuple(float(metrics[name]) for name in objectives)
    return values[0] if len(values) == 1 else values


def _with_resumed_settings(cfg: DictConfig, task_overrides: list[str]) -> DictConfig:
    """`python -m ftsweep resume=RUN_ID` alone: the interrupted run's overrides, with the command line's on top."""
    # Here, not at the top, as train in app(): checkpoint brings torch, tracking MLflow.
    from ftsweep import checkpoint
    from ftsweep.tracking import Tracker

    where = checkpoint.locate(cfg.resume, Tracker().client)
    return compose_config(*checkpoint.overrides_of(where), *task_overrides)


def main(install_signals: bool = True) -> None:
    """`python -m ftsweep` and the `ftsweep` console script alike: SIGTERM (kill, a scheduler's
    preemption) takes Ctrl-C's path, so runs end KILLED and trials FAIL and rerun. Every mistake on the
    command line, Hydra's included, is one `ftsweep: error:` line and exit 2."""
    if install_signals:
        interrupt.install()
    # Hydra re-raises instead of printing its own report (several lines, exit 1), so errors end up here.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"ftsweep: error: {describe_config_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:  # before a run exists (start-up, composing the config)
        print(f"ftsweep: interrupted ({exc or 'Ctrl-C'}) before anything started", file=sys.stderr)
        sys.exit(130)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


if __name__ == "__main__":
    main()
