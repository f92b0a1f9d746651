"""report.json: the report for machines (CI pipelines, tests). Its fields are public API (docs/contract.md).

Accuracies are fractions (0.87), differences too (-0.053 is 5.3 points lower); intervals are 95 %.
"""

from __future__ import annotations

from typing import Any, Optional

from ftsweep.report.caveats import Caveat
from ftsweep.report.evidence import Comparison
from ftsweep.report.recommend import Recommendation
from ftsweep.report.replicates import Configuration
from ftsweep.report.rows import Row

VERSION = 1


def comparison(c: Optional[Comparison]) -> Optional[dict[str, Any]]:
    if c is None:
        return None
    return {"diff": c.diff, "low": c.low, "high": c.high, "p_value": c.p_value, "paired": c.paired, "tied": c.tied}


def trial(r: Row) -> dict[str, Any]:
    return {
        "trial": r.trial,
        "run_id": r.run_id,
        "method": r.method,
        "seed": r.params.get("seed"),
        "state": r.state,
        "accuracy": r.accuracy,
        "accuracy_ci": [r.get("eval/accuracy_ci_low"), r.get("eval/accuracy_ci_high")],
        "vs_best": comparison(r.vs_best),
        "memory_mb": r.memory_mb,
        "step_time_ms": r.get("perf/step_time_ms"),
        "train_time_s": r.get("perf/train_time_s"),
        "within_budget": r.feasible,
        "pareto": r.pareto,
    }


def configuration(c: Configuration) -> dict[str, Any]:
    return {
        "params": c.params,
        "n": c.n,
        "seeds": c.seeds,
        "run_ids": [r.run_id for r in c.rows],
        "mean": c.mean,
        "sd": c.sd,
        "ci": list(c.interval),
        "memory_mb": c.cost("memory"),
        "train_time_s": c.cost("time"),
    }


def answer(rec: Recommendation) -> dict[str, Any]:
    return {
        "rule": (
            "best: the highest mean accuracy within budget; cheapest_by_<axis>: the cheapest configuration whose "
            "95 % interval against the best covers 0 (tied) or, with a tolerance of t points, lies above -t"
        ),
        "tolerance_points": rec.tolerance_points,
        "best": configuration(rec.best) if rec.best is not None else None,
        **{
            f"cheapest_by_{p.axis}": {
                **configuration(p.config),
                "vs_best": comparison(p.vs_best),
                "verdict": p.verdict,
                "confirmed": p.confirmed,
            }
            for p in rec.picks
        },
    }


def build(
    parent: Any,
    rows: list[Row],
    rec: Recommendation,
    configs: list[Configuration],
    caveats: list[Caveat],
    baselines: dict[str, Any],
) -> dict[str, Any]:
    """Everything the report concludes, with the run ids it comes from."""
    return {
        "version": VERSION,
        "study": parent.data.tags.get("optuna.study_name", parent.info.run_name),
        "parent_run_id": parent.info.run_id,
        "answer": answer(rec),
        "trials": [trial(r) for r in sorted(rows, key=lambda r: (r.trial is None, r.trial or 0))],
        "replicates": [configuration(c) for c in configs if c.n > 1],
        "warnings": [
            {"kind": w.kind, "parameter": w.parameter, "message": w.message, "override": w.override} for w in caveats
        ],
        "baselines": {k: comparison(v) if isinstance(v, Comparison) else v for k, v in baselines.items()},
        "not_trained": [
            {"trial": r.trial, "state": r.state, "reason": r.error.splitlines()[0] if r.error else r.state}
            for r in rows
            if not r.ok and not r.get("train/steps")
        ],
    }
