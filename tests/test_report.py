"""The trade-off report: pure logic on hand-built rows, then real sweeps, then MLflow's UI in a real browser."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ftsweep.report.analysis import answer, mark_pareto, method_summary, pareto_front
from ftsweep.report.recommend import recommend
from ftsweep.report.replicates import configurations
from ftsweep.report.rows import Row, fmt, mark_budget
from tests.conftest import REPO, free_port, toy_rows, wait_http, write_csv

ARTIFACTS = REPO / "test-artifacts"  # screenshots land here (ignored by git)


def decide(rows):
    return answer(rows, recommend(configurations(rows), {}))


def row(trial, method, acc, mem, step, **params):
    return Row(
        trial=trial,
        method=method,
        params={k: str(v) for k, v in params.items()},
        metrics={
            "eval/accuracy": acc,
            "mem/peak_mb": mem,
            "perf/step_time_ms": step,
            "params/trainable_pct": 100.0 if method == "full" else 1.0,
        },
        state="FINISHED",
        run_id=f"run{trial}",
        eval_samples=1000,
    )


def test_pareto_front_on_known_dominance():
    # (accuracy up, cost down): 0 dominates 3; 1 and 2 trade off; 4 ties 1 exactly (both kept)
    pts = [(0.90, 100.0), (0.95, 300.0), (0.80, 50.0), (0.85, 150.0), (0.95, 300.0)]
    assert pareto_front(pts) == [0, 1, 2, 4]
    assert pareto_front([(0.5, 10.0)]) == [0]


def test_marking_uses_memory_and_time_separately():
    rows = [
        row(0, "full", 0.9, 1000, 100),
        row(1, "lora", 0.88, 600, 120),
        row(2, "head", 0.7, 500, 20),
        row(3, "lora", 0.85, 700, 130),
    ]
    mark_pareto(rows)
    assert [r.pareto for r in rows] == [["memory", "time"], ["memory"], ["memory", "time"], []]


def test_method_summary_compares_with_full():
    rows = [
        row(0, "full", 0.90, 1000, 100),
        row(1, "full", 0.86, 1200, 110),
        row(2, "lora", 0.88, 600, 80),
        row(3, "lora", 0.80, 800, 60),
    ]
    summary = {s["method"]: s for s in method_summary(rows)}
    assert summary["full"]["best_accuracy"] == 0.90 and summary["full"]["median_memory_mb"] == 1100
    lora = summary["lora"]
    assert lora["accuracy_lost_vs_full"] == pytest.approx(0.02)
    assert lora["memory_saved_vs_full_pct"] == pytest.approx(100 * (1 - 700 / 1100))
    assert lora["time_saved_vs_full_pct"] == pytest.approx(100 * (1 - 70 / 105))


def test_answer_takes_its_numbers_from_the_rows():
    rows = [
        row(0, "full", 0.9123, 1000, 100, lr=5e-5),
        row(1, "lora", 0.8987, 600, 80, lr=5e-4),
        row(2, "head", 0.7, 500, 20, lr=1e-3),
    ]
    best, cheap, confirm = decide(rows)
    assert "`full`" in best and "0.9123" in best and "memory 1,000 MB" in best and "run0" in best
    # lora is 1.4 points lower, within the noise of 1,000 examples each; head, 21 points lower, is not
    assert (
        cheap.startswith("**Cheapest tied with the best, by memory:** `lora`")
        and "memory 600 MB (-40 % memory)" in cheap
    )
    assert "0.8987" in cheap and "no measurable loss on one seed (unconfirmed): -1.4 points [" in cheap
    assert "hydra.sweeper.repeats=3" in confirm


def test_answer_when_everything_failed():
    failed = Row(trial=0, method="full", params={}, metrics={}, state="FAILED", error="boom")
    assert "all 1 failed" in decide([failed])[0]


def test_trials_over_budget_are_marked_and_never_the_answer():
    rows = [
        row(0, "full", 0.95, 3500, 100),
        row(1, "lora", 0.90, 2000, 950, lr=1e-3),
        row(2, "lora", 0.88, 2500, 400, lr=5e-4),
        Row(
            trial=3, method="full", params={}, metrics={}, state="FAILED", error="OutOfMemoryError: CUDA out of memory"
        ),
    ]
    mark_budget(rows, {"mem/peak_mb": 3000, "perf/step_time_ms": 900})
    assert [r.over_budget for r in rows] == [["mem/peak_mb"], ["perf/step_time_ms"], [], ["out of memory"]]
    mark_pareto(rows)
    assert rows[0].pareto == [] and rows[2].pareto == ["memory", "time"]  # fronts among feasible trials only
    assert "run2" in decide(rows)[0]  # not the more accurate run0 or run1, which break the budget


def test_cells_have_significant_digits_and_thousands_separators():
    assert [fmt(v) for v in (22713986, 12345.6, 0.326912, 4.4051, 1e-05, "0.00057720094", True, None)] == [
        "22,713,986",
        "12,346",
        "0.3269",
        "4.405",
        "1e-05",
        "0.0005772",
        "True",
        "–",
    ]


def test_pareto_front_members_within_noise_of_the_best_are_named():
    from ftsweep.report.evidence import Comparison, ties

    rows = [row(0, "full", 0.90, 1000, 100), row(1, "lora", 0.89, 600, 80), row(2, "head", 0.70, 500, 20)]
    mark_pareto(rows)
    rows[0].vs_best = Comparison(0.0, 0.0, 0.0, 1.0, True)
    rows[1].vs_best = Comparison(-0.01, -0.03, 0.01, 0.4, True)
    rows[2].vs_best = Comparison(-0.20, -0.23, -0.17, 0.0, True)
    lines = ties(rows, rows[0])
    assert "1 of the 2 other finished trial(s)" in lines[1]
    assert "On the memory front, 1 of the 2 member(s) besides the best are within noise of it (trials 1)" in lines[2]


# --------------------------------------------------------------------------- on real sweeps
def sweep(cli, *args: str) -> subprocess.CompletedProcess:
    toy = write_csv(cli.cwd / "toy.csv", toy_rows(48))
    return cli.sweep("model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "max_steps=2", *args)


def study_dir(cwd: Path) -> Path:
    [d] = [p for p in (cwd / "multirun").iterdir() if p.is_dir()]
    return d


def test_report_after_a_sweep_has_every_trial_plots_and_artifacts(cli):
    proc = sweep(cli, "method=full,lora", "lr=1e-3,1e30")  # lr=1e30 diverges when it trains
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = study_dir(cli.cwd)
    text = (out / "report.md").read_text()
    assert text.count("| FINISHED |") == 2
    assert "### Failed trials" in text and text.count("training diverged") == 2
    assert "**Best overall:**" in text and "## Per method" in text
    doc = json.loads((out / "report.json").read_text())
    assert [t["state"] for t in doc["trials"]].count("FINISHED") == 2 and doc["answer"]["best"]["n"] == 1
    assert {w["kind"] for w in doc["warnings"]} >= {"diverged", "few_trials"}  # lr=1e30 blew up; 2 trials
    assert "- `diverged`: trial" in text and "## Warnings" in text
    from mlflow.tracking import MlflowClient

    # the test's own store: another test in this worker may have set MLflow's process-wide tracking URI
    parent = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(doc["parent_run_id"])
    assert set(parent.data.tags["ftsweep.warnings"].split(",")) == {w["kind"] for w in doc["warnings"]}
    assert (out / "report.html").read_text().count("<tr>") >= 3
    import matplotlib.image as mpimg

    for name in ("accuracy_vs_memory", "accuracy_vs_step_time", "accuracy_vs_lr", "accuracy_vs_batch_size"):
        image = mpimg.imread(out / f"{name}.png")
        assert image.shape[0] >= 300 and image.shape[1] >= 500 and image.std() > 0.01  # not blank
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("local")
    [parent] = client.search_runs([exp.experiment_id], "tags.`ftsweep.role` = 'sweep'")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/accuracy_vs_memory.png"} <= logged


def test_report_cli_rebuilds_a_single_method_sweep_elsewhere(cli):
    proc = sweep(cli, "method=lora", "batch_size=8,16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = cli.cwd / "again"
    rebuilt = cli.run("--experiment", "local", "--out", str(out), module="ftsweep.report")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    text = (out / "report.md").read_text()
    per_method = text[text.index("## Per method") :].splitlines()
    header = [c.strip() for c in next(line for line in per_method if line.startswith("| method |")).split("|")]
    lora = [c.strip() for c in next(line for line in per_method if line.startswith("| lora |")).split("|")]
    assert text.count("| FINISHED |") == 2
    # no full fine-tuning trial: nothing to compare "vs full" against
    for column in ("best vs full's best, points [95 % CI]", "memory saved vs full %", "time saved vs full %"):
        assert lora[header.index(column)] == "–"


def test_two_seeds_of_one_configuration_are_reported_tied_example_by_example(cli):
    """The same configuration at seed=1,2: the report compares them over the shared eval examples (paired
    bootstrap, McNemar) and cannot tell them apart, and says so."""
    proc = sweep(cli, "seed=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (study_dir(cli.cwd) / "report.md").read_text()
    assert "**Tied with the best:** 1 of the 1 other finished trial(s)" in text and "paired bootstrap" in text
    trials = text[text.index("## All trials") : text.index("## Per method")].splitlines()
    header = [c.strip() for c in next(line for line in trials if line.startswith("| trial |")).split("|")]
    rows = [[c.strip() for c in line.split("|")] for line in trials if line.startswith("| ") and "FINISHED" in line]
    vs_best = [r[header.index("vs best, points [95 % CI]")] for r in rows]
    assert vs_best[0] == "= +0.0 points [+0.0, +0.0]" and vs_best[1].startswith("= ")  # the best, and a tie
    assert 0 < float(rows[1][header.index("p")]) <= 1
    # the two seeds are replicates of one configuration: report.json groups them, and the answer gives their mean
    doc = json.loads((study_dir(cli.cwd) / "report.json").read_text())
    [group] = doc["replicates"]
    assert group["n"] == 2 and sorted(group["seeds"]) == ["1", "2"] and len(group["run_ids"]) == 2
    assert doc["answer"]["best"]["n"] == 2 and "mean of 2 seeds" in text
    assert {t["seed"] for t in doc["trials"]} == {"1", "2"} and all(t["vs_best"] for t in doc["trials"])


def test_report_default_folder_is_the_sweeps_own(cli):
    proc = sweep(cli, "batch_size=8,16", "hydra.sweep.dir=elsewhere")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = [p for p in (cli.cwd / "elsewhere").iterdir() if p.is_dir()]
    (study / "report.md").unlink()
    rebuilt = cli.run(module="ftsweep.report")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert (study / "report.md").is_file() and not (cli.cwd / "multirun").exists()


def test_report_for_a_sweep_where_every_trial_failed(cli):
    proc = sweep(cli, "lr=1e30,2e30")
    assert proc.returncode != 0
    text = (study_dir(cli.cwd) / "report.md").read_text()
    assert "No trial finished: all 2 failed" in text and text.count("training diverged") == 2


def test_report_without_any_sweep_or_with_a_wrong_run_id_says_so_in_one_line(cli, tiny_cfg):
    none = cli.run(module="ftsweep.report")
    assert none.returncode != 0 and "no sweep found" in none.stderr
    unknown = cli.run("--sweep", "0123456789abcdef", module="ftsweep.report")
    assert unknown.returncode != 0 and unknown.stderr.strip().splitlines() == [
        f"ftsweep.report: error: no run '0123456789abcdef' in the tracking store {os.environ['MLFLOW_TRACKING_URI']}"
    ]
    from ftsweep.train import train

    train(tiny_cfg("max_steps=1"), output_dir=cli.cwd / "out")
    run_id = json.loads((cli.cwd / "out" / "metrics.json").read_text())["run_id"]
    refused = cli.run("--sweep", run_id, module="ftsweep.report")
    assert refused.returncode != 0 and "is not a sweep's parent run" in refused.stderr
    from mlflow.tracking import MlflowClient

    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).list_artifacts(run_id, "report") == []


# --------------------------------------------------------------------------- the MLflow UI in a browser
def test_mlflow_ui_in_a_real_browser(cli, chromium):
    assert sweep(cli, "method=full,lora").returncode == 0
    from mlflow.tracking import MlflowClient

    db_uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(db_uri)
    exp = client.get_experiment_by_name("local")
    runs = client.search_runs([exp.experiment_id])
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    parent = next(r for r in runs if r.data.tags.get("ftsweep.role") == "sweep")

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            db_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=cli.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_http(f"{base}/health") == b"OK"
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            method="POST",
            data=json.dumps({"experiment_ids": [exp.experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        found = json.loads(urllib.request.urlopen(request, timeout=10).read())["runs"]
        assert {r["info"]["run_id"] for r in found} == {r.info.run_id for r in runs}

        runs_page = chromium(f"{base}/#/experiments/{exp.experiment_id}/runs", "--dump-dom")
        assert "local" in runs_page.stdout and parent.info.run_name in runs_page.stdout
        best = client.get_run(parent.data.tags["ftsweep.best_run_id"])
        run_page = chromium(f"{base}/#/experiments/{exp.experiment_id}/runs/{best.info.run_id}", "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "mlflow_ui_run.html").write_text(run_page.stdout)
        assert best.info.run_name in run_page.stdout
        text = " ".join(re.sub(r"<[^>]+>", " ", run_page.stdout).split())  # what a reader sees on the run page
        assert "Logged models (1)" in text and "Datasets local-train (" in text  # what came out and went in
        assert "Registered models ftsweep-local v1" in text
        for metric in (
            "eval/accuracy",
            "eval/f1_macro",
            "perf/step_time_ms",
            "mem/cpu_peak_rss_mb",
            "params/trainable_pct",
        ):
            assert metric in run_page.stdout, metric
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "mlflow_ui_run.png"
        chromium(f"{base}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}", f"--screenshot={shot}")
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


# --------------------------------------------------------------------------- reading the Optuna study back
def test_importances_on_the_users_categorical_grid():
    """`-m method=full,lora batch_size=8,16,32` once failed with `setting an array element with a sequence`."""
    import optuna

    from ftsweep.report.rows import study_importances

    study = optuna.create_study(direction="maximize")
    dists = {
        "method": optuna.distributions.CategoricalDistribution(["full", "lora"]),
        "batch_size": optuna.distributions.CategoricalDistribution([8, 16, 32]),
    }
    for i, (method, bs) in enumerate((m, b) for m in ("full", "lora") for b in (8, 16, 32)):
        acc = 0.8 + (0.05 if method == "full" else 0.0) + 0.001 * bs + 0.0001 * i
        study.add_trial(
            optuna.trial.create_trial(params={"method": method, "batch_size": bs}, distributions=dists, value=acc)
        )
    importances = study_importances(study)
    assert set(importances) == {"method", "batch_size"}
    assert sum(importances.values()) == pytest.approx(1.0)  # normalised, as the report's bar chart shows them


class Parent:
    def __init__(self, tags):
        self.data = type("Data", (), {"tags": tags})()


def test_the_report_reads_a_study_whose_password_mlflow_never_saw(postgres_server, monkeypatch):
    """The server trusts loopback, so it accepts any password (and none): the one hidden in MLflow is not needed."""
    import optuna

    from ftsweep.report.rows import load_study
    from ftsweep.tracking import redact

    url = postgres_server().replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    optuna.create_study(study_name="s", storage=url).add_trial(optuna.trial.create_trial(value=1.0))
    parent = Parent({"optuna.storage": redact(url), "optuna.study_name": "s"})
    monkeypatch.delenv("FTSWEEP_SWEEP_STORAGE", raising=False)
    assert len(load_study(parent).get_trials()) == 1  # as PGPASSWORD or ~/.pgpass would supply it
    monkeypatch.setenv("FTSWEEP_SWEEP_STORAGE", url)
    assert len(load_study(parent).get_trials()) == 1  # the sweep's own report, with the real URL at hand
    assert len(load_study(parent, storage=url).get_trials()) == 1  # --storage


def test_a_sweep_over_models_is_summarised_per_method_and_model_against_full_on_the_same_model():
    rows = []
    for i, (model, method, acc, mem) in enumerate(
        [
            ("minilm", "full", 0.84, 900),
            ("minilm", "lora", 0.82, 600),
            ("mpnet_base", "full", 0.90, 3000),
            ("mpnet_base", "lora", 0.89, 1500),
        ]
    ):
        r = row(i, method, acc, mem, 100)
        r.model, r.group = model, f"{method} ({model})"
        rows.append(r)
    summary = {s["method"]: s for s in method_summary(rows)}
    assert sorted(summary) == ["full (minilm)", "full (mpnet_base)", "lora (minilm)", "lora (mpnet_base)"]
    assert summary["lora (mpnet_base)"]["accuracy_lost_vs_full"] == pytest.approx(0.01)
    assert summary["lora (mpnet_base)"]["memory_saved_vs_full_pct"] == pytest.approx(50.0)
    assert summary["lora (minilm)"]["memory_saved_vs_full_pct"] == pytest.approx(100 * (1 - 600 / 900))


def test_a_sweep_over_minilm_and_mpnet_base_compares_the_models(cli):
    """The model axis on the two real pre-trained models (MPNet-base from its five wheels, cached per session)."""
    proc = cli.sweep(
        "model=minilm,mpnet_base",
        "data.max_train_samples=16",
        "data.max_eval_samples=16",
        "data.max_length=32",
        "batch_size=8",
        "max_steps=1",
        "progress_bar=false",
        "save_model=none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (study_dir(cli.cwd) / "report.md").read_text()
    assert "full (minilm)" in report and "full (mpnet_base)" in report
    rows = [line for line in report.splitlines() if line.startswith("| full (")]
    assert len(rows) >= 2 and (study_dir(cli.cwd) / "accuracy_vs_memory.png").exists()


def test_the_memory_axis_is_the_training_state_on_a_cpu_and_says_so():
    from ftsweep.report.plots import memory_label

    cpu = row(1, "full", 0.9, 1500.0, 800.0)
    cpu.metrics["mem/footprint_mb"] = 600.0  # params + grads + optimizer state + saved activations
    old = row(2, "lora", 0.85, 1400.0, 700.0)  # a run logged before mem/footprint_mb existed
    assert (cpu.memory_mb, old.memory_mb) == (600.0, 1400.0)
    assert memory_label([cpu, old]) == "training state: params + grads + optimizer + saved activations"
    gpu = row(3, "full", 0.9, 900.0, 50.0)
    gpu.metrics.update({"mem/cuda_peak_allocated_mb": 900.0, "mem/footprint_mb": 900.0})
    assert memory_label([gpu]) == "CUDA peak allocated" and memory_label([old]) == "CPU RSS peak"
