"""The trade-off report: turn a sweep into a decision (accuracy vs time vs memory).

    python -m ftsweep.report [--sweep PARENT_RUN_ID] [--experiment NAME] [--out DIR] [--html]

Reads the sweep's parent run and its child runs from MLflow (MLFLOW_TRACKING_URI), adds
trials that failed before they had an MLflow run from the Optuna study, and writes
report.md (+ report.html), PNG plots and a CSV to --out (default: the sweep's folder
under multirun/). Everything is also logged as artifacts of the parent run. Every number
in the text is taken from the table; nothing is typed in.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger("ftsweep.report")

HYPER = ("lr", "batch_size", "method.r", "optimizer.name", "precision", "gradient_checkpointing",
         "data.max_length", "grad_accum_steps")


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
    pareto: list[str] = field(default_factory=list)

    def get(self, key: str) -> Optional[float]:
        value = self.metrics.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    @property
    def accuracy(self) -> Optional[float]:
        return self.get("eval/accuracy")

    @property
    def peak_mb(self) -> Optional[float]:
        return self.get("mem/cuda_peak_allocated_mb") or self.get("mem/cpu_peak_rss_mb")

    @property
    def ok(self) -> bool:
        return self.state == "FINISHED" and self.accuracy is not None


# --------------------------------------------------------------------------- pure logic
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when the first value is maximised and the second minimised."""
    front = []
    for i, (a, c) in enumerate(points):
        dominated = any((a2 >= a and c2 <= c) and (a2 > a or c2 < c) for j, (a2, c2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def mark_pareto(rows: list[Row]) -> None:
    ok = [r for r in rows if r.ok]
    for label, cost in (("memory", lambda r: r.peak_mb), ("time", lambda r: r.get("perf/step_time_ms"))):
        usable = [r for r in ok if cost(r) is not None]
        for i in pareto_front([(r.accuracy, cost(r)) for r in usable]):
            usable[i].pareto.append(label)


def _median(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def method_summary(rows: list[Row]) -> list[dict[str, Any]]:
    ok = [r for r in rows if r.ok]
    methods = sorted({r.method for r in ok})
    out = []
    for m in methods:
        mine = [r for r in ok if r.method == m]
        out.append({
            "method": m, "trials": len(mine), "best_accuracy": max(r.accuracy for r in mine),
            "median_step_ms": _median([r.get("perf/step_time_ms") for r in mine]),
            "median_peak_mb": _median([r.peak_mb for r in mine]),
            "trainable_pct": _median([r.get("params/trainable_pct") for r in mine]),
            **{k.split("/")[1]: _median([r.get(k) for r in mine]) for k in
               ("mem/params_mb", "mem/grads_mb", "mem/optimizer_state_mb", "mem/activations_est_mb")},
        })
    full = next((s for s in out if s["method"] == "full"), None)
    for s in out:
        if full is None or s is full:
            continue
        s["accuracy_lost_vs_full"] = full["best_accuracy"] - s["best_accuracy"]
        for key, name in (("median_peak_mb", "memory_saved_vs_full_pct"), ("median_step_ms", "time_saved_vs_full_pct")):
            if s[key] is not None and full[key]:
                s[name] = 100.0 * (1 - s[key] / full[key])
    return out


def varying(rows: list[Row]) -> list[str]:
    """The hyper-parameters that differ between trials: the ones worth a column."""
    return [k for k in HYPER if len({r.params.get(k) for r in rows}) > 1]


def describe(row: Row, keys: Sequence[str]) -> str:
    shown = [f"{k}={_fmt(row.params[k], 3)}" for k in keys if k in row.params]
    return f"`{row.method}`" + (" with " + ", ".join(shown) if shown else "")


def answer(rows: list[Row]) -> list[str]:
    """The plain-language answer: every figure comes from the rows."""
    ok = [r for r in rows if r.ok]
    if not ok:
        failed = [r for r in rows if not r.ok]
        return [f"No trial finished: all {len(failed)} failed. The errors are listed below; fix the first and rerun "
                "the same command (finished trials are kept)."]
    keys = varying(rows)
    best = max(ok, key=lambda r: r.accuracy)
    lines = [f"**Best overall:** {describe(best, keys)}: accuracy {best.accuracy:.4f}, peak memory "
             f"{best.peak_mb:.0f} MB, step time {best.get('perf/step_time_ms') or float('nan'):.1f} ms "
             f"(run `{best.run_id}`)."]
    budget = _median([r.peak_mb for r in ok])
    within = [r for r in ok if r.peak_mb is not None and r.peak_mb <= budget]
    if within:
        cheap = max(within, key=lambda r: r.accuracy)
        if cheap is best:
            lines.append(f"**Best under the median peak memory ({budget:.0f} MB):** the same configuration.")
        else:
            lines.append(
                f"**Best under the median peak memory ({budget:.0f} MB):** {describe(cheap, keys)}: accuracy "
                f"{cheap.accuracy:.4f} ({100 * (cheap.accuracy - best.accuracy):+.1f} points) at "
                f"{cheap.peak_mb:.0f} MB ({100 * (cheap.peak_mb / best.peak_mb - 1):+.0f} % memory).")
    return lines


# --------------------------------------------------------------------------- MLflow and Optuna
def latest_sweep(client, experiment: Optional[str]) -> Any:
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise SystemExit(f"ftsweep.report: error: no MLflow experiment named '{experiment}'")
        experiments = [exp.experiment_id]
    else:
        experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`ftsweep.role` = 'sweep'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        raise SystemExit("ftsweep.report: error: no sweep found in the tracking store; run `python -m ftsweep -m ...` "
                         "first, or pass --sweep PARENT_RUN_ID")
    return runs[0]


def collect(client, parent) -> list[Row]:
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10000)
    rows = []
    seen = set()
    for run in children:
        tags = run.data.tags
        number = tags.get("optuna.trial_number")
        rows.append(Row(trial=int(number) if number is not None else None,
                        method=run.data.params.get("method.name", tags.get("method", "?")),
                        params=dict(run.data.params), metrics=dict(run.data.metrics),
                        state="PRUNED" if tags.get("pruned") == "true" else run.info.status,
                        run_id=run.info.run_id, error=tags.get("error", "")))
        seen.add(run.info.run_id)
    rows.extend(_optuna_only_failures(parent, seen))
    return rows


def _optuna_only_failures(parent, seen: set[str]) -> list[Row]:
    """Trials that failed before an MLflow run existed (a bad value, say): only Optuna knows them."""
    tags = parent.data.tags
    storage, study_name = tags.get("optuna.storage"), tags.get("optuna.study_name")
    if not storage or not study_name or "***" in storage:
        return []
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as exc:  # the storage may live on another machine
        log.warning("could not read Optuna study %s: %s", study_name, exc)
        return []
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "FAIL" or t.user_attrs.get("mlflow_run_id") in seen:
            continue
        params = {**t.user_attrs.get("fixed", {}), **{k: str(v) for k, v in t.params.items()}}
        rows.append(Row(trial=t.number, method=str(params.get("method", "?")), params=params, metrics={},
                        state="FAILED", error=t.user_attrs.get("error", "")))
    return rows


def study_importances(parent) -> dict[str, float]:
    tags = parent.data.tags
    if not tags.get("optuna.storage") or "***" in tags["optuna.storage"]:
        return {}
    import optuna

    try:
        study = optuna.load_study(study_name=tags["optuna.study_name"], storage=tags["optuna.storage"])
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        varying = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) < 4 or not varying or len(study.directions) > 1:
            return {}
        return optuna.importance.get_param_importances(study)
    except Exception as exc:  # importances are a bonus: never fail the report for them
        log.warning("parameter importances unavailable: %s", exc)
        return {}


# --------------------------------------------------------------------------- plots
METHOD_MARKERS = "osD^vP*Xh"


def _plots(rows: list[Row], importances: dict[str, float], out: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.ok]
    if not ok:
        return []
    methods = sorted({r.method for r in ok})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    markers = {m: METHOD_MARKERS[i % len(METHOD_MARKERS)] for i, m in enumerate(methods)}
    device = "CUDA" if any(r.get("mem/cuda_peak_allocated_mb") for r in ok) else "CPU RSS"
    files = []

    def scatter(name: str, x_of, xlabel: str, logx: bool = False, front: Optional[str] = None) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        usable = [r for r in ok if x_of(r) is not None]
        for m in methods:
            pts = [(x_of(r), r.accuracy) for r in usable if r.method == m]
            if pts:
                ax.scatter(*zip(*pts), label=m, color=colors[m], marker=markers[m], s=55, alpha=0.85,
                           edgecolors="black", linewidths=0.5)
        if front:
            fr = sorted((x_of(r), r.accuracy) for r in usable if front in r.pareto)
            if len(fr) >= 1:
                ax.step(*zip(*fr), where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval accuracy")
        ax.set_title(f"{title}: accuracy vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(title="method", fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)

    scatter("accuracy_vs_memory", lambda r: r.peak_mb, f"peak memory ({device}, MB)", front="memory")
    scatter("accuracy_vs_step_time", lambda r: r.get("perf/step_time_ms"), "median step time (ms)", front="time")
    scatter("accuracy_vs_lr", lambda r: _float(r.params.get("lr")), "learning rate (log scale)", logx=True)
    scatter("accuracy_vs_batch_size", lambda r: _float(r.params.get("batch_size")), "batch size (examples)", logx=True)
    if importances:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(importances) + 1.5))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (fANOVA share of accuracy variance)")
        ax.set_title(f"{title}: parameter importances")
        fig.tight_layout()
        path = out / "param_importances.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def _float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- writing
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, str) and "." in value:  # MLflow keeps params as text: 0.00057720094 -> 0.000577
        value = _float(value) if _float(value) is not None else value
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def render(parent, rows: list[Row], summary: list[dict], plots: list[Path], importances: dict[str, float]) -> str:
    study = parent.data.tags.get("optuna.study_name", parent.info.run_name)
    ok = sorted([r for r in rows if r.ok], key=lambda r: -r.accuracy)
    pruned = [r for r in rows if r.state == "PRUNED"]
    failed = [r for r in rows if not r.ok and r.state != "PRUNED"]
    peak_name = "peak MB (CUDA)" if any(r.get("mem/cuda_peak_allocated_mb") for r in ok) else "peak MB (CPU RSS)"
    hyper = varying(rows)
    md = [f"# Trade-off report: {study}", "",
          f"MLflow parent run `{parent.info.run_id}` · {len(ok)} finished, {len(pruned)} pruned, "
          f"{len(failed)} failed trials.", "",
          "## Answer", "", *answer(rows), ""]
    md += ["## All trials (sorted by accuracy; ★ = on the Pareto front of accuracy vs memory / time)", ""]
    md += _table(["trial", "method", *hyper, "accuracy", "f1_macro", "step ms", "train s", peak_name,
                  "trainable", "trainable %", "Pareto", "state", "run id"],
                 [[r.trial, r.method, *(r.params.get(k) for k in hyper), r.accuracy, r.get("eval/f1_macro"),
                   r.get("perf/step_time_ms"), r.get("perf/train_time_s"), r.peak_mb,
                   int(r.get("params/trainable") or 0), r.get("params/trainable_pct"),
                   ("★ " + "+".join(r.pareto)) if r.pareto else "", r.state, r.run_id] for r in ok])
    if pruned:
        pm = parent.data.metrics
        md += ["", "### Pruned trials (stopped early by the pruner; not candidates for the answer)", ""]
        md += [f"- trial {r.trial} ({describe(r, hyper)}): stopped at step {int(r.get('train/steps') or 0)} of "
               f"{int(r.get('train/total_steps') or 0)}, accuracy then {_fmt(r.accuracy)}" for r in pruned]
        if "sweep/train_time_unpruned_est_s" in pm:
            md += ["", f"Training time spent: {pm['sweep/train_time_s']:.1f} s, against an estimated "
                       f"{pm['sweep/train_time_unpruned_est_s']:.1f} s without pruning "
                       f"({pm['sweep/time_saved_pct']:.0f} % saved; pruned trials' remaining steps at the complete "
                       f"trials' median time per step)."]
    if failed:
        md += ["", "### Failed trials", ""]
        md += [f"- trial {r.trial} ({describe(r, hyper)}): {r.error.splitlines()[0] if r.error else r.state}"
               for r in failed]
    if summary:
        md += ["", "## Per method", ""]
        md += _table(["method", "trials", "best accuracy", "median step ms", "median peak MB", "trainable %",
                      "params MB", "grads MB", "optimizer MB", "activations est MB", "accuracy lost vs full",
                      "memory saved vs full %", "time saved vs full %"],
                     [[s["method"], s["trials"], s["best_accuracy"], s["median_step_ms"], s["median_peak_mb"],
                       s["trainable_pct"], s["params_mb"], s["grads_mb"], s["optimizer_state_mb"],
                       s["activations_est_mb"], s.get("accuracy_lost_vs_full"), s.get("memory_saved_vs_full_pct"),
                       s.get("time_saved_vs_full_pct")] for s in summary])
    if importances:
        md += ["", "## Parameter importances (Optuna, fANOVA)", ""]
        md += [f"- `{k}`: {v:.3f}" for k, v in importances.items()]
    if plots:
        md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(md) + "\n"


