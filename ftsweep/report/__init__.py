"""The trade-off report: turn a sweep into a decision (accuracy vs time vs memory).

    python -m ftsweep.report [--sweep PARENT_RUN_ID] [--experiment NAME] [--out DIR] [--storage URL] [--no-html]

rows.py reads the sweep's parent and child runs from MLflow (MLFLOW_TRACKING_URI), plus trials that
failed before they had an MLflow run from the Optuna study; evidence.py compares every trial with the best,
example by example, from the runs' predictions; replicates.py groups seeds into configurations; recommend.py
picks the cheapest configuration tied with the best; caveats.py finds what the sweep cannot tell;
analysis.py finds the fronts and words the answer; plots.py draws; render.py writes report.md, page.py makes
it the self-contained page report.html, and document.py writes report.json. Every number in the text is
taken from the table; nothing is typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ftsweep.artifacts import write_json, write_text
from ftsweep.report import document, evidence
from ftsweep.report.analysis import mark_pareto, method_summary
from ftsweep.report.caveats import find as find_caveats
from ftsweep.report.page import RunLinks, to_html
from ftsweep.report.plots import make_plots
from ftsweep.report.recommend import recommend
from ftsweep.report.render import render
from ftsweep.report.replicates import against_full, configurations
from ftsweep.report.rows import collect, find_sweep, load_study, read_histories, study_importances
from ftsweep.tracking import Tracker

WARNINGS_TAG = "ftsweep.warnings"  # the parent run's: the kinds of the report's warnings, comma-separated


def make_report(
    parent_run_id: Optional[str] = None,
    experiment: Optional[str] = None,
    out: Optional[Path] = None,
    html_too: bool = True,
    storage: Optional[str] = None,
    tolerance: Optional[float] = None,
) -> Path:
    """Write the report of a sweep (default: the latest) into `out` (default: the sweep's own folder) and log
    it as artifacts of the sweep's parent run; returns the path of report.md. `tolerance`: the accuracy points
    a cheaper configuration may lose (default: the sweep's `hydra.sweeper.tolerance`, else 0: ties only)."""
    client = Tracker().client
    parent = find_sweep(client, parent_run_id, experiment)
    study = parent.data.tags.get("optuna.study_name", parent.info.run_id)
    out = Path(out or parent.data.tags.get("ftsweep.sweep_dir") or Path("multirun") / study)
    out.mkdir(parents=True, exist_ok=True)
    if tolerance is None:
        tolerance = float(parent.data.params.get("sweep.tolerance") or 0.0)
    optuna_study = load_study(parent, storage)
    rows = collect(client, parent, optuna_study)
    read_histories(client, rows)
    mark_pareto(rows)
    correct, tfidf = evidence.outcomes(client, rows)
    best = evidence.against_best(rows, correct)
    summary = method_summary(rows)
    configs = configurations(rows)
    against_full(summary, configs, correct)
    rec = recommend(configs, correct, tolerance)
    importances = study_importances(optuna_study)
    caveats = find_caveats(rows, rec, importances)
    figures = evidence.baselines(best, correct, tfidf)
    plots = make_plots(rows, importances, out, study)
    findings = evidence.ties(rows, best) + evidence.baseline_lines(figures)
    text = render(parent, rows, summary, plots, importances, rec, caveats, findings)
    write_text(out / "report.md", text)
    write_json(out / "report.json", document.build(parent, rows, rec, configs, caveats, figures))
    files = [out / "report.md", out / "report.json", *plots]
    if html_too:
        links = RunLinks.of(client.tracking_uri, parent.info.experiment_id)
        write_text(out / "report.html", to_html(text, f"ftsweep report {study}", out, links))
        files.append(out / "report.html")
    for path in files:  # beside the sweep's results, without touching the parent run's status
        client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
    client.set_tag(parent.info.run_id, WARNINGS_TAG, ",".join(sorted({c.kind for c in caveats})))
    return out / "report.md"
