"""A sweep's study and its MLflow parent run: opened (or created) at the start, closed with the results.

One MLflow parent run per study, created by the first worker and reopened by later ones; every trial is its
child run. The results (trials.csv, optimization_results.yaml, the sweep's metrics) are written and logged to
it whatever ends the sweep; then the parent run ends.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from ftsweep import spool
from ftsweep.locks import redact
from ftsweep.sweep import results
from ftsweep.sweep.definition import SweepDefinition, make_pruner
from ftsweep.sweep.storage import claim_lock, open_storage
from ftsweep.sweep.trial_link import OBJECTIVES_ATTR, PARENT_RUN_ATTR, PRUNER_ATTR
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep.sweep")


def open_study(d: SweepDefinition, url: str) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    """The storage and the study (an old one found by its ftsweep 0.1 name), under the lock, because two workers
    creating tables or the same study at once would collide."""
    with claim_lock(url):
        storage = open_storage(url)
        names = {s.study_name for s in storage.get_all_studies()}
        name = d.study_name
        if name not in names and not d.study_name_override and d.legacy_study_name in names:
            name = d.legacy_study_name
            log.info("resuming study %s, named by an earlier ftsweep", name)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            pruner=make_pruner(d.pruner_spec()),
            directions=list(d.directions),
            load_if_exists=True,
        )
        study.set_user_attr(PRUNER_ATTR, d.pruner_spec())
        study.set_user_attr(OBJECTIVES_ATTR, list(d.objectives))
        return storage, study


def open_parent_run(study: optuna.Study, d: SweepDefinition, url: str, config: DictConfig, sweep_dir: Path) -> Tracker:
    """Created by the first worker, reopened by later ones (or created again if this store lacks it), under the
    lock: two workers starting together would otherwise both find no parent run and each create one."""
    with claim_lock(url):
        return _open_parent_run(study, d, url, config, sweep_dir)


def _open_parent_run(study: optuna.Study, d: SweepDefinition, url: str, config: DictConfig, sweep_dir: Path) -> Tracker:
    tracker = Tracker()
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    window = float(config.tracking.retry_window_s)
    if run_id and tracker.resume(run_id):
        tracker.keep_writes(spool.worker_folder(sweep_dir), window)
        return tracker
    tracker.start(
        config.experiment_name or config.data.name,
        run_name=f"sweep-{study.study_name}",
        tags={
            "ftsweep.role": "sweep",
            "optuna.study_name": study.study_name,
            "optuna.storage": redact(url),
            "ftsweep.sweep_dir": str(sweep_dir),
        },
    )
    definition = d.canonical()
    tracker.log_params(
        {
            "sweep.study_name": study.study_name,
            "sweep.storage": url,
            "sweep.sampler": d.sampler,
            "sweep.n_trials": d.n_trials,
            "sweep.seeds": json.dumps(list(d.seeds)),  # each configuration's seeds; []: one run each
            "sweep.seed": d.seed,
            "sweep.objectives": ",".join(d.objectives),
            "sweep.directions": ",".join(d.directions),
            "sweep.search_space": json.dumps(definition["space"]),
            "sweep.fixed": json.dumps(definition["fixed"]),
            "sweep.custom_search_space": d.custom_search_space or "",
            "sweep.constraints": json.dumps(d.constraints),
            "sweep.tolerance": d.tolerance,
            "sweep.pruner": d.pruner,
        }
    )
    study.set_user_attr(PARENT_RUN_ATTR, tracker.run_id)
    tracker.keep_writes(spool.worker_folder(sweep_dir), window)  # its results wait out a store's outage too
    return tracker


def write_results(
    study: optuna.Study, d: SweepDefinition, parent: Tracker, sweep_dir: Path, utilisation: dict[str, float]
) -> tuple[dict[str, Any], list]:
    """trials.csv and optimization_results.yaml, logged to the parent run with the sweep's metrics; returns the
    summary and the trials' MLflow runs (none while MLflow cannot be reached)."""
    result = results.write_results(study, d, sweep_dir)
    for name in ("optimization_results.yaml", "trials.csv"):
        parent.log_artifact(sweep_dir / name)
    try:
        children = parent.client.search_runs(
            [parent.client.get_run(parent.run_id).info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
            max_results=10000,
        )
    except Exception as exc:
        if not spool.unreachable(exc):
            raise
        log.warning(
            "MLflow cannot be reached to read the trials' runs: no best model or report now; after "
            "python -m ftsweep.sync %s, python -m ftsweep.report --sweep %s",
            sweep_dir,
            parent.run_id,
        )
        children = []
    parent.log_metrics({**results.sweep_metrics(result, [c.data.metrics for c in children]), **utilisation}, step=0)
    return result, children


@dataclass
class SweepDone:
    """What a finished (or interrupted) runner hands to what comes after it (ftsweep/conclude.py)."""

    study: optuna.Study
    definition: SweepDefinition
    sweep_dir: Path
    parent_run_id: str
    tracking_uri: str
    children: list  # the trials' MLflow runs
    save_model: str  # best, all or none
    aborted: bool  # interrupted, or stopped by too many failures
