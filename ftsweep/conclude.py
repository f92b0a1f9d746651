"""After a sweep: keep and register the best trial's model, and write the trade-off report.

Both are views of results the sweep has already saved (its study, trials.csv, the MLflow runs), so neither
can fail the sweep: a failure is one warning naming the command that does it again. The Hydra sweeper
(hydra_plugins/ftsweep_sweeper) calls this once the runner is done, an interrupted runner included.
"""

from __future__ import annotations

import logging
import math
import shutil

from ftsweep import keep
from ftsweep.errors import first_line
from ftsweep.report import make_report
from ftsweep.sweep.study import SweepDone
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep.sweep")


def conclude(done: SweepDone) -> None:
    if done.save_model != "none" and not done.aborted:  # after a Ctrl-C, the next run of the command does it
        try:
            keep_best_model(done, delete_others=done.save_model == "best")
        except Exception as exc:
            log.warning("could not keep the best trial's model: %s", first_line(exc, with_type=True))
    try:
        log.info(
            "trade-off report: %s",
            make_report(done.parent_run_id, out=done.sweep_dir, tolerance=done.definition.tolerance),
        )
    except Exception as exc:
        log.warning(
            "could not write the report (%s); rerun python -m ftsweep.report --sweep %s",
            first_line(exc, with_type=True),
            done.parent_run_id,
        )


def keep_best_model(done: SweepDone, delete_others: bool) -> None:
    """save_model=best: log the best trial's model (on the objective; for a Pareto search, the report's
    answer: the most accurate trial within budget) to its run, register it as `ftsweep-<experiment>@best`,
    and delete the model folders of the other finished trials. save_model=all: every trial logged its own;
    register the best."""
    d, parent = done.definition, Tracker(done.tracking_uri)
    parent.run_id, client = done.parent_run_id, parent.client  # the parent run may have ended: no spool
    finished = [
        c
        for c in done.children
        if c.info.status == "FINISHED"
        and c.data.tags.get("pruned") != "true"
        and all(c.data.metrics.get(k, math.inf) <= bound for k, bound in d.constraints.items())
    ]
    single = len(d.objectives) == 1
    metric = d.objectives[0] if single else "eval/accuracy"
    sign = -1.0 if single and d.directions[0] == "minimize" else 1.0
    scored = [c for c in finished if metric in c.data.metrics]
    if not scored:
        return
    best = max(scored, key=lambda c: sign * c.data.metrics[metric])
    folder = done.sweep_dir / f"trial_{best.data.tags.get('optuna.trial_number')}" / keep.MODEL_NAME
    uri = best.data.tags.get("ftsweep.model_uri")
    if uri is None and folder.is_dir():
        model, tokenizer = keep.load_folder(folder)
        labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        uri = keep.log_model(
            done.tracking_uri,
            best.info.run_id,
            model,
            tokenizer,
            keep.examples_of(folder),
            labels,
            keep.cut_of(str(folder)),
        )
        client.set_tag(best.info.run_id, "ftsweep.model_uri", uri)
    if uri is None:
        return  # trials of an earlier sweep, which kept no models
    experiment = client.get_experiment(best.info.experiment_id).name
    registered = keep.register(done.tracking_uri, uri, best.info.run_id, keep.registered_name(experiment))
    parent.set_tags({"ftsweep.best_model": registered, "ftsweep.best_run_id": best.info.run_id})
    log.info("best trial's model: %s (run %s)", registered, best.info.run_id)
    if delete_others:  # only trials that are over: another worker may still be writing its own
        over = {t.number for t in done.study.get_trials(deepcopy=False) if t.state.is_finished()}
        for other in done.sweep_dir.glob(f"trial_*/{keep.MODEL_NAME}"):
            if other != folder and int(other.parent.name.split("_")[1]) in over:
                shutil.rmtree(other, ignore_errors=True)
