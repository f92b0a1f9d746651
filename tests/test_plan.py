"""Plans and prescreening (issue 23): probes per cost shape, their cache, the predictions, plan.json, and trials
skipped before training. In-process on the tiny model (fast), then as a user runs them (`cli`, slow)."""

import json
import os
from pathlib import Path

import optuna
import pytest

from ftsweep import probe
from ftsweep.errors import ConfigError
from ftsweep.sweep import results
from ftsweep.sweep.definition import SweepDefinition, SweepSettings
from ftsweep.sweep.outcomes import Outcomes
from ftsweep.sweep.plan import wall_s
from ftsweep.sweep.prescreen import _enumerate, over_budget
from tests.conftest import error_lines, mlflow_db, query, toy_rows, write_csv

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def toy(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", toy_rows(48))


def base(toy: Path) -> list[str]:
    return ["model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "max_steps=2"]


# --------------------------------------------------------------------------- settings and arithmetic
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"plan": "yes"}, "hydra.sweeper.plan must be true or false, got 'yes'"),
        ({"prescreen": 1}, "hydra.sweeper.prescreen must be true or false, got 1"),
        ({"prescreen_margin": -0.1}, "hydra.sweeper.prescreen_margin is a fraction of the bound"),
        ({"prescreen_margin": 10}, "hydra.sweeper.prescreen_margin is a fraction of the bound"),
        ({"prescreen_margin": True}, "hydra.sweeper.prescreen_margin is a fraction of the bound"),
    ],
)
def test_bad_plan_settings_are_one_config_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        SweepSettings(**settings)


def test_over_budget_only_beyond_the_margin_and_only_for_predicted_metrics():
    predicted = {"mem/footprint_mb": 5210.0, "perf/step_time_ms": 90.0}
    bounds = {"mem/footprint_mb": 4000.0, "perf/step_time_ms": 100.0, "params/trainable": 1.0}
    assert over_budget(predicted, bounds, 0.15) == ["predicted 5,210 MB > 4,000 MB (mem/footprint_mb)"]
    assert over_budget(predicted, bounds, 0.35) == []  # 5,210 is within 4,000 x 1.35


def test_the_sweep_wall_time_follows_the_slots_claiming_in_order():
    assert wall_s([10, 6, 4, 2], 1) == 22
    assert wall_s([10, 6, 4, 2], 2) == 12  # 10 | 6 + 4 + 2
    assert wall_s([], 3) == 0


def test_evaluations_are_counted_as_the_loop_makes_them():
    assert probe._evaluations(steps=10, per_epoch=10, epochs=1, every=None) == 1
    assert probe._evaluations(steps=10, per_epoch=5, epochs=2, every=None) == 2
    assert probe._evaluations(steps=10, per_epoch=5, epochs=2, every=5) == 2  # at most once a step
    assert probe._evaluations(steps=7, per_epoch=5, epochs=3, every=3) == 4  # 3, 5, 6 and the end at 7


def test_a_search_is_enumerated_only_when_no_range_can_change_the_cost():
    def define(*arguments):
        return SweepDefinition.build(SweepSettings(sampler="tpe"), ["eval/accuracy"], list(arguments))

    assert _enumerate(define("method=full,lora", "lr=tag(log, interval(1e-5, 1e-3))")) == [
        {"method": "full", "lr": 1e-5},
        {"method": "lora", "lr": 1e-5},
    ]
    assert _enumerate(define("method=full,lora", "batch_size=int(interval(8, 64))")) is None


def test_a_skipped_trial_is_pruned_infeasible_and_tpe_learns_it():
    settings = SweepSettings(sampler="tpe", constraints={"mem/footprint_mb": 100, "params/trainable": 10})
    d = SweepDefinition.build(settings, ["eval/accuracy"], ["batch_size=8,16", "lr=tag(log, interval(1e-5, 1e-3))"])
    study = optuna.create_study(direction="maximize", sampler=d.make_sampler())
    trial = study.ask(fixed_distributions=d.space)
    Outcomes(d, settings, "").skip(
        study, trial, "predicted 150 MB > 100 MB (mem/footprint_mb)", {"mem/footprint_mb": 150}
    )
    [frozen] = study.trials
    assert frozen.state.name == "PRUNED" and frozen.user_attrs["skipped"].startswith("predicted 150 MB")
    assert list(frozen.system_attrs["constraints"]) == [50.0, 0.0]  # what TPE splits on: infeasible, by how much
    summary = results.summary(study, d)
    assert (summary["n_skipped"], summary["n_pruned"], summary["n_infeasible"]) == (1, 0, 1)


