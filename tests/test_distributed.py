"""distributed.nproc: one run on N processes. The sharding arithmetic in-process (fast); then real gloo
process groups on loopback, started by train() as a user's run starts them (slow)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ftsweep.distributed import shard
from ftsweep.errors import ConfigError
from ftsweep.preflight import check
from ftsweep.train import train
from tests.conftest import logged_losses, mlflow_db, query, wait_for
from tests.test_reliability import long_run, start


def batch(n: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.arange(n * 3).view(n, 3),
        "attention_mask": torch.ones(n, 3, dtype=torch.long),
        "labels": torch.arange(n),
    }


@pytest.mark.parametrize("n, world", [(8, 2), (7, 2), (5, 3), (2, 4)])
def test_the_ranks_shares_make_up_the_global_batch_and_their_weights_its_mean(n, world):
    shares = [shard(batch(n), rank, world) for rank in range(world)]
    counted = [s for s in shares if s["loss_weight"] > 0]
    assert torch.equal(torch.cat([s["labels"] for s in counted]), torch.arange(n))  # contiguous, in order, once
    # DDP averages the ranks' weighted mean losses: with per-example losses l_i that is the global mean.
    losses = torch.rand(n)
    ddp = sum(s["loss_weight"] * losses[s["labels"]].mean() for s in shares) / world
    assert torch.isclose(ddp, losses.mean())
    assert all(s["labels"].numel() >= 1 for s in shares)  # an empty share still steps, with weight 0


def test_settings_a_distributed_run_cannot_honour_are_refused_before_it_starts(tiny_cfg):
    with pytest.raises(ConfigError, match="batch_size=2 is the global batch.*at least 4"):
        check(tiny_cfg("distributed.nproc=4", "batch_size=2"), deep=False)
    with pytest.raises(ConfigError, match="checkpoints"):
        check(tiny_cfg("distributed.nproc=2", "checkpoint_every_steps=5"), deep=False)
    with pytest.raises(ConfigError, match="distributed.nproc must be >= 1"):
        check(tiny_cfg("distributed.nproc=0"), deep=False)


def client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # the test's own store, whatever mlflow last set


def history(run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client().get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_run_as_one_process_with_the_same_global_batch(tiny_cfg):
    """Dropout off, so that the only difference left is the order of float sums in the gradient all-reduce."""
    common = (
        "model.dropout=0",
        "batch_size=8",
        "max_steps=8",
        "log_every_steps=1",
        "eval_every_steps=4",
        "save_model=none",
    )
    single = train(tiny_cfg(*common, "run_name=one"))
    double = train(tiny_cfg(*common, "run_name=two", "distributed.nproc=2"))
    runs = {r.info.run_name: r for r in client().search_runs([client().get_experiment_by_name("local").experiment_id])}
    one, two = history(runs["one"].info.run_id, "train/loss"), history(runs["two"].info.run_id, "train/loss")
    assert len(one) == len(two) == 8
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5, (one, two)  # the stated tolerance
    assert history(runs["one"].info.run_id, "eval/accuracy") == history(runs["two"].info.run_id, "eval/accuracy")
    assert abs(single["eval/loss"] - double["eval/loss"]) < 1e-5
    # Every rank's examples count once; memory per rank and in total.
    assert double["perf/samples_per_s"] * double["perf/train_time_s"] == pytest.approx(8 * 8)
    assert double["mem/peak_mb_rank0"] > 0 and double["mem/peak_mb_rank1"] > 0
    assert double["mem/peak_mb_all_ranks"] == pytest.approx(double["mem/peak_mb_rank0"] + double["mem/peak_mb_rank1"])
    assert "mem/peak_mb_rank0" not in single


@pytest.mark.slow
def test_a_stop_decided_on_rank_0_reaches_every_rank(tiny_cfg):
    """Early stopping decides after rank 0's evaluation; a helper that missed it would wait for the next
    step's all-reduce until the timeout, and train() would report it as failed."""
    metrics = train(
        tiny_cfg(
            "batch_size=8",
            "max_steps=200",
            "eval_every_steps=1",
            "early_stopping.patience=1",
            "early_stopping.min_delta=1",
            "distributed.nproc=2",
            "save_model=none",
        )
    )
    assert metrics["train/stopped_early"] == 1 and metrics["train/steps"] < 200


@pytest.mark.slow
def test_sigterm_to_rank_0_stops_every_rank_and_ends_the_run_killed(cli, tmp_path):
    proc = start(cli, *long_run(tmp_path), "batch_size=8", "distributed.nproc=2")
    db = mlflow_db()
    wait_for(lambda: logged_losses(db) >= 2, "the distributed run to log")
    helpers = _helpers_of(proc.pid)
    assert len(helpers) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert [s for (s,) in query(db, "select status from runs")] == ["KILLED"]
    wait_for(lambda: not Path(f"/proc/{helpers[0]}").exists(), "the helper rank to exit", timeout=30)


def _helpers_of(pid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "ftsweep.recipe"], capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.slow
def test_a_helper_that_exits_non_zero_after_the_results_are_in_is_a_tag_not_a_failure(tiny_cfg, monkeypatch):
    """The teardown race (a helper aborting with -6 once training had finished) failed finished runs; now
    rank 0's results stand and the tag says what the helper did. The race itself is forced here."""
    from ftsweep import distributed

    real_stop = distributed.stop

    def aborting_helper(group, wait_s=60.0, finished=True):
        codes = real_stop(group, wait_s, finished)  # the real teardown, then the exit the race produced
        return {**codes, 1: -6} if finished else codes

    monkeypatch.setattr(distributed, "stop", aborting_helper)
    metrics = train(tiny_cfg("batch_size=8", "max_steps=2", "distributed.nproc=2", "save_model=none"))
    [run] = client().search_runs([client().get_experiment_by_name("local").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["ftsweep.helper_exit"] == "rank 1 exited with code -6"
    assert run.data.metrics["eval/accuracy"] == metrics["eval/accuracy"]


@pytest.mark.slow  # starts (tiny) processes
def test_stop_reports_each_helper_exit_and_stops_one_that_hangs(tmp_path):
    from ftsweep import distributed

    helpers = [
        subprocess.Popen(["sh", "-c", "exit 0"]),
        subprocess.Popen(["sh", "-c", "kill -ABRT $$"]),
        subprocess.Popen(["sleep", "60"]),
    ]
    group = distributed.Group(0, 4, torch.device("cpu"), helpers)
    assert distributed.stop(group, wait_s=1) == {2: -6, 3: -15}  # the hanging one was terminated


@pytest.mark.slow
def test_repeated_two_process_runs_on_a_loaded_cpu_all_finish(tiny_cfg, monkeypatch):
    """1 in 5 of these runs had ended FAILED with "rank 1 exited with code -6" on this 2-core machine while
    other work ran beside it. 10 runs beside a busy process miss a 1-in-5 flake with probability 0.8^10 = 11 %;
    `make chaos` repeats them longer. The real teardown here: no helper may exit non-zero."""
    from ftsweep import distributed

    exits: list[dict[int, int]] = []
    real_stop = distributed.stop
    monkeypatch.setattr(distributed, "stop", lambda *a, **k: exits.append(real_stop(*a, **k)) or exits[-1])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for seed in range(10):
            train(tiny_cfg("batch_size=8", "max_steps=1", "distributed.nproc=2", "save_model=none", f"seed={seed}"))
    finally:
        busy.kill()
        busy.wait()
    runs = client().search_runs([client().get_experiment_by_name("local").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] * 10
    assert exits == [{}] * 10 and not any("ftsweep.helper_exit" in r.data.tags for r in runs)
