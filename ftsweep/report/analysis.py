"""The analysis: Pareto fronts, per-method summaries and the plain-language answer. Pure functions of rows."""

from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

from ftsweep.report.recommend import Recommendation
from ftsweep.report.replicates import Configuration
from ftsweep.report.rows import Row, fmt

HYPER = (
    "lr",
    "batch_size",
    "method.r",
    "optimizer.name",
    "precision",
    "gradient_checkpointing",
    "data.max_length",
    "grad_accum_steps",
    "model",
)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when the first value is maximised and the second minimised."""
    front = []
    for i, (a, c) in enumerate(points):
        dominated = any((a2 >= a and c2 <= c) and (a2 > a or c2 < c) for j, (a2, c2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def mark_pareto(rows: list[Row]) -> None:
    ok = [r for r in rows if r.ok and r.feasible]
    for label, cost in (("memory", lambda r: r.memory_mb), ("time", lambda r: r.get("perf/step_time_ms"))):
        usable = [(r, c) for r in ok if (c := cost(r)) is not None]
        for i in pareto_front([(r.finished_accuracy, c) for r, c in usable]):
            usable[i][0].pareto.append(label)


def _median(values: list[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def method_summary(rows: list[Row]) -> list[dict[str, Any]]:
    """One line per method (per method and model when the sweep spans models), compared with `full` on the
    same model."""
    ok = [r for r in rows if r.ok]
    groups = sorted({r.group or r.method for r in ok})
    out: list[dict[str, Any]] = []
    for g in groups:
        mine = [r for r in ok if (r.group or r.method) == g]
        best = max(mine, key=lambda r: r.finished_accuracy)
        out.append(
            {
                "method": g,
                "base": mine[0].method,
                "model": mine[0].model,
                "trials": len(mine),
                "best_accuracy": best.finished_accuracy,
                "best_row": best,
                "median_step_ms": _median([r.get("perf/step_time_ms") for r in mine]),
                "median_memory_mb": _median([r.memory_mb for r in mine]),
                "trainable_pct": _median([r.get("params/trainable_pct") for r in mine]),
                **{
                    k.split("/")[1]: _median([r.get(k) for r in mine])
                    for k in ("mem/params_mb", "mem/grads_mb", "mem/optimizer_state_mb")
                },
                # counted exactly where the run did (mem/activations_saved_mb), else the peak's unexplained rest
                "activations_mb": _median(
                    [
                        r.get("mem/activations_saved_mb")
                        if r.get("mem/activations_saved_mb") is not None
                        else r.get("mem/activations_est_mb")
                        for r in mine
                    ]
                ),
            }
        )
    for s in out:
        full = next((f for f in out if f["base"] == "full" and f["model"] == s["model"]), None)
        if full is None or s is full:
            continue
        s["accuracy_lost_vs_full"] = full["best_accuracy"] - s["best_accuracy"]
        for key, name in (
            ("median_memory_mb", "memory_saved_vs_full_pct"),
            ("median_step_ms", "time_saved_vs_full_pct"),
        ):
            if s[key] is not None and full[key]:
                s[name] = 100.0 * (1 - s[key] / full[key])
    return out


def varying(rows: list[Row]) -> list[str]:
    """The hyper-parameters that differ between trials: the ones worth a column."""
    return [k for k in HYPER if len({r.params.get(k) for r in rows}) > 1]


def describe(row: Row, keys: Sequence[str]) -> str:
    shown = [f"{k}={fmt(row.params[k], 3)}" for k in keys if k in row.params]
    return f"`{row.method}`" + (" with " + ", ".join(shown) if shown else "")


def answer(rows: list[Row], rec: Recommendation) -> list[str]:
    """The plain-language answer, from the configurations within budget only: every figure comes from the rows."""
    if rec.best is None:
        if any(r.ok for r in rows):
            return [
                "No finished trial is within the sweep's budget (hydra.sweeper.constraints): see the ✗ rows "
                "below; raise a bound or search cheaper settings."
            ]
        failed = [r for r in rows if not r.ok]
        return [
            f"No trial finished: all {len(failed)} failed. The errors are listed below; fix the first and rerun "
            "the same command (finished trials are kept)."
        ]
    keys, best = varying(rows), rec.best
    lines = [f"**Best overall:** {describe(best.rows[0], keys)}: {_accuracy(best)}, {_costs(best)} ({_runs(best)})."]
    rule = "tied with" if rec.tolerance_points == 0 else f"within {rec.tolerance_points:g} points of"
    for pick in rec.picks:
        head = f"**Cheapest {rule} the best, by {pick.axis}:**"
        if pick.config is best:
            lines.append(f"{head} the best itself; nothing cheaper is {rule} it.")
            continue
        ratio = _ratio(pick.config.cost(pick.axis), best.cost(pick.axis))
        lines.append(
            f"{head} {describe(pick.config.rows[0], keys)}: {_costs(pick.config)} ({ratio} {pick.axis}), "
            f"{_accuracy(pick.config)}: {pick.verdict} ({_runs(pick.config)})."
        )
    if any(p.config is not best and p.tied and not p.confirmed for p in rec.picks):
        lines.append(
            "One seed can tie by luck: confirm with fresh seeds before relying on it, `hydra.sweeper.repeats=3` "
            "(or sweep `seed=1,2,3`)."
        )
    return lines


def _accuracy(c: Configuration) -> str:
    low, high = c.interval
    seeds = f", mean of {c.n} seeds ± {c.sd:.4f}" if c.sd is not None else ""
    return f"accuracy {c.mean:.4f} [{low:.3f}, {high:.3f}]{seeds}"


def _costs(c: Configuration) -> str:
    memory, time = c.cost("memory"), c.cost("time")
    return ", ".join(
        [*([f"memory {memory:,.0f} MB"] if memory is not None else []), *([f"train {time:,.1f} s"] if time else [])]
    )


def _ratio(cost: Optional[float], best: Optional[float]) -> str:
    return f"{100 * (cost / best - 1):+.0f} %" if cost is not None and best else "?"


def _runs(c: Configuration) -> str:
    return ("run " if c.n == 1 else "runs ") + ", ".join(f"`{r.run_id}`" for r in c.rows)
