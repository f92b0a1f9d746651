"""GP against TPE on the same small search, run as a user runs it: `python -m ftsweep -m ...` subprocesses.

A linear probe (method=head) on the embedded MiniLM over BBC News topics (5 classes), lr on a log scale over
[1e-5, 1], 480 training articles and 30 steps per trial: a trial costs seconds, and lr decides the accuracy
(measured: 0.82 at lr 3e-2, 0.25 at lr 1e-4). On IMDB no lr learned anything in so few steps. Same seeds, same
trial count for both samplers; each sweep gets its own Optuna storage and MLflow store. Reports the best-so-far
accuracy after each trial, per seed, and its mean over seeds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEARCH = [
    "data=bbc_news",
    "method=head",
    "lr=tag(log, interval(1e-5, 1.0))",
    "data.max_train_samples=480",
    "data.max_eval_samples=300",
    "data.max_length=64",
    "max_steps=30",
    "progress_bar=false",
]


def best_so_far(values: list[float]) -> list[float]:
    out, best = [], float("-inf")
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def one_sweep(sampler: str, seed: int, n_trials: int) -> dict:
    import optuna

    with tempfile.TemporaryDirectory(prefix=f"bench-{sampler}-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ftsweep",
                "-m",
                *SEARCH,
                f"hydra.sweeper.sampler={sampler}",
                f"hydra.sweeper.seed={seed}",
                f"hydra.sweeper.n_trials={n_trials}",
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{sampler} sweep failed: {proc.stderr[-2000:]}")
        storage = f"sqlite:///{tmp}/multirun/optuna.db"
        [name] = optuna.get_all_study_names(storage)
        trials = sorted(optuna.load_study(study_name=name, storage=storage).get_trials(), key=lambda t: t.number)
        values = [t.value for t in trials if t.value is not None]
        return {
            "values": values,
            "lrs": [t.params["lr"] for t in trials],
            "best_so_far": best_so_far(values),
            "wall_s": wall,
        }


def bench_samplers(quick: bool) -> dict:
    n_trials, seeds = (4, [1]) if quick else (8, [1, 2, 3])
    out: dict = {
        "search": " ".join(SEARCH),
        "n_trials": n_trials,
        "seeds": seeds,
        "startup_trials": min(10, max(3, n_trials // 3)),
    }
    for sampler in ("tpe", "gp"):
        runs = {seed: one_sweep(sampler, seed, n_trials) for seed in seeds}
        curves = [r["best_so_far"] for r in runs.values()]
        out[sampler] = {
            "runs": runs,
            "mean_best_so_far": [statistics.mean(c[i] for c in curves) for i in range(n_trials)],
            "wall_s": sum(r["wall_s"] for r in runs.values()),
        }
        print(f"[samplers] {sampler}: mean best-so-far {out[sampler]['mean_best_so_far']}", flush=True)
    return out


def readme_lines(r: dict) -> list[str]:
    n = r["n_trials"]
    shown = sorted({r["startup_trials"], n // 2, n})
    when = f" Measured {r['date']} on {r['cpu']} in {r['wall_s']:.0f} s (`--only samplers`)." if "date" in r else ""
    lines = [
        "",
        f"GP against TPE (`hydra.sweeper.sampler=gp|tpe`), {n} trials each, seeds {r['seeds']}, the first "
        f"{r['startup_trials']} trials random start-up for both: `{r['search']}`.{when}",
        "",
        "| sampler | " + " | ".join(f"mean best accuracy after {k}" for k in shown) + " | per seed, final | wall s |",
        "|---|" + "---|" * len(shown) + "---|---|",
    ]
    for name in ("tpe", "gp"):
        s = r[name]
        finals = ", ".join(f"{run['best_so_far'][-1]:.3f}" for run in s["runs"].values())
        lines.append(
            f"| {name} | "
            + " | ".join(f"{s['mean_best_so_far'][k - 1]:.3f}" for k in shown)
            + f" | {finals} | {s['wall_s']:.0f} |"
        )
    return lines


if __name__ == "__main__":
    import json

    print(json.dumps(bench_samplers(quick="--quick" in sys.argv), indent=2))
