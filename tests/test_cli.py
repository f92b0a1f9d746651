"""The entry point as a user types it: `python -m ftsweep ...` in a subprocess."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, toy_rows, write_csv


def ftsweep(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ftsweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_statuses(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return [s for (s,) in con.execute("select status from runs")]


@pytest.mark.parametrize("args, message", [
    (["lr=-1"], "lr must be > 0"),
    (["lr=0"], "lr must be > 0"),
    (["epochs=0"], "epochs must be >= 1"),
    (["data=local", "data.train_file={toy}", "data.max_length=1024"], "above model 'tiny' limit of 512"),
    (["data=local", "data.train_file={toy}", "data.text_column=body"], "no text column 'body'"),
    (["data=local", "data.train_file={empty}"], "is empty"),
    (["data=local", "data.train_file={toy}", "data.eval_file={unseen}"], "eval labels never seen in training"),
    (["data=local", "data.train_file={parquet}"], "no text column 'text' (columns: body, y)"),
    (["data=local", "data.train_file={json}"], "no label column 'label'"),
    (["batch_size=0"], "batch_size must be >= 1"),
    (["method=lorra"], "Could not find 'method/lorra'"),
    (["lrr=1"], "Could not override 'lrr'"),
    (["data=local", "data.train_file=/nope/train.csv"], "data file not found: /nope/train.csv"),
    (["data=local", "data.train_file={toy}", "data.label_column=y"], "no label column 'y'"),
    (["data=local", "data.train_file={one}"], "only one class"),
    (["data=local", "data.train_file={latin}"], "set data.encoding"),
    (["data=local", "data.train_file={toy}", "method=lora", "method.target_modules=[nope]"],
     "method.target_modules=['nope']"),
])
def test_bad_input_exits_non_zero_with_one_clear_line(tmp_path, args, message):
    toy = write_csv(tmp_path / "toy.csv", toy_rows(20))
    one = write_csv(tmp_path / "one.csv", [(t, "pos") for t, _ in toy_rows(20)])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,pos\nbad,neg\n".encode("latin-1"))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    unseen = write_csv(tmp_path / "unseen.csv", [("so so", "neutral"), ("great", "pos")])
    parquet = tmp_path / "wrong.parquet"
    import pandas as pd

    pd.DataFrame({"body": ["a", "b"], "y": [0, 1]}).to_parquet(parquet)
    json_file = tmp_path / "wrong.jsonl"
    json_file.write_text('{"text": "a", "stars": 1}\n{"text": "b", "stars": 2}\n')
    args = [a.format(toy=toy, one=one, latin=latin, empty=empty, unseen=unseen, parquet=parquet, json=json_file)
            for a in args]
    proc = ftsweep("model=tiny", *args, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    error_lines = [l for l in proc.stderr.splitlines() if l.startswith("ftsweep: error:")]
    assert len(error_lines) <= 1
    assert "Traceback" not in proc.stderr
    assert "RUNNING" not in run_statuses(tmp_path / "mlflow.db")


@pytest.mark.slow
def test_lora_on_the_real_minilm_end_to_end(tmp_path):
    """`python -m ftsweep method=lora lr=2e-4` on the embedded MiniLM and real IMDB, with small caps."""
    proc = ftsweep("method=lora", "lr=2e-4", "data.max_train_samples=64", "data.max_eval_samples=32",
                   "data.max_length=64", "progress_bar=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "lora-r8-lr2e-4-bs16"
    assert run.data.tags["model"] == "minilm"
    assert run.data.metrics["params/total"] > 22_000_000
    assert run.data.metrics["params/trainable_pct"] < 2
    assert 0.0 <= run.data.metrics["eval/accuracy"] <= 1.0
    assert "eval/accuracy" in proc.stdout + proc.stderr
