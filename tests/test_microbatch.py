"""micro_batch_size (issue 23, part 3): batch_size stays the batch the optimizer sees, the forward passes get
smaller. The refusals, the split of a batch, the loss history against one pass, and `auto` under a budget, all
in-process on the tiny model."""

import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from ftsweep import microbatch, probe
from ftsweep.config import validate
from ftsweep.errors import ConfigError
from ftsweep.loop import LoopSettings, micro_batches
from ftsweep.train import train
from tests.conftest import compose_cfg, run_statuses


# --------------------------------------------------------------------------- the config
@pytest.mark.parametrize(
    "overrides, message",
    [
        ("batch_size=8 micro_batch_size=3", "micro_batch_size=3 does not divide batch_size=8; choose one of 1, 2, 4"),
        ("batch_size=8 micro_batch_size=16", "micro_batch_size=16 is above batch_size=8"),
        ("batch_size=8 micro_batch_size=0", "micro_batch_size must be a whole number >= 1, auto or null, got '0'"),
        ("micro_batch_size=big", "micro_batch_size must be a whole number >= 1, auto or null, got 'big'"),
        ("batch_size=8 micro_batch_size=2 grad_accum_steps=2", "leave grad_accum_steps=2 at 1"),
        ("micro_batch_size=auto grad_accum_steps=4", "leave grad_accum_steps=4 at 1"),
        ("memory_budget_mb=0", r"memory_budget_mb must be > 0 \(MB\) or null, got 0"),
        (
            "batch_size=8 micro_batch_size=1 distributed.nproc=2",
            "micro_batch_size=1 is split across distributed.nproc=2 processes: it must be a multiple of 2; "
            "choose one of 2, 4, 8",
        ),
    ],
)
def test_each_bad_setting_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        validate(compose_cfg(*overrides.split()))
    assert "\n" not in str(caught.value)


def test_unset_changes_nothing_and_set_keeps_the_logical_batch():
    tc = validate(compose_cfg("batch_size=8", "grad_accum_steps=2"))
    assert tc.micro_batch() is None and tc.forward_batch_size == 8
    assert LoopSettings.of(tc, 10, 2).micro_batch_size is None and LoopSettings.of(tc, 10, 2).grad_accum_steps == 2
    tc = validate(compose_cfg("batch_size=8", "micro_batch_size=4", "distributed.nproc=2"))
    assert tc.forward_batch_size == 4
    # the loader still gives batches of 8: each rank's share of 4 goes through in passes of 4 / 2
    assert LoopSettings.of(tc, 10, 2).micro_batch_size == 2 and LoopSettings.of(tc, 10, 2).grad_accum_steps == 1


