"""Writing the report: Markdown from the rows and the analysis, and the same as an HTML page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from ftsweep.report.analysis import answer, describe, varying
from ftsweep.report.plots import memory_label
from ftsweep.report.rows import Row, constraints_of, fmt


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def render(parent, rows: list[Row], summary: list[dict], plots: list[Path], importances: dict[str, float]) -> str:
    study = parent.data.tags.get("optuna.study_name", parent.info.run_name)
    ok = sorted([r for r in rows if r.ok], key=lambda r: -r.finished_accuracy)
    budget = constraints_of(parent)
    pruned = [r for r in rows if r.state == "PRUNED"]
    failed = [r for r in rows if not r.ok and r.state != "PRUNED"]
    peak_name = f"memory MB ({memory_label(ok)})"
    hyper = varying(rows)
    md = [
        f"# Trade-off report: {study}",
        "",
        f"MLflow parent run `{parent.info.run_id}` · {len(ok)} finished, {len(pruned)} pruned, "
        f"{len(failed)} failed trials.",
        "",
        "## Answer",
        "",
        *answer(rows),
        "",
    ]
    if budget:
        md += [
            "Budget (hydra.sweeper.constraints): "
            + ", ".join(f"`{k}` <= {v:g}" for k, v in budget.items())
            + f". {sum(not r.feasible for r in rows)} trial(s) over it are marked ✗ and never chosen.",
            "",
        ]
    md += ["## All trials (sorted by accuracy; ★ = on the Pareto front of accuracy vs memory / time)", ""]
    md += table(
        [
            "trial",
            "method",
            *hyper,
            "accuracy",
            "f1_macro",
            "step ms",
            "train s",
            peak_name,
            "trainable",
            "trainable %",
            "Pareto",
            *(["budget"] if budget else []),
            "state",
            "run id",
        ],
        [
            [
                r.trial,
                r.group or r.method,
                *(r.params.get(k) for k in hyper),
                r.accuracy,
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
            for r in ok
        ],
    )
    if pruned:
        pm = parent.data.metrics
        md += ["", "### Pruned trials (stopped early by the pruner; not candidates for the answer)", ""]
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
    if failed:
        md += ["", "### Failed trials", ""]
        md += [
            f"- trial {r.trial} ({describe(r, hyper)}): {r.error.splitlines()[0] if r.error else r.state}"
            for r in failed
        ]
    if summary:
        md += ["", "## Per method", ""]
        md += table(
            [
                "method",
                "trials",
                "best accuracy",
                "median step ms",
                "median memory MB",
                "trainable %",
                "params MB",
                "grads MB",
                "optimizer MB",
                "activations MB",
                "accuracy lost vs full",
                "memory saved vs full %",
                "time saved vs full %",
            ],
            [
                [
                    s["method"],
                    s["trials"],
                    s["best_accuracy"],
                    s["median_step_ms"],
                    s["median_memory_mb"],
                    s["trainable_pct"],
                    s["params_mb"],
                    s["grads_mb"],
                    s["optimizer_state_mb"],
                    s["activations_mb"],
                    s.get("accuracy_lost_vs_full"),
                    s.get("memory_saved_vs_full_pct"),
                    s.get("time_saved_vs_full_pct"),
                ]
                for s in summary
            ],
        )
    if importances:
        md += ["", "## Parameter importances (Optuna's PED-ANOVA)", ""]
        md += [f"- `{k}`: {v:.3f}" for k, v in importances.items()]
    if plots:
        md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(md) + "\n"


def to_html(markdown_text: str, title: str) -> str:
    """report.md as a standalone HTML page (CommonMark with tables, by markdown-it-py)."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )
