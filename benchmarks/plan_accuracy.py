"""How good are a plan's predictions? (`make bench`, section `plan_accuracy`.)

Each case is planned (`hydra.sweeper.plan=true`, with a cache of its own so every cost shape is probed now) and
then run as a user runs it (`python -m ftsweep -m ...`, basic launcher), and each configuration's prediction is
set against what its trial measured:
- trial time: the plan's `trial_s` against the trial's MLflow run, start to end;
- step time: `step_ms` against `perf/step_time_ms`;
- memory: `memory_mb` against `mem/footprint_mb` (the exact training state on a CPU, training's CUDA peak on a GPU);
- the sweep's wall time: `total_wall_s` against the sweep command's, process start to exit.

The cases: the user's grid `method=full,lora batch_size=8,16,32` on the sweep-efficiency slice, then configurations
no test uses (another method, another batch size, other lengths).

**False skips** are configurations that prescreening would skip but that fit when run. The tightest bound a
configuration fits is its own measured value; prescreening skips it under that bound when the prediction is
above it by more than the margin. So a configuration is a false skip, for a metric, when prediction / measured - 1
> `hydra.sweeper.prescreen_margin` (0.25): the worst case over every bound a user could set.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from runs import GRID, REPO, ftsweep, trial_runs

MARGIN = 0.25  # hydra.sweeper.prescreen_margin's default (ftsweep/sweep/definition.py)
SLICE = [g for g in GRID if not g.startswith(("method=", "batch_size="))]
# A sweep needs a swept key, so the configurations no test uses are one small grid: another method (bitfit), another
# batch size (24) and other lengths (96 and 256 tokens), beside full fine-tuning.
CASES = {
    "grid": ["method=full,lora", "batch_size=8,16,32"],
    "others": ["method=bitfit,full", "batch_size=24", "data.max_length=96,256"],
}
# what a plan predicts -> the metric its trial logs
COMPARED = {"step_ms": "perf/step_time_ms", "memory_mb": "mem/footprint_mb"}


def _fresh_probe_cache(tmp: str) -> dict[str, str]:
    """The user's ftsweep cache (the data stay cached) without its probes, so each shape is probed in this run."""
    from ftsweep import assets

    cache = Path(tmp) / "cache"
    cache.mkdir()
    real = assets.cache_dir()
    for entry in real.iterdir() if real.exists() else []:
        if entry.name != "probes":
            (cache / entry.name).symlink_to(entry)
    return {"FTSWEEP_CACHE": str(cache)}


def _matches(run, overrides: dict[str, Any]) -> bool:
    """Whether a trial ran this configuration: its swept keys, read from the run's params and tags."""
    for key, value in overrides.items():
        logged = run.data.tags.get("method") if key == "method" else run.data.params.get(key)
        if logged is not None and str(logged) != str(value):
            return False
    return True


