"""Reading a sweep back: its trials from MLflow (and from Optuna, for trials that never had a run)."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import optuna
from mlflow.exceptions import MlflowException

from ftsweep.errors import FtsweepError, first_line, is_out_of_memory
from ftsweep.locks import redact
from ftsweep.sweep.definition import SKIPPED_ATTR
from ftsweep.sweep.trial_link import STORAGE_ENV

log = logging.getLogger("ftsweep.report")


@dataclass
class Row:
    """One trial: what was tried, what it scored, what it cost."""

    trial: Optional[int]
    method: str
    params: dict[str, str]
    metrics: dict[str, float]
    state: str
    run_id: str = ""
    error: str = ""
    model: str = ""
    group: str = ""  # what the report compares: the method, or "method (model)" when a sweep spans models
    pareto: list[str] = field(default_factory=list)
    over_budget: list[str] = field(default_factory=list)  # the constraints this trial broke
    eval_digest: str = ""  # the eval split it was scored on (tag ftsweep.eval_digest); "" for older runs
    eval_samples: Optional[int] = None
    vs_best: Any = None  # a report.evidence.Comparison: this trial's accuracy against the best trial's
    predicted_classes: Optional[int] = None  # how many classes its eval predictions use (from predictions.parquet)
    history: dict[str, list[float]] = field(default_factory=dict)  # train/loss and eval/accuracy, step by step
    swept: Optional[dict[str, str]] = None  # the values the sweep chose for this trial (its Optuna params)

    def get(self, key: str) -> Optional[float]:
        value = self.metrics.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    @property
    def accuracy(self) -> Optional[float]:
        return self.get("eval/accuracy")

    @property
    def finished_accuracy(self) -> float:
        """The accuracy of a finished trial: an `ok` row has one."""
        assert self.accuracy is not None, f"trial {self.trial} did not finish: it has no accuracy"
        return self.accuracy

    @property
    def memory_mb(self) -> Optional[float]:
        """The memory axis: the CUDA allocator peak on a GPU, the exact training state on a CPU
        (mem/footprint_mb); runs logged before that metric existed fall back to mem/peak_mb."""
        footprint = self.get("mem/footprint_mb")
        return footprint if footprint is not None else self.get("mem/peak_mb")

    @property
    def ok(self) -> bool:
        return self.state == "FINISHED" and self.accuracy is not None

    @property
    def feasible(self) -> bool:
        return not self.over_budget


def find_sweep(client, run_id: Optional[str], experiment: Optional[str]) -> Any:
    """The sweep's parent run: the one named, or the latest; one clear line when there is none."""
    if run_id is None:
        return latest_sweep(client, experiment)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise FtsweepError(f"no run '{run_id}' in the tracking store {client.tracking_uri}") from None
    if run.data.tags.get("ftsweep.role") != "sweep":
        raise FtsweepError(
            f"run '{run_id}' is not a sweep's parent run (it has no "
            "ftsweep.role=sweep tag); pass the id of a `sweep-ftsweep-...` run"
        )
    return run


def latest_sweep(client, experiment: Optional[str]) -> Any:
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise FtsweepError(f"no MLflow experiment named '{experiment}'")
        experiments = [exp.experiment_id]
    else:
        experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, "tags.`ftsweep.role` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise FtsweepError(
            "no sweep found in the tracking store; run `python -m ftsweep -m ...` first, or pass --sweep PARENT_RUN_ID"
        )
    return runs[0]


def collect(client, parent, study=None) -> list[Row]:
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=10000
    )
    rows = []
    seen = set()
    for run in children:
        tags = run.data.tags
        number = tags.get("optuna.trial_number")
        rows.append(
            Row(
                trial=int(number) if number is not None else None,
                method=run.data.params.get("method.name", tags.get("method", "?")),
                model=run.data.params.get("model.name", tags.get("model", "")),
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                state="PRUNED" if tags.get("pruned") == "true" else run.info.status,
                run_id=run.info.run_id,
                error=tags.get("error", ""),
                eval_digest=tags.get("ftsweep.eval_digest", ""),
                eval_samples=int(run.data.params["eval_samples"]) if "eval_samples" in run.data.params else None,
            )
        )
        seen.add(run.info.run_id)
    chosen = {t.number: t.params for t in study.get_trials(deepcopy=False)} if study is not None else {}
    for r in rows:
        if r.trial in chosen:
            r.swept = {k: str(v) for k, v in chosen[r.trial].items()}
    rows.extend(optuna_only_failures(study, seen))
    mark_budget(rows, constraints_of(parent))
    several_models = len({r.model for r in rows if r.model}) > 1
    for r in rows:
        r.group = f"{r.method} ({r.model})" if several_models and r.model else r.method
    return rows


