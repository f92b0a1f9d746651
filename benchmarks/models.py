"""MiniLM-L6 against MPNet-base on the same IMDB slice, full fine-tuning and LoRA, on this machine's CPU.

Each of the four runs is `python -m ftsweep` as a user types it (a subprocess, its own MLflow store), with
each method's default lr. Reports eval accuracy, median step time, peak RSS and the size of the model
ftsweep kept (save_model=best: the whole model for full, the adapter and head for LoRA). Writes
benchmarks/results/models_<date>.json and prints a markdown table.

    .venv/bin/python benchmarks/models.py [--train 320] [--eval 200] [--max-length 128]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kept_size_mb(tracking_uri: str, run_id: str) -> float:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = MlflowClient(tracking_uri).get_run(run_id).data.tags["ftsweep.model_uri"]
    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(uri))
    return sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) / 2**20


def one(model: str, method: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{model}-{method}-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ftsweep",
                f"model={model}",
                f"method={method}",
                f"data.max_train_samples={args.train}",
                f"data.max_eval_samples={args.eval}",
                f"data.max_length={args.max_length}",
                "batch_size=16",
                "progress_bar=false",
                f"hydra.run.dir={tmp}/run",
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{model}/{method} failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        return {
            "model": model,
            "method": method,
            "eval_accuracy": metrics["eval/accuracy"],
            "step_time_ms": metrics["perf/step_time_ms"],
            "train_time_s": metrics["perf/train_time_s"],
            "peak_rss_mb": metrics["mem/cpu_peak_rss_mb"],
            "trainable_pct": metrics["params/trainable_pct"],
            "params_total": metrics["params/total"],
            "kept_model_mb": kept_size_mb(uri, metrics["run_id"]),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    rows = [one(model, method, args) for model in ("minilm", "mpnet_base") for method in ("full", "lora")]
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "slice": vars(args),
        "rows": rows,
    }
    path = REPO / "benchmarks" / "results" / f"models_{out['date']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("| model | method | eval accuracy | step ms | train s | peak RSS MB | trainable % | kept model MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['method']} | {r['eval_accuracy']:.3f} | {r['step_time_ms']:.0f} | "
            f"{r['train_time_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['trainable_pct']:.2f} | {r['kept_model_mb']:.1f} |"
        )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
