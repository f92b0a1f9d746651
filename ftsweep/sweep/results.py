"""What a sweep leaves behind: the summary, trials.csv, optimization_results.yaml and the pruning savings."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ftsweep.artifacts import atomic_write, write_text
from ftsweep.sweep.definition import CONSTRAINTS_ATTR, SKIPPED_ATTR, SweepDefinition

log = logging.getLogger("ftsweep.sweep")
STALE = "ftsweep_stale"  # system attr of a trial FAILed for a rerun (its worker died or was interrupted)


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the study's total: finished, and not failed only to be rerun."""
    return trial.state.is_finished() and not trial.system_attrs.get(STALE)


def feasible(trial: FrozenTrial) -> Optional[bool]:
    """None when the sweep has no constraints or the trial has no values to judge."""
    if trial.user_attrs.get("infeasible"):
        return False
    values = trial.user_attrs.get(CONSTRAINTS_ATTR)
    return None if values is None else all(v <= 0 for v in values)


def summary(study: optuna.Study, definition: SweepDefinition) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "objectives": list(definition.objectives),
        "directions": list(definition.directions),
        "n_complete": len(complete),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "n_pruned": sum(t.state == TrialState.PRUNED and SKIPPED_ATTR not in t.user_attrs for t in trials),
        "fixed": dict(definition.fixed),
    }
    skipped = sum(SKIPPED_ATTR in t.user_attrs for t in trials)
    if skipped:  # prescreened: PRUNED in Optuna, never trained (sweep/prescreen.py)
        out["n_skipped"] = skipped
    if definition.constraints:
        out["constraints"] = dict(definition.constraints)
        out["n_infeasible"] = sum(feasible(t) is False for t in trials)
    candidates = [t for t in complete if feasible(t) is not False]
    if not candidates:
        return out
    if len(definition.objectives) == 1:
        sign = 1 if definition.directions[0] == "maximize" else -1
        best = max(candidates, key=lambda t: (sign * t.values[0], -t.number))
        out.update(
            best_params=dict(best.params),
            best_value=best.values[0],
            best_trial=best.number,
            best_mlflow_run_id=best.user_attrs.get("mlflow_run_id"),
        )
    else:
        out["solutions"] = [
            {
                "trial": t.number,
                "params": dict(t.params),
                "values": dict(zip(definition.objectives, t.values)),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            }
            for t in _pareto(candidates, definition.directions)
        ]
    return out


def _pareto(trials: list[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """The non-dominated trials among the feasible ones (Optuna's best_trials would also consider infeasible)."""
    signs = [1 if d == "maximize" else -1 for d in directions]

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]


def write_trials_csv(trials: Sequence[FrozenTrial], definition: SweepDefinition, path: Path) -> None:
    params = sorted({k for t in trials for k in t.params} | set(definition.fixed))
    constrained = bool(definition.constraints)
    header = [
        "number",
        "state",
        *definition.objectives,
        *params,
        *(["feasible"] if constrained else []),
        "mlflow_run_id",
        "error",
    ]

    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(header)
        for t in trials:
            values = t.values or [None] * len(definition.objectives)
            all_params = {**t.user_attrs.get("fixed", definition.fixed), **t.params}
            w.writerow(
                [
                    t.number,
                    t.state.name,
                    *values,
                    *(all_params.get(p) for p in params),
                    *([feasible(t)] if constrained else []),
                    t.user_attrs.get("mlflow_run_id"),
                    t.user_attrs.get("error")
                    or (f"skipped: {t.user_attrs[SKIPPED_ATTR]}" if SKIPPED_ATTR in t.user_attrs else None),
                ]
            )

    atomic_write(path, write)


def write_results(study: optuna.Study, definition: SweepDefinition, sweep_dir: Path) -> dict[str, Any]:
    """optimization_results.yaml and trials.csv, each written whole; returns the summary."""
    result = summary(study, definition)
    plain = json.loads(json.dumps(result, default=str))
    write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(plain)))
    write_trials_csv(study.get_trials(deepcopy=False), definition, sweep_dir / "trials.csv")
    return result


def sweep_metrics(result: dict[str, Any], children: list[dict[str, float]]) -> dict[str, float]:
    """The parent run's metrics: counts, the best value or front size, and the pruning savings."""
    names = ("n_complete", "n_failed", "n_pruned", "n_infeasible", "n_skipped")
    metrics = {f"sweep/{k}": result[k] for k in names if k in result}
    if "best_value" in result:
        metrics["sweep/best_value"] = result["best_value"]
    if "solutions" in result:
        metrics["sweep/pareto_size"] = len(result["solutions"])
    metrics.update(pruning_savings(children))
    for name in ("baseline/majority_accuracy", "baseline/tfidf_accuracy"):
        values = {m[name] for m in children if name in m}
        if len(values) == 1:  # every trial on the same rows; a sweep over the data itself has no single baseline
            metrics[name] = values.pop()
    return metrics


def pruning_savings(children: list[dict[str, float]]) -> dict[str, float]:
    """Training time the sweep spent, against an estimate of what it would have spent without pruning.

    A pruned trial would have run its remaining steps at the median time per step of the complete trials."""
    done = [m for m in children if "perf/train_time_s" in m and m.get("train/steps")]
    if not done:
        return {}
    spent = sum(m["perf/train_time_s"] for m in done)
    per_step = sorted(
        m["perf/train_time_s"] / m["train/steps"] for m in done if m["train/steps"] >= m.get("train/total_steps", 0)
    )
    if not per_step:
        return {"sweep/train_time_s": spent}
    rate = per_step[len(per_step) // 2]
    unpruned = sum(
        m["perf/train_time_s"] + max(m.get("train/total_steps", 0) - m["train/steps"], 0) * rate for m in done
    )
    return {
        "sweep/train_time_s": spent,
        "sweep/train_time_unpruned_est_s": unpruned,
        "sweep/time_saved_pct": 100.0 * (1 - spent / unpruned) if unpruned else 0.0,
    }


def log_summary(result: dict[str, Any], sweep_dir: Path) -> None:
    log.info(
        "%d complete, %d failed, %d pruned; results in %s",
        result["n_complete"],
        result["n_failed"],
        result["n_pruned"],
        sweep_dir,
    )
    if result.get("n_skipped"):
        log.info("%d trials skipped, predicted over the budget (hydra.sweeper.prescreen)", result["n_skipped"])
    if "n_infeasible" in result:
        log.info("%d trials over the budget %s", result["n_infeasible"], result["constraints"])
    if "best_value" in result:
        log.info("best %s = %.4g with %s", result["objectives"][0], result["best_value"], result["best_params"])
    for s in result.get("solutions", []):
        log.info("pareto: %s with %s", s["values"], s["params"])
    if result["n_complete"] == 0 and result["n_failed"]:
        log.error("all %d trials failed; see the error column of trials.csv", result["n_failed"])