def run_case(name: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        env = _fresh_probe_cache(tmp)
        os.environ.update(env)
        try:
            # a key the case sweeps replaces the slice's (given both, the single value won over the swept list)
            base = [o for o in SLICE if o.split("=")[0] not in {c.split("=")[0] for c in overrides}]
            plan_wall = ftsweep(REPO, tmp, "-m", *base, *overrides, "hydra.sweeper.plan=true", "hydra.sweep.dir=plan")
            [plan_file] = Path(tmp, "plan").glob("*/plan.json")
            plan = json.loads(plan_file.read_text())
            sweep_wall = ftsweep(REPO, tmp, "-m", *base, *overrides, "hydra.sweep.dir=sweep")
            trials = trial_runs(tmp)
        finally:
            for key in env:
                os.environ.pop(key)
    rows = []
    for c in plan["configurations"]:
        swept = {k: v for k, v in c["overrides"].items() if any(o.startswith(f"{k}=") for o in overrides)}
        [run] = [r for r in trials if _matches(r, swept)]
        m = run.data.metrics
        measured = {"trial_s": (run.info.end_time - run.info.start_time) / 1000}
        measured.update({k: m[metric] for k, metric in COMPARED.items()})
        rows.append(
            {
                "configuration": " ".join(f"{k}={v}" for k, v in swept.items()),
                "predicted": {k: c[k] for k in measured},
                "measured": measured,
                "error_pct": {k: 100 * (c[k] / measured[k] - 1) for k in measured},
            }
        )
    out = {"case": name, "overrides": overrides, "rows": rows, "probe_s": plan["probe_s"], "plan_wall_s": plan_wall}
    out["sweep"] = {"predicted_wall_s": plan["total_wall_s"], "measured_wall_s": sweep_wall}
    out["sweep"]["error_pct"] = 100 * (plan["total_wall_s"] / sweep_wall - 1)
    for r in rows:
        print(f"[plan] {name} {r['configuration']}: " + ", ".join(f"{k} {v:+.1f} %" for k, v in r["error_pct"].items()))
    return out


def bench_plan_accuracy() -> dict:
    return summarise([run_case(name, overrides) for name, overrides in CASES.items()])


def summarise(cases: list[dict]) -> dict:
    rows = [r for c in cases for r in c["rows"]]
    worst = {k: max(abs(r["error_pct"][k]) for r in rows) for k in rows[0]["error_pct"]}
    false_skips = {k: [r["configuration"] for r in rows if r["error_pct"][k] > 100 * MARGIN] for k in worst}
    summary = {
        "worst_abs_error_pct": worst,
        "median_abs_error_pct": {k: statistics.median(abs(r["error_pct"][k]) for r in rows) for k in worst},
        "false_skips": false_skips,
        "margin": MARGIN,
        "goals_pct": {"trial_s": 15, "memory_mb": 10},
    }
    print(f"[plan] worst error: {worst}; false skips: {sum(len(v) for v in false_skips.values())}", flush=True)
    return {"slice": " ".join(SLICE), "cases": cases, **summary}


def readme_lines(r: dict) -> list[str]:
    lines = [
        "",
        f"Plan against run (issue 23; `{r['slice']}`; each case planned with its own probes, then run; measured "
        f"{r.get('date', '')} on {r.get('cpu', 'this CPU')}). Error = predicted / measured - 1:",
        "",
        "| case | configuration | trial s: plan / run (error) | step ms: plan / run (error) | memory MB: plan / run "
        "(error) |",
        "|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        for row in c["rows"]:
            cells = [
                f"{row['predicted'][k]:,.1f} / {row['measured'][k]:,.1f} ({row['error_pct'][k]:+.1f} %)"
                for k in ("trial_s", "step_ms", "memory_mb")
            ]
            lines.append(
                f"| {c['case']} | {row['configuration'] or '(one configuration)'} | " + " | ".join(cells) + " |"
            )
    lines += ["", "| case | sweep wall pred / run (error) | probes s | plan command s |", "|---|---|---|---|"]
    for c in r["cases"]:
        s = c["sweep"]
        lines.append(
            f"| {c['case']} | {s['predicted_wall_s']:.0f} / {s['measured_wall_s']:.0f} ({s['error_pct']:+.1f} %) | "
            f"{c['probe_s']:.0f} | {c['plan_wall_s']:.0f} |"
        )
    worst, goals = r["worst_abs_error_pct"], r["goals_pct"]
    skips = sum(len(v) for v in r["false_skips"].values())
    lines.append(
        f"\nWorst |error|: trial time {worst['trial_s']:.1f} % (goal {goals['trial_s']} %), memory "
        f"{worst['memory_mb']:.1f} % (goal {goals['memory_mb']} %), step time {worst['step_ms']:.1f} %. False skips "
        f"at the {100 * r['margin']:.0f} % margin, under the tightest bound each configuration fits: **{skips}**"
        + (f" ({r['false_skips']})." if skips else ".")
    )
    if earlier := r.get("false_skips_at_earlier_margin"):  # the same runs judged at the margin they changed
        found = {k: v for k, v in earlier["false_skips"].items() if v}
        lines[-1] += f" At the earlier {100 * earlier['margin']:.0f} % margin: {found or 'none'}."
    return lines
