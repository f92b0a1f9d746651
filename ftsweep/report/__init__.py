"""The trade-off report: turn a sweep into a decision (accuracy vs time vs memory).

    python -m ftsweep.report [--sweep PARENT_RUN_ID] [--experiment NAME] [--out DIR] [--storage URL] [--no-html]

rows.py reads the sweep's parent and child runs from MLflow (MLFLOW_TRACKING_URI), plus trials that
failed before they had an MLflow run from the Optuna study; evidence.py compares every trial with the best,
example by example, from the runs' predictions; analysis.py finds the fronts and the answer; plots.py draws;
render.py writes report.md, and page.py makes it the self-contained page report.html. Every number in the text
is taken from the table; nothing is typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ftsweep.artifacts import write_text
from ftsweep.report import evidence
from ftsweep.report.analysis import mark_pareto, method_summary
from ftsweep.report.page import RunLinks, to_html
from ftsweep.report.plots import make_plots
from ftsweep.report.render import render
from ftsweep.report.rows import collect, find_sweep, load_study, study_importances
from ftsweep.tracking import Tracker


def make_report(
    parent_run_id: Optional[str] = None,
    experiment: Optional[str] = None,
    out: Optional[Path] = None,
    html_too: bool = True,
    storage: Optional[str] = None,
) -> Path:
    """Write the report of a sweep (default: the latest) into `out` (default: the sweep's own folder) and log
    it as artifacts of the sweep's parent run; returns the path of report.md."""
    client = Tracker().client
    parent = find_sweep(client, parent_run_id, experiment)
    study = parent.data.tags.get("optuna.study_name", parent.info.run_id)
    out = Path(out or parent.data.tags.get("ftsweep.sweep_dir") or Path("multirun") / study)
    out.mkdir(parents=True, exist_ok=True)
    optuna_study = load_study(parent, storage)
    rows = collect(client, parent, optuna_study)
    mark_pareto(rows)
    correct, tfidf = evidence.outcomes(client, rows)
    best = evidence.against_best(rows, correct)
    summary = method_summary(rows)
    evidence.against_full(summary, correct)
    importances = study_importances(optuna_study)
    plots = make_plots(rows, importances, out, study)
    findings = evidence.ties(rows, best) + evidence.baselines(best, correct, tfidf)
    text = render(parent, rows, summary, plots, importances, findings)
    write_text(out / "report.md", text)
    files = [out / "report.md", *plots]
    if html_too:
        links = RunLinks.of(client.tracking_uri, parent.info.experiment_id)
        write_text(out / "report.html", to_html(text, f"ftsweep report {study}", out, links))
        files.append(out / "report.html")
    for path in files:  # beside the sweep's results, without touching the parent run's status
        client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
    return out / "report.md"
