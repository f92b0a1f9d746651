"""How long the trade-off report takes on an 18-trial sweep, stage by stage (issue 22: its intervals, bootstrap
comparisons, replicate groups and warnings must add no more than a few seconds).

    python benchmarks/report_time.py [--repeats 3] [--out benchmarks/results/report_time.json]

Runs a real 18-trial sweep once (the tiny random BERT, 2 steps a trial, 1,000 eval examples, so the paired
bootstrap works on a realistic eval set), then rebuilds its report `--repeats` times, timing each stage of
`ftsweep.report.make_report`. The stages new in round 4 (predictions, comparisons, histories, configurations,
recommendation, warnings, report.json) are summed as `extra_s`. Prints one JSON object and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = ["method=full,lora", "lr=1e-4,5e-4,1e-3", "batch_size=4,8,16"]  # 18 trials
NEW = ("read_histories", "outcomes", "against_best", "configurations", "recommend", "find_caveats", "build")
TIMED = (*NEW, "collect", "make_plots", "render", "to_html")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def make_data(path: Path, n: int = 1200) -> None:
    import random

    rng = random.Random(0)
    words = {"pos": ["good", "great", "fine", "lovely"], "neg": ["bad", "awful", "poor", "dull"]}
    lines = ["text,label"]
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        lines.append(
            " ".join(rng.choice(words[label] + words["pos" if label == "neg" else "neg"]) for _ in range(12))
            + f",{label}"
        )
    path.write_text("\n".join(lines) + "\n")


def run_sweep(work: Path) -> None:
    make_data(work / "data.csv")
    args = ["model=tiny", "data=local", f"data.train_file={work / 'data.csv'}", "data.eval_fraction=0.84"]
    args += ["data.max_eval_samples=1000", "max_steps=2", "progress_bar=false", "save_model=none", *GRID]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    subprocess.run([sys.executable, "-m", "ftsweep", "-m", *args], cwd=work, env=env, check=True, capture_output=True)
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]


def timed_report(out: Path) -> dict[str, float]:
    """One make_report, with each stage's wall time."""
    import ftsweep.report as report
    from ftsweep.report import document, evidence

    spent: dict[str, float] = {}
    owners = {"outcomes": evidence, "against_best": evidence, "build": document}
    originals = {}
    for name in TIMED:
        owner = owners.get(name, report)
        original = getattr(owner, name)
        originals[name] = (owner, original)

        def wrapper(*a, _f=original, _n=name, **k):
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_n] = spent.get(_n, 0.0) + time.perf_counter() - t0

        setattr(owner, name, wrapper)
    try:
        t0 = time.perf_counter()
        report.make_report(out=out)
        spent["total"] = time.perf_counter() - t0
    finally:
        for name, (owner, original) in originals.items():
            setattr(owner, name, original)
    spent["extra_s"] = sum(spent.get(n, 0.0) for n in NEW)
    return spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "report_time.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftsweep-report-bench-") as tmp:
        work = Path(tmp)
        run_sweep(work)
        runs = [timed_report(work / "report") for _ in range(args.repeats)]
    keys = sorted({k for r in runs for k in r})
    result = {
        "what": "make_report on an 18-trial sweep (1,000 eval examples), seconds per stage, median of repeats",
        "machine": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "median_s": {k: round(statistics.median(r.get(k, 0.0) for r in runs), 3) for k in keys},
        "max_s": {k: round(max(r.get(k, 0.0) for r in runs), 3) for k in keys},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
