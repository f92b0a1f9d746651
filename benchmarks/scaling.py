"""Scaling out on this machine, measured with the commands a user types (subprocesses, their own stores).

1. Worker utilisation (busy time / (wall time x workers)) of two 6-trial sweeps with trials of unequal
   length on two joblib workers, on MiniLM: the user's grid `method=full,lora batch_size=8,16,32` (20 steps
   each, so the batch size sets a trial's length), and an extreme one, `max_steps=4,60 batch_size=8,16,32`,
   whose longest trial is most of the work. With `--before REPO` the same commands also run on another
   checkout (a worktree of the commit before launcher slots), side by side. Busy time is the sum of the
   trials' MLflow run spans; wall time runs from the first trial's start to the last one's end.
2. distributed.nproc=1 against 2 (gloo) on MiniLM, same global batch: median step time and the speed-up.

    .venv/bin/python benchmarks/scaling.py [--before /path/to/old/checkout]

Writes benchmarks/results/scaling_<date>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

from runs import ftsweep, trial_runs  # benchmarks/runs.py: a user's command as a subprocess

REPO = Path(__file__).resolve().parents[1]
DATA = [
    "data.max_train_samples=400",
    "data.max_eval_samples=100",
    "data.max_length=128",
    "progress_bar=false",
    "save_model=none",
]


GRIDS = {
    "user grid": ["method=full,lora", "batch_size=8,16,32", "max_steps=20"],
    "extreme": ["max_steps=4,60", "batch_size=8,16,32"],
}


def utilisation(repo: Path, grid: list[str], workers: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp:
        ftsweep(
            repo,
            tmp,
            "-m",
            *DATA,
            *grid,
            "hydra/launcher=joblib",
            f"hydra.sweeper.n_jobs={workers}",
            f"hydra.launcher.n_jobs={workers}",
        )
        trials = trial_runs(tmp)
        spans = [(r.info.start_time / 1000, r.info.end_time / 1000) for r in trials]
        wall = max(e for _, e in spans) - min(s for s, _ in spans)
        busy = sum(e - s for s, e in spans)
        return {
            "trials": len(trials),
            "workers": workers,
            "wall_s": round(wall, 1),
            "busy_s": round(busy, 1),
            "utilisation": round(busy / (wall * workers), 3),
        }


def ddp(nproc: int, steps: int = 12) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        ftsweep(
            REPO,
            tmp,
            *DATA,
            "batch_size=16",
            f"max_steps={steps}",
            f"distributed.nproc={nproc}",
            f"hydra.run.dir={tmp}/run",
        )
        m = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        return {
            "nproc": nproc,
            "step_time_ms": round(m["perf/step_time_ms"], 1),
            "samples_per_s": round(m["perf/samples_per_s"], 2),
            "eval_accuracy": m["eval/accuracy"],
            "peak_mb_all_ranks": round(m.get("mem/peak_mb_all_ranks", m["mem/cpu_peak_rss_mb"]), 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, help="another ftsweep checkout to measure the same sweep on")
    args = ap.parse_args()
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        "utilisation": [],
    }
    for name, grid in GRIDS.items():
        for code, repo in (("after", REPO), ("before", args.before)):
            if repo is not None:
                out["utilisation"].append(
                    {"sweep": name, "code": code, "grid": " ".join(grid), **utilisation(repo, grid)}
                )
    out["ddp"] = [ddp(1), ddp(2)]
    out["ddp_speedup"] = round(out["ddp"][0]["step_time_ms"] / out["ddp"][1]["step_time_ms"], 2)
    path = REPO / "benchmarks" / "results" / f"scaling_{out['date']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"## Scaling ({out['date']}, {out['machine']})\n")
    print("| sweep | code | trials | workers | wall s | busy s | utilisation |\n|---|---|---|---|---|---|---|")
    for u in out["utilisation"]:
        print(
            f"| {u['sweep']} (`{u['grid']}`) | {u['code']} | {u['trials']} | {u['workers']} | {u['wall_s']} | "
            f"{u['busy_s']} | {u['utilisation']} |"
        )
    print("\n| nproc | step ms | samples/s | peak MB (all ranks) |\n|---|---|---|---|")
    for d in out["ddp"]:
        print(f"| {d['nproc']} | {d['step_time_ms']} | {d['samples_per_s']} | {d['peak_mb_all_ranks']} |")
    print(f"\nDDP speed-up on this machine: {out['ddp_speedup']}x\n\nwritten: {path}")


if __name__ == "__main__":
    main()
