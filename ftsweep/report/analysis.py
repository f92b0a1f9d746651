"""The analysis: Pareto fronts, per-method summaries and the plain-language answer. Pure functions of rows."""

from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

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


def answer(rows: list[Row]) -> list[str]:
    """The plain-language answer, from the trials within budget only: every figure comes from the rows."""
    ok = [r for r in rows if r.ok and r.feasible]
    if not ok:
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
    keys = varying(rows)
    best = max(ok, key=lambda r: r.finished_accuracy)
    lines = [
        f"**Best overall:** {describe(best, keys)}: accuracy {best.accuracy:.4f}, memory "
        f"{best.memory_mb:.0f} MB, step time {best.get('perf/step_time_ms') or float('nan'):.1f} ms "
        f"(run `{best.run_id}`)."
    ]
    budget = _median([r.memory_mb for r in ok])
    within = [] if budget is None else [r for r in ok if r.memory_mb is not None and r.memory_mb <= budget]
    if within:
        cheap = max(within, key=lambda r: r.finished_accuracy)
        if cheap is best:
            lines.append(f"**Best under the median memory ({budget:.0f} MB):** the same configuration.")
        else:
            # cheap is within the budget; best had its memory formatted with :.0f above, so it has one
            assert cheap.memory_mb is not None and best.memory_mb is not None
            lines.append(
                f"**Best under the median memory ({budget:.0f} MB):** {describe(cheap, keys)}: accuracy "
                f"{cheap.accuracy:.4f} ({100 * (cheap.finished_accuracy - best.finished_accuracy):+.1f} points) at "
                f"{cheap.memory_mb:.0f} MB ({100 * (cheap.memory_mb / best.memory_mb - 1):+.0f} % memory)."
            )
    return lines
