"""The prepared CUDA check: CUDA peak memory and step time per method and knob.

Runs train() on MiniLM for each case below, reads the metrics back from the MLflow
store (so they are shown *logged*, not only computed) and writes a JSON and a
Markdown table. On a GPU machine:

    python benchmarks/gpu_check.py --model DIR --train-file imdb_slice.csv --out results/

`--model` may be the embedded MiniLM folder or a copy of it (e.g. converted to fp16
to travel); `--train-file` a CSV slice of IMDB (columns review, sentiment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ("full fp32", ["method=full"]),
    ("lora fp32", ["method=lora"]),
    ("full bf16", ["method=full", "precision=bf16"]),
    ("full fp16", ["method=full", "precision=fp16"]),
    ("full fp32 + checkpointing", ["method=full", "gradient_checkpointing=true"]),
    ("lora bf16", ["method=lora", "precision=bf16"]),
    ("lora bf16 + checkpointing", ["method=lora", "precision=bf16", "gradient_checkpointing=true"]),
    ("qlora nf4", ["method=qlora"]),
    ("head fp32", ["method=head"]),
]
COLUMNS = [
    "mem/cuda_peak_allocated_mb",
    "mem/cuda_peak_reserved_mb",
    "mem/params_mb",
    "mem/grads_mb",
    "mem/optimizer_state_mb",
    "mem/activations_est_mb",
    "perf/step_time_ms",
    "perf/samples_per_s",
    "eval/accuracy",
    "params/trainable",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train-file", required=True)
    ap.add_argument("--out", default=".")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument(
        "--sweep-order",
        action="store_true",
        help="instead: is a trial's CUDA peak the same whether a bigger trial ran before it in the process?",
    )
    args = ap.parse_args()
    if args.sweep_order:
        return sweep_order(args)

    import torch
    from mlflow.tracking import MlflowClient

    from ftsweep.compose import compose_config
    from ftsweep.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = Path(tempfile.mkdtemp()) / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor()})"
    common = [
        "model=minilm",
        f"model.name_or_path={args.model}",
        "data=local",
        f"data.train_file={args.train_file}",
        "data.text_column=review",
        "data.label_column=sentiment",
        "data.max_train_samples=4000",
        "data.max_eval_samples=512",
        f"data.max_length={args.max_length}",
        f"batch_size={args.batch_size}",
        f"max_steps={args.steps}",
        "progress_bar=false",
        "experiment_name=gpu_check",
    ]
    rows = []
    for name, overrides in CASES:
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        try:
            train(compose_config(*common, *overrides, f"run_name={name.replace(' ', '-').replace('+', 'with')}"))
            client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
            exp = client.get_experiment_by_name("gpu_check")
            run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
            logged = {k: run.data.metrics.get(k) for k in COLUMNS}  # read back from MLflow
            rows.append({"case": name, "status": run.info.status, **logged, "wall_s": time.time() - t0})
        except Exception as exc:  # record and go on: one unsupported case must not hide the others
            rows.append(
                {"case": name, "status": f"error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"}
            )
        print(json.dumps(rows[-1]), flush=True)

    meta = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
    }
    (out / "gpu_results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    short = [c.split("/")[1] for c in COLUMNS]
    lines = [f"{meta}", "", "| case | " + " | ".join(short) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = (
            [("" if r.get(c) is None else f"{r[c]:.4g}") for c in COLUMNS]
            if r["status"] == "FINISHED"
            else [r["status"]] + [""] * (len(COLUMNS) - 1)
        )
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def sweep_order(args) -> int:
    """Two grid sweeps in one process each (basic launcher), big-then-small and small-then-big."""
    import subprocess

    from mlflow.tracking import MlflowClient

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for order in ("512,32", "32,512"):
        work = Path(tempfile.mkdtemp())
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [
            sys.executable,
            "-m",
            "ftsweep",
            "-m",
            "model=tiny",
            f"model.name_or_path={Path(args.model).resolve()}",
            "data=local",
            f"data.train_file={Path(args.train_file).resolve()}",
            "data.text_column=review",
            "data.label_column=sentiment",
            "data.max_train_samples=640",
            "data.max_eval_samples=64",
            "data.max_length=256",
            "batch_size=64",
            "max_steps=10",
            "model.num_hidden_layers=4",
            "model.num_attention_heads=4",
            "model.intermediate_size=2048",
            f"model.hidden_size={order}",
            "progress_bar=false",
        ]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = client.search_runs(
            [client.get_experiment_by_name("local").experiment_id], "tags.`mlflow.parentRunId` != ''"
        )
        results[order] = {
            r.data.params["model.hidden_size"]: {
                k: r.data.metrics.get(k)
                for k in ("mem/cuda_peak_allocated_mb", "mem/cuda_peak_reserved_mb", "mem/cpu_peak_rss_mb")
            }
            for r in runs
        }
        print(order, json.dumps(results[order]), flush=True)
    (out / "gpu_sweep_order.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
