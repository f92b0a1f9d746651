"""A fuzzer for the entry point: whatever a user types or feeds in, ftsweep ends cleanly.

Hypothesis draws command-line overrides (wrong types, out-of-range numbers, unknown keys, odd strings,
sometimes a small sweep) and a small data file (odd encodings, separators, label values, empty and
huge cells, or no file at all). For every case the contract is the one in docs/reliability.md:
exit 0 or 2, no traceback, at most one `ftsweep: error:` line, no MLflow run left RUNNING, nothing
half-written.

It runs the real entry point in-process (a subprocess per case would cost seconds of imports each) on
the tiny random BERT with at most 2 optimizer steps. CI runs a fixed, small set of cases
(FTSWEEP_FUZZ_EXAMPLES, default 25, derandomized); `make fuzz` runs many more, randomly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import broken_store, error_lines, run_statuses, toy_rows

EXAMPLES = int(os.environ.get("FTSWEEP_FUZZ_EXAMPLES", "25"))
RANDOM = os.environ.get("FTSWEEP_FUZZ_RANDOM") == "1"

# ------------------------------------------------------------------ command-line overrides
NUMBERS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["0", "-1", "1e-3", "1e400", "nan", "inf", "null", "''", "abc", "[1,2]", "{a: 1}"]),
)
SMALL_INTS = st.one_of(st.integers(-3, 4), st.sampled_from(["0", "-1", "null", "x", "2.5", "[]"]))
WORDS = st.sampled_from(["text", "label", "body", "y", "''", "'a b'", "null", "ü", "[text]"])

OVERRIDES = {
    "lr": NUMBERS,
    "batch_size": st.one_of(st.integers(-2, 100000), st.sampled_from(["0", "null", "8.5", "big"])),
    "seed": NUMBERS,
    "data.split_seed": NUMBERS,
    "max_steps": SMALL_INTS,
    "epochs": SMALL_INTS,
    "grad_accum_steps": SMALL_INTS,
    "eval_every_steps": SMALL_INTS,
    "log_every_steps": SMALL_INTS,
    "data.max_length": st.one_of(st.integers(-2, 5000), st.sampled_from(["null", "128.0"])),
    "data.eval_fraction": NUMBERS,
    "data.max_train_samples": SMALL_INTS,
    "data.max_eval_samples": SMALL_INTS,
    "data.eval_batch_size": SMALL_INTS,
    "data.text_column": WORDS,
    "data.label_column": WORDS,
    "data.encoding": st.sampled_from(["utf-8", "latin-1", "utf-16", "nope", "''"]),
    "data.truncation": st.sampled_from(["head", "tail", "head_tail", "middle", "null"]),
    "method": st.sampled_from(["full", "lora", "head", "bitfit", "ia3", "freeze", "prompt_tuning", "qlora", "lorra"]),
    "method.r": st.one_of(st.integers(-1, 100000), st.just("x")),
    "objectives": st.sampled_from(["[eval/accuracy]", "[eval/acc]", "[]", "eval/accuracy", "[eval/loss,mem/peak_mb]"]),
    "precision": st.sampled_from(["fp32", "bf16", "fp16", "fp8", "null"]),
    "device": st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "tpu"]),
    "optimizer": st.sampled_from(["adamw", "sgd", "adam9"]),
    "lrr": st.just("1"),
    "+extra": st.just("1"),
    "data.nope": st.just("3"),
    "model.name_or_path": st.sampled_from(["/nonexistent", "not-a-real-org/not-a-model"]),
    "optimized_metric": st.sampled_from(["eval/accuracy", "eval/acc", "null", "mem/peak_mb", "[a]"]),
    "tracking.retry_window_s": NUMBERS,
    "tracking": st.sampled_from(["a folder", "not a database", "file store"]),  # not an override: a broken MLflow store
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return repr(value)  # nan, inf, 1e+300: Hydra's grammar reads them
    return str(value)


@st.composite
def overrides(draw) -> list[tuple[str, str]]:
    keys = draw(st.lists(st.sampled_from(sorted(OVERRIDES)), min_size=1, max_size=3, unique=True))
    return [(k, _fmt(draw(OVERRIDES[k]))) for k in keys]


# ------------------------------------------------------------------ data files
CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            "NA",
            "null",
            "None",
            "nan",
            "N/A",
            "#N/A",
            "-",
            " ",
            "0",
            "1",
            "1.0",
            "True",
            "pos",
            "neg",
            "a,b",
            'say "hi"',
            "line\nbreak",
            "tab\there",
            "ünïcödé",
            "😀",
            "x" * 5000,
        ]
    ),
    st.text(min_size=0, max_size=30),
)


@st.composite
def data_file(draw, folder: Path) -> str:
    kind = draw(
        st.sampled_from(
            [
                "csv",
                "csv",
                "tsv",
                "tsv-as-csv",
                "semicolon-csv",
                "jsonl",
                "json",
                "parquet",
                "missing",
                "folder",
                "empty",
                "binary",
            ]
        )
    )
    if kind == "missing":
        return str(folder / "missing.csv")
    if kind == "folder":
        (folder / "data.csv").mkdir()
        return str(folder / "data.csv")
    if kind == "empty":
        (folder / "data.csv").write_bytes(b"")
        return str(folder / "data.csv")
    if kind == "binary":
        (folder / "data.csv").write_bytes(bytes(range(256)) * 4)
        return str(folder / "data.csv")
    base = [(t, lab) for t, lab in toy_rows(draw(st.integers(0, 40)), seed=draw(st.integers(0, 3)))]
    odd = draw(st.lists(st.tuples(CELLS, CELLS), max_size=6))
    rows = base + odd
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    import pandas as pd

    df = pd.DataFrame(rows, columns=["text", "label"])
    if kind == "parquet":
        if draw(st.booleans()):
            df["label"] = [[lab] for lab in df["label"]]  # a list-valued label column
        path = folder / "data.parquet"
        df.to_parquet(path)
        return str(path)
    if kind in ("json", "jsonl"):
        path = folder / f"data.{kind}"
        records = df.to_dict("records")
        text = "\n".join(json.dumps(r) for r in records) if kind == "jsonl" else json.dumps(records)
        path.write_bytes(text.encode(encoding, errors="replace"))
        return str(path)
    sep = {"csv": ",", "tsv": "\t", "tsv-as-csv": "\t", "semicolon-csv": ";"}[kind]
    path = folder / ("data.tsv" if kind == "tsv" else "data.csv")
    path.write_bytes(df.to_csv(index=False, sep=sep).encode(encoding, errors="replace"))
    return str(path)


# ------------------------------------------------------------------ running one case
def run_entry_point(args: list[str]) -> tuple[int, str]:
    """`python -m ftsweep ARGS` in this process: (exit code, stderr)."""
    from ftsweep.__main__ import main

    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["ftsweep", *args]
    code = 0
    try:
        with contextlib.redirect_stderr(err):
            try:
                main(install_signals=False)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, err.getvalue()


def half_written(folder: Path) -> list[str]:
    """Temporary files of an atomic write (`.<name>.<random>`) that were never renamed into place."""
    return [
        str(p)
        for p in folder.rglob(".*")
        if p.is_file() and p.name.count(".") >= 2 and not p.name.startswith((".hydra", ".ftsweep"))
    ]


@pytest.mark.slow  # about a minute: 25 whole runs of the entry point
@pytest.mark.filterwarnings("ignore")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_any_input_ends_cleanly(tmp_path, data):
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    train_file = data.draw(data_file(case), label="train file")
    pairs = data.draw(overrides(), label="overrides")
    sweep = data.draw(st.sampled_from([False, False, False, True]), label="sweep")
    store = os.environ["MLFLOW_TRACKING_URI"]
    args = [
        "model=tiny",
        "data=local",
        f"data.train_file='{train_file}'",
        "progress_bar=false",
        "max_steps=2",
        "data.max_length=32",
        f"hydra.run.dir={case / 'run'}",
        f"hydra.sweep.dir={case / 'multirun'}",
    ]
    env = {}
    for key, value in pairs:
        if key == "tracking":
            env["MLFLOW_TRACKING_URI"] = broken_store(value, case)
        else:
            args.append(f"{key}={value}")
    if sweep:
        args = ["-m", *args, "batch_size=2,4"]
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code, stderr = run_entry_point(args)
    finally:
        for k, v in old.items():
            os.environ[k] = v  # type: ignore[assignment]
    errors = error_lines(stderr)
    event(f"exit {code}" + (f": {errors[0][16:56]}" if errors else ""))  # pytest --hypothesis-show-statistics
    shown = f"args={args} env={env}\n--- stderr ---\n{stderr[-3000:]}"
    assert code in (0, 2), shown
    assert "Traceback" not in stderr, shown
    assert len(error_lines(stderr)) <= 1, shown
    assert "RUNNING" not in run_statuses(store), shown
    assert not half_written(case), shown