# --------------------------------------------------------------------------- probes (in-process)
def test_a_probe_is_cached_by_cost_shape_and_reused(tiny_cfg, monkeypatch):
    job = tiny_cfg("max_steps=3", "batch_size=8")
    found, measured = probe.probe(job)
    assert measured and found.train_state_mb > 0 and found.points and found.eval_batches >= 1
    assert len(found.widths) == -(-found.n_train // 8)  # one width per training batch of an epoch

    def never(*_args, **_kwargs):
        raise AssertionError("a cached shape is not measured again")

    monkeypatch.setattr(probe, "measure", never)
    same_shape = tiny_cfg("max_steps=30", "lr=1e-3", "seed=7", "batch_size=8")  # steps, lr and seed: same shape
    again, measured = probe.probe(same_shape)
    assert not measured and again == found
    assert probe.shape_key(tiny_cfg("batch_size=16")) != probe.shape_key(job)
    short, long = probe.predict(job, found), probe.predict(same_shape, found)
    assert (short.steps, long.steps) == (3, min(30, len(found.widths)))  # one epoch: its batches cap the steps
    assert long.train_s > short.train_s and long.memory_mb == short.memory_mb == found.train_state_mb


# --------------------------------------------------------------------------- as a user runs them
def _studies(cwd: Path) -> list[str]:
    db = cwd / "multirun" / "optuna.db"
    return optuna.get_all_study_names(f"sqlite:///{db}") if db.exists() else []


def test_plan_writes_plan_json_and_trains_nothing_then_prescreening_skips_with_its_probes(cli, toy):
    grid = [*base(toy), "batch_size=8,32"]
    plan = cli.sweep(*grid, "hydra.sweeper.plan=true")
    assert plan.returncode == 0, plan.stderr[-3000:]
    [path] = list((cli.cwd / "multirun").glob("*/plan.json"))
    content = json.loads(path.read_text())
    assert {"configurations", "total_wall_s", "probe_s"} <= set(content) and content["probe_s"] > 0
    assert [c["overrides"]["batch_size"] for c in content["configurations"]] == [32, 8]  # longest first
    for c in content["configurations"]:
        assert {"overrides", "step_ms", "trial_s", "memory_mb", "fits"} <= set(c) and c["fits"] is True
    assert content["total_wall_s"] >= sum(c["trial_s"] for c in content["configurations"]) * 0.99  # one slot
    assert "probes: 2 measured" in plan.stdout and "fits" in plan.stdout
    assert _studies(cli.cwd) == [] and query(mlflow_db(), "select run_uuid from runs") == []  # no trial, no run
    assert not list(cli.cwd.glob("multirun/*/trial_*"))  # no model either

    # A bound between the two predictions: batch_size=32 is skipped before training, batch_size=8 trains.
    small, large = sorted(c["memory_mb"] for c in content["configurations"])
    sweep = cli.sweep(
        *grid,
        "hydra.sweeper.prescreen_margin=0",
        f"hydra.sweeper.constraints={{mem/footprint_mb: {(small + large) / 2}}}",
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "probed a new cost shape" not in sweep.stderr  # the plan's probes, reused
    [name] = _studies(cli.cwd)
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{cli.cwd / 'multirun' / 'optuna.db'}").trials
    [skipped] = [t for t in trials if t.params["batch_size"] == 32]
    assert skipped.state.name == "PRUNED" and skipped.user_attrs["skipped"].startswith("predicted ")
    assert skipped.user_attrs["constraint_values"][0] > 0 and "mlflow_run_id" not in skipped.user_attrs  # untrained
    assert len(trials) == 2 and query(mlflow_db(), "select count(*) from runs")[0][0] == 2  # parent + one trial
    report = json.loads((cli.cwd / "multirun" / name / "report.json").read_text())
    assert report["not_trained"] == [
        {"trial": skipped.number, "state": "SKIPPED", "reason": skipped.user_attrs["skipped"]}
    ]


def test_a_search_whose_whole_space_is_over_budget_ends_in_one_line(cli, toy):
    proc = cli.sweep(
        *base(toy),
        "batch_size=8,16",
        "lr=tag(log, interval(1e-4, 1e-2))",
        "hydra.sweeper.constraints={mem/train_state_mb: 1}",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = error_lines(proc.stderr)
    assert "every configuration of the search space is predicted over budget (predicted " in line
    assert _studies(cli.cwd) == []


def test_bad_plan_values_on_the_command_line_are_one_line_exit_2(cli, toy):
    proc = cli.sweep(*base(toy), "batch_size=8,16", "hydra.sweeper.prescreen_margin=-1")
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1
    assert "prescreen_margin is a fraction of the bound" in error_lines(proc.stderr)[0]


@pytest.mark.slow
def test_plan_then_run_on_the_real_minilm(cli):
    """Plan the user's kind of grid on the embedded MiniLM and real IMDB, then run it: each trial ran the steps and
    evaluations its plan said, on the memory axis the plan predicted (exact on a CPU, so within 10 %)."""
    import mlflow

    grid = [
        "method=full,lora",
        "batch_size=8",
        "data.max_train_samples=16",
        "data.max_eval_samples=16",
        "data.max_length=64",
        "progress_bar=false",
        "save_model=none",
    ]
    plan = cli.sweep(*grid, "hydra.sweeper.plan=true")
    assert plan.returncode == 0, plan.stderr[-3000:]
    [path] = list((cli.cwd / "multirun").glob("*/plan.json"))
    planned = {c["overrides"]["method"]: c for c in json.loads(path.read_text())["configurations"]}
    assert sorted(planned) == ["full", "lora"] and all(c["fits"] for c in planned.values())
    sweep = cli.sweep(*grid)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    trials = {r.data.tags["method"]: r.data.metrics for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(trials) == ["full", "lora"]
    for method, c in planned.items():
        ran = trials[method]
        assert c["steps"] == ran["train/steps"] == 2  # 16 reviews in batches of 8, one epoch
        assert c["memory_mb"] == pytest.approx(ran["mem/footprint_mb"], rel=0.10), method
    assert planned["lora"]["memory_mb"] < planned["full"]["memory_mb"]  # LoRA's saving, predicted before training