def test_a_batch_splits_into_trimmed_parts_whose_weights_make_its_mean():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]])
    batch = {"input_ids": mask * 7, "attention_mask": mask, "labels": torch.arange(5)}
    parts = micro_batches(batch, 2)
    assert [p["labels"].tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    assert [p["input_ids"].shape[1] for p in parts] == [4, 3, 2]  # each pads only to its own longest row
    assert [float(p["loss_weight"]) for p in parts] == pytest.approx([0.4, 0.4, 0.2])
    # a distributed rank's share keeps its own weight on top
    shared = micro_batches({**batch, "loss_weight": torch.tensor(1.5)}, 2)
    assert sum(float(p["loss_weight"]) for p in shared) == pytest.approx(1.5)
    assert micro_batches(batch, 8) == [batch] and micro_batches(batch, None) == [batch]


# --------------------------------------------------------------------------- training
def losses(run_id: str) -> list[float]:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


def last_run_id() -> str:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"])
    return runs[0].info.run_id


def test_accumulated_micro_batches_train_as_the_whole_batch_does(tiny_cfg):
    """batch_size=8 in forward passes of 2 against batch_size=8 in one pass: the same loss at every step and
    the same final eval, within float rounding (the parts' sums are added in another order).

    Dropout is off (model.dropout=0): its masks are drawn per forward pass, so four passes of 2 draw other masks
    than one of 8 and the runs would differ by design, not by a fault. Everything else is the same: the loader
    forms the same batches of 8 in both runs (micro_batch_size splits them, it does not change them)."""
    common = ("model.dropout=0.0", "batch_size=8", "max_steps=6", "log_every_steps=1", "save_model=none")
    whole = train(tiny_cfg(*common))
    whole_losses = losses(last_run_id())
    split = train(tiny_cfg(*common, "micro_batch_size=2"))
    split_losses = losses(last_run_id())
    assert len(whole_losses) == len(split_losses) == 6
    assert split_losses == pytest.approx(whole_losses, rel=1e-4)
    assert split["eval/loss"] == pytest.approx(whole["eval/loss"], rel=1e-4)
    assert whole["perf/effective_batch_size"] == split["perf/effective_batch_size"] == 8
    assert (whole["perf/micro_batch_size"], split["perf/micro_batch_size"]) == (8, 2)  # batch_size when unset
    assert whole["train/steps"] == split["train/steps"] == 6
    # the passes really were smaller: a quarter of the batch saved for backward at a time
    assert split["mem/activations_saved_mb"] < 0.5 * whole["mem/activations_saved_mb"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_run(last_run_id()).data.metrics["perf/micro_batch_size"] == 2


# --------------------------------------------------------------------------- auto
def test_auto_on_a_cpu_without_a_budget_is_one_line_before_anything_runs(tiny_cfg):
    with pytest.raises(ConfigError, match="micro_batch_size=auto on a CPU needs memory_budget_mb"):
        train(tiny_cfg("device=cpu", "micro_batch_size=auto"))
    assert run_statuses() == []


def test_auto_searches_the_divisors_from_the_largest_and_keeps_the_first_that_fits():
    seen = []

    def memory_of(size):
        seen.append(size)
        return 10.0 * size

    assert microbatch.choose(microbatch.candidates(32, 1), 100.0, memory_of) == 8  # 80 <= 100 x 0.9 < 160
    assert seen == [32, 16, 8]
    assert microbatch.candidates(12, 2) == [12, 6, 4, 2]  # each rank gets a whole share
    with pytest.raises(ConfigError, match=r"even 1 example\(s\) per forward pass needs 10 MB, above the 5 MB"):
        microbatch.choose([4, 2, 1], 5.0, memory_of)


def test_auto_fits_a_tight_budget_on_the_tiny_model_and_reuses_the_cached_probes(tiny_cfg, monkeypatch):
    """The budget sits between the probed memory of passes of 2 and of 4 examples: auto picks 2, trains with
    the logical batch of 8, and a second fit measures nothing (each candidate's probe is cached by its shape)."""
    base = ("device=cpu", "model.dropout=0.0", "batch_size=8", "max_steps=2", "save_model=none")
    memory = {m: microbatch.probed_memory_mb(tiny_cfg(*base), m, "cpu") for m in (4, 2)}
    assert memory[4] > memory[2]  # the saved activations grow with the micro-batch
    budget = (memory[2] + (memory[4] - memory[2]) / 2) / (1 - microbatch.MARGIN)
    cfg = tiny_cfg(*base, "micro_batch_size=auto", f"memory_budget_mb={budget}")

    assert microbatch.fitted(cfg).micro_batch_size == 2  # 8 probed now, 4 and 2 from the cache

    def no_probe(*args, **kwargs):
        raise AssertionError("a probe was measured again")

    with monkeypatch.context() as patched:
        patched.setattr(probe, "measure", no_probe)
        assert microbatch.fitted(cfg).micro_batch_size == 2  # from the cache alone
    metrics = train(cfg)
    assert metrics["perf/micro_batch_size"] == 2 and metrics["perf/effective_batch_size"] == 8


def test_auto_when_even_one_does_not_fit_stops_before_any_run(tiny_cfg):
    with pytest.raises(ConfigError, match="micro_batch_size=auto: even 1 example") as caught:
        train(tiny_cfg("device=cpu", "batch_size=1", "micro_batch_size=auto", "memory_budget_mb=0.01"))  # 1 probe
    assert "\n" not in str(caught.value)
    assert run_statuses() == []
