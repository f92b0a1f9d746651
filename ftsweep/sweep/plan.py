"""`hydra.sweeper.plan=true`: what a sweep would cost, predicted from probes; nothing is trained.

Each configuration (the grid's points; for a search, the configurations that try every choice and both ends
of every range, as the sweep's own checks do) is composed, its cost shape probed once (ftsweep/probe.py,
cached), and its run predicted. A trial's time is its steps and evaluations plus a fixed cost measured on
this machine: one run of one step, in a throwaway MLflow store, less its training and evaluation. The sweep's
wall time follows the runner's order (longest first for a grid) over its launcher slots. One table is
printed; plan.json holds the same (its fields are public: docs/contract.md).
"""

from __future__ import annotations

import heapq
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, open_dict

from ftsweep import assets, microbatch
from ftsweep import probe as probe_mod
from ftsweep.artifacts import write_text
from ftsweep.sweep.definition import SweepDefinition, SweepSettings
from ftsweep.sweep.prescreen import PREDICTED, Compose, over_budget
from ftsweep.sweep.replicates import SEED
from ftsweep.tracking import Tracker
from ftsweep.train import train

log = logging.getLogger("ftsweep.sweep")
FILE = "plan.json"


@dataclass
class Planned:
    point: dict[str, Any]  # the swept values
    overrides: dict[str, Any]  # fixed and swept: the job's command line
    prediction: probe_mod.Prediction
    trial_s: float
    fits: bool
    skipped: bool  # prescreening (when on) would not train it


def fixed_cost_s(job: DictConfig, p: probe_mod.Probe) -> float:
    """What a trial costs beyond its steps and evaluations on this machine (start, MLflow, baselines, artifacts),
    from one real run of one step in a throwaway store, less its build, which each shape's probe measures."""
    cache = assets.cache_dir() / "probes" / f"fixed-{p.shape}.json"
    try:
        return float(json.loads(cache.read_text())["overhead_s"]) + p.build_s
    except (OSError, ValueError, KeyError):
        pass
    short = job.copy()
    with open_dict(short):
        short.max_steps, short.eval_every_steps, short.save_model = 1, None, "none"
        short.progress_bar, short.checkpoint_every_steps, short.early_stopping.patience = False, None, None
        short.experiment_name = "ftsweep-plan-fixed-cost"
    with tempfile.TemporaryDirectory(prefix="ftsweep-plan-") as scratch:
        tracker = Tracker(f"sqlite:///{scratch}/mlflow.db")
        tracker.experiment_id(short.experiment_name)  # a new store's seconds of migrations: a sweep's store exists
        started = time.perf_counter()
        metrics = train(short, Path(scratch) / "run", tracker=tracker)
        wall = time.perf_counter() - started
    overhead = max(wall - metrics.get("perf/train_time_s", 0.0) - metrics.get("perf/eval_time_s", 0.0) - p.build_s, 0.0)
    write_text(cache, json.dumps({"overhead_s": overhead, "wall_s": wall}))
    return overhead + p.build_s


def wall_s(durations: list[float], slots: int) -> float:
    """Trials taken in this order by `slots` slots, each claiming the next as soon as it is free."""
    free = [0.0] * max(slots, 1)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)  # the slot free first takes the next trial
    return max(free)


def _configurations(d: SweepDefinition) -> list[dict[str, Any]]:
    return [dict(p) for p in d.grid] if d.grid is not None else d.probe_points()


def make_plan(d: SweepDefinition, settings: SweepSettings, compose: Compose, folder: Path, in_process: bool) -> dict:
    """Probe, predict, print the table and write plan.json into `folder`; returns plan.json's content."""
    started, probes_s, measured, reused = time.perf_counter(), 0.0, 0, 0
    bounds = {k: v for k, v in d.constraints.items() if k in PREDICTED}
    prescreening = settings.prescreen and bool(bounds)
    planned: list[Planned] = []
    fixed: Optional[float] = None
    for point in _configurations(d):
        overrides = {**d.fixed, **point}
        job = microbatch.fitted(compose(overrides))  # micro_batch_size=auto: as its trial will fit it
        found, new = probe_mod.probe(job)
        measured, reused = measured + new, reused + (not new)
        probes_s += found.probe_s if new else 0.0
        fixed = fixed_cost_s(job, found) - found.build_s if fixed is None else fixed
        prediction = probe_mod.predict(job, found)
        trial_s = prediction.train_s + prediction.eval_s + fixed + found.build_s
        metrics = prediction.metrics()
        planned.append(
            Planned(
                point=point,
                overrides=overrides,
                prediction=prediction,
                trial_s=trial_s,
                fits=not over_budget(metrics, bounds, 0.0),
                skipped=prescreening and bool(over_budget(metrics, bounds, settings.prescreen_margin)),
            )
        )
    slots = 1 if in_process else settings.n_jobs
    trained = [p.trial_s for p in planned if not p.skipped]
    if d.grid is None and trained:  # a search: n_trials trials like the configurations tried here, on average
        trained = [statistics.fmean(trained)] * d.n_trials
    content = {
        "configurations": [_entry(p) for p in planned],
        "total_wall_s": wall_s(trained, slots),
        "probe_s": probes_s,
        "slots": slots,
        "n_trials": d.n_trials,
        "constraints": dict(d.constraints),
    }
    write_text(folder / FILE, json.dumps(content, indent=2, default=str))
    print(_table(planned, d, content, measured, reused, time.perf_counter() - started, folder / FILE))
    return content


def _entry(p: Planned) -> dict[str, Any]:
    pr = p.prediction
    return {
        "overrides": p.overrides,
        "step_ms": round(pr.step_ms, 3),
        "trial_s": round(p.trial_s, 3),
        "memory_mb": round(pr.memory_mb, 3),
        "fits": p.fits,
        "train_state_mb": None if pr.train_state_mb is None else round(pr.train_state_mb, 3),
        "steps": pr.steps,
        "evaluations": pr.evals,
        "skipped": p.skipped,
    }


def _table(planned: list[Planned], d: SweepDefinition, content: dict, measured: int, reused: int, spent: float, path):
    names = [k for k in (planned[0].point if planned else {}) if k != SEED or d.seeds]
    rows = [["configuration", "step ms", "minutes", "memory MB", "fits"]]
    for p in planned:
        mark = "✓" if p.fits else ("✗ skipped" if p.skipped else "✗")
        what = " ".join(f"{k}={p.point[k]}" for k in names) or "(the run's config)"
        pr = p.prediction
        rows.append([what, f"{pr.step_ms:,.0f}", f"{p.trial_s / 60:.1f}", f"{pr.memory_mb:,.1f}", mark])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    kind = "grid" if d.grid is not None else f"{d.n_trials} trials like these, on average"
    lines += [
        "",
        f"predicted sweep: {content['total_wall_s'] / 60:.1f} min wall ({kind}, {content['slots']} slot(s), "
        "longest first)",
        f"probes: {measured} measured in {content['probe_s']:.1f} s, {reused} from the cache; plan made in "
        f"{spent:.1f} s; {path}",
    ]
    return "\n".join(lines)