def to_html(markdown_text: str, title: str) -> str:
    """A plain HTML page of the report: headings, tables, lists and images, nothing fancy."""
    body, in_table = [], False
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table, tag = True, "th"
            else:
                tag = "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            body.append(f'<p><img src="{html.escape(src)}" alt="{html.escape(src)}"></p>')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def make_report(parent_run_id: Optional[str] = None, experiment: Optional[str] = None, out: Optional[Path] = None,
                html_too: bool = True) -> Path:
    from ftsweep.tracking import Tracker

    tracker = Tracker()
    client = tracker.client
    parent = client.get_run(parent_run_id) if parent_run_id else latest_sweep(client, experiment)
    study = parent.data.tags.get("optuna.study_name", parent.info.run_id)
    out = Path(out) if out else Path("multirun") / study
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(client, parent)
    mark_pareto(rows)
    summary = method_summary(rows)
    importances = study_importances(parent)
    plots = _plots(rows, importances, out, study)
    text = render(parent, rows, summary, plots, importances)
    files = [out / "report.md", *plots]
    (out / "report.md").write_text(text)
    if html_too:
        (out / "report.html").write_text(to_html(text, f"ftsweep report {study}"))
        files.append(out / "report.html")
    tracker.run_id = parent.info.run_id  # log beside the sweep, without touching its status
    for path in files:
        tracker.client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
    return out / "report.md"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ftsweep.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", help="the sweep's MLflow parent run id (default: the latest sweep)")
    ap.add_argument("--experiment", help="look for the latest sweep in this experiment only")
    ap.add_argument("--out", type=Path, help="output folder (default: multirun/<study>)")
    ap.add_argument("--no-html", action="store_true", help="write report.md only")
    args = ap.parse_args(argv)
    path = make_report(args.sweep, args.experiment, args.out, html_too=not args.no_html)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