HISTORIES = ("train/loss", "eval/accuracy")


def read_histories(client, rows: list[Row]) -> None:
    """Each finished trial's loss and eval curves, for the warnings (undertrained, diverged)."""
    for r in rows:
        if r.run_id and r.state in ("FINISHED", "FAILED"):
            try:
                r.history = {
                    k: [m.value for m in sorted(client.get_metric_history(r.run_id, k), key=lambda m: m.step)]
                    for k in HISTORIES
                }
            except MlflowException as exc:  # warnings are a bonus: never fail the report for them
                log.debug("no history for run %s: %s", r.run_id, first_line(exc))


def constraints_of(parent) -> dict[str, float]:
    """The sweep's budgets, {metric: upper bound}, as its parent run recorded them."""
    return {k: float(v) for k, v in json.loads(parent.data.params.get("sweep.constraints") or "{}").items()}


def mark_budget(rows: list[Row], constraints: dict[str, float]) -> None:
    """A row is over budget when a constrained metric is above its bound; a run that ran out of memory is too."""
    for r in rows:
        r.over_budget = [k for k, bound in constraints.items() if (value := r.get(k)) is not None and value > bound]
        if constraints and is_out_of_memory(r.error):
            r.over_budget.append("out of memory")


def load_study(parent, storage: Optional[str] = None) -> Any:
    """The sweep's Optuna study, or None (with the reason logged) when its storage cannot be read from here.

    MLflow keeps the storage URL with its password hidden (`***`). The real URL is `storage` (the report's
    --storage), else $FTSWEEP_SWEEP_STORAGE when it matches, else the URL without a password, which a
    PostgreSQL server accepts with PGPASSWORD or ~/.pgpass."""
    tags = parent.data.tags
    recorded, study_name = tags.get("optuna.storage"), tags.get("optuna.study_name")
    if not study_name or not (recorded or storage):
        return None
    url = storage or recorded
    if "***" in url:
        env = os.environ.get(STORAGE_ENV, "")
        url = env if env and redact(env) == recorded else url.replace(":***@", "@")
    try:
        return optuna.load_study(study_name=study_name, storage=url)
    except Exception as exc:  # the storage may live on another machine, or need its password
        hint = " (its password is hidden in MLflow: pass --storage URL or set PGPASSWORD)" if "***" in recorded else ""
        log.warning("could not read Optuna study %s at %s%s: %s", study_name, redact(url), hint, first_line(exc))
        return None


def optuna_only_failures(study, seen: set[str]) -> list[Row]:
    """Trials that failed before an MLflow run existed (a bad value, say), and trials that prescreening skipped
    (state SKIPPED, the reason as their error): only Optuna knows them."""
    rows = []
    for t in study.get_trials(deepcopy=False) if study is not None else []:
        skipped = t.user_attrs.get(SKIPPED_ATTR)
        if (t.state.name != "FAIL" and not skipped) or t.user_attrs.get("mlflow_run_id") in seen:
            continue
        params = {**t.user_attrs.get("fixed", {}), **{k: str(v) for k, v in t.params.items()}}
        rows.append(
            Row(
                trial=t.number,
                method=str(params.get("method", "?")),
                model=str(params.get("model", "")),
                params=params,
                metrics={},
                state="SKIPPED" if skipped else "FAILED",
                error=skipped or t.user_attrs.get("error", ""),
            )
        )
    return rows


def study_importances(study) -> dict[str, float]:
    """Optuna's importances (PED-ANOVA) over the completed trials; {} when there is too little to say."""
    if study is None:
        return {}
    try:
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        varying = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) < 4 or not (varying - {"seed"}) or len(study.directions) > 1:
            return {}
        # a seed is a replicate, not a setting to choose: its "importance" would be noise
        return optuna.importance.get_param_importances(study, params=sorted(varying - {"seed"}) or None)
    except Exception as exc:  # importances are a bonus: never fail the report for them
        log.warning("parameter importances unavailable: %s", first_line(exc))
        return {}


def to_float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fmt(value: Any, digits: int = 4) -> str:
    """A number as a reader takes it in: `digits` significant digits (0.3269, 4.405), and from 1,000 up whole,
    with thousands separators (22,713,986 parameters; 12,346 MB, where `g` would write 1.235e+04)."""
    if value is None:
        return "–"
    if isinstance(value, str) and "." in value:  # MLflow keeps params as text: 0.00057720094 -> 0.000577
        value = to_float(value) if to_float(value) is not None else value
    if isinstance(value, bool):  # an int to Python, a flag to the reader
        return str(value)
    if isinstance(value, (int, float)) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
