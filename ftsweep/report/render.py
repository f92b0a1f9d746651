"""Writing the report: Markdown from the rows, the analysis, the recommendation and the warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ftsweep.report.analysis import answer, describe, varying
from ftsweep.report.caveats import Caveat
from ftsweep.report.evidence import Comparison
from ftsweep.report.plots import memory_label
from ftsweep.report.recommend import Recommendation
from ftsweep.report.rows import Row, constraints_of, fmt


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def render(
    parent,
    rows: list[Row],
    summary: list[dict],
    plots: list[Path],
    importances: dict[str, float],
    rec: Recommendation,
    caveats: list[Caveat],
    findings: Optional[list[str]] = None,
) -> str:
    """`findings`: the answer's evidence lines (ties, baselines: ftsweep/report/evidence.py)."""
    study = parent.data.tags.get("optuna.study_name", parent.info.run_name)
    ok = [r for r in rows if r.ok]
    pruned = [r for r in rows if r.state == "PRUNED"]
    skipped = [r for r in rows if r.state == "SKIPPED"]  # prescreened: predicted over budget, never trained
    failed = [r for r in rows if not r.ok and r.state not in ("PRUNED", "SKIPPED")]
    md = [
        f"# Trade-off report: {study}",
        "",
        f"MLflow parent run `{parent.info.run_id}` · {len(ok)} finished, {len(pruned)} pruned, "
        f"{len(failed)} failed trials" + (f", {len(skipped)} skipped (predicted over budget)." if skipped else "."),
        "",
        "## Answer",
        "",
        *answer(rows, rec),
        *(findings or []),
        "",
    ]
    if caveats:
        md += ["## Warnings", "", *(c.line() for c in caveats), ""]
    budget = constraints_of(parent)
    if budget:
        md += [
            "Budget (hydra.sweeper.constraints): "
            + ", ".join(f"`{k}` <= {v:g}" for k, v in budget.items())
            + f". {sum(not r.feasible for r in rows)} trial(s) over it are marked ✗ and never chosen.",
            "",
        ]
    md += _trials(rows, ok, budget)
    md += _pruned(parent, rows, pruned) + _failed(rows, failed) + _skipped(rows, skipped) + _per_method(summary)
    if importances:
        md += ["", "## Parameter importances (Optuna's PED-ANOVA)", ""]
        md += [f"- `{k}`: {v:.3f}" for k, v in importances.items()]
    if plots:
        md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(md) + "\n"


def _trials(rows: list[Row], ok: list[Row], budget: dict[str, float]) -> list[str]:
    hyper = varying(rows)
    md = [
        "## All trials (sorted by accuracy; ★ = on the Pareto front of accuracy vs memory / time; "
        "= = tied with the best)",
        "",
    ]
    header = ["trial", "method", *hyper, "accuracy", "vs best, points [95 % CI]", "p", "f1_macro", "step ms"]
    header += ["train s", f"memory MB ({memory_label(ok)})", "trainable", "trainable %", "Pareto"]
    header += [*(["budget"] if budget else []), "state", "run id"]
    return md + table(header, [_trial_row(r, hyper, budget) for r in sorted(ok, key=lambda r: -(r.accuracy or 0))])


def _trial_row(r: Row, hyper: list[str], budget: dict[str, float]) -> list[Any]:
    vs = r.vs_best
    return [
        r.trial,
        r.group or r.method,
        *(r.params.get(k) for k in hyper),
        r.accuracy,
        ("= " if vs.tied else "") + vs.points() if vs is not None else "",
        vs.p_value if vs is not None and vs.paired else "",
        r.get("eval/f1_macro"),
        r.get("perf/step_time_ms"),
        r.get("perf/train_time_s"),
        r.memory_mb,
        int(r.get("params/trainable") or 0),
        r.get("params/trainable_pct"),
        ("★ " + "+".join(r.pareto)) if r.pareto else "",
        *([("✗ " + ", ".join(r.over_budget)) if r.over_budget else "ok"] if budget else []),
        r.state,
        r.run_id,
    ]


def _pruned(parent, rows: list[Row], pruned: list[Row]) -> list[str]:
    if not pruned:
        return []
    hyper, pm = varying(rows), parent.data.metrics
    md = ["", "### Pruned trials (stopped early by the pruner; not candidates for the answer)", ""]
    md += [
        f"- trial {r.trial} ({describe(r, hyper)}): stopped at step {int(r.get('train/steps') or 0)} of "
        f"{int(r.get('train/total_steps') or 0)}, accuracy then {fmt(r.accuracy)}"
        for r in pruned
    ]
    if "sweep/train_time_unpruned_est_s" in pm:
        md += [
            "",
            f"Training time spent: {pm['sweep/train_time_s']:.1f} s, against an estimated "
            f"{pm['sweep/train_time_unpruned_est_s']:.1f} s without pruning "
            f"({pm['sweep/time_saved_pct']:.0f} % saved; pruned trials' remaining steps at the complete "
            f"trials' median time per step).",
        ]
    return md


def _failed(rows: list[Row], failed: list[Row]) -> list[str]:
    if not failed:
        return []
    hyper = varying(rows)
    return ["", "### Failed trials", ""] + [
        f"- trial {r.trial} ({describe(r, hyper)}): {r.error.splitlines()[0] if r.error else r.state}" for r in failed
    ]


def _skipped(rows: list[Row], skipped: list[Row]) -> list[str]:
    if not skipped:
        return []
    hyper = varying(rows)
    return ["", "### Skipped trials (predicted over budget before training: hydra.sweeper.prescreen)", ""] + [
        f"- trial {r.trial} ({describe(r, hyper)}): {r.error}" for r in skipped
    ]


PER_METHOD = (  # column, summary key
    ("method", "method"),
    ("trials", "trials"),
    ("best accuracy", "best_accuracy"),
    ("best vs full's best, points [95 % CI]", "vs_full"),
    ("median step ms", "median_step_ms"),
    ("median memory MB", "median_memory_mb"),
    ("trainable %", "trainable_pct"),
    ("params MB", "params_mb"),
    ("grads MB", "grads_mb"),
    ("optimizer MB", "optimizer_state_mb"),
    ("activations MB", "activations_mb"),
    ("memory saved vs full %", "memory_saved_vs_full_pct"),
    ("time saved vs full %", "time_saved_vs_full_pct"),
)


def _per_method(summary: list[dict]) -> list[str]:
    if not summary:
        return []

    def cell(s: dict, key: str) -> Any:
        value = s.get(key)
        return value.points() if isinstance(value, Comparison) else value

    return ["", "## Per method", ""] + table(
        [name for name, _ in PER_METHOD], [[cell(s, key) for _, key in PER_METHOD] for s in summary]
    )
