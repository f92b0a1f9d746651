"""Sweeps: the definition, storage and results modules in-process (fast), then sweeps as a user runs them,
`python -m ftsweep -m ...` subprocesses on the tiny model with the test's own Optuna storage and MLflow store."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution as C
from optuna.distributions import FloatDistribution as F
from optuna.distributions import IntDistribution as I

from ftsweep.errors import ConfigError
from ftsweep.sweep import results
from ftsweep.sweep.definition import SweepDefinition, SweepSettings, canonical, directions_for
from ftsweep.sweep.storage import open_storage
from ftsweep.sweep.trial_link import PARENT_RUN_ATTR
from tests.conftest import REPO, logged_losses, pause_when, query, run_statuses, toy_rows, wait_for, write_csv

optuna.logging.set_verbosity(optuna.logging.WARNING)
FIXTURE_2_10 = REPO / "tests" / "fixtures" / "optuna_2_10.db"  # written by ftsweep 0.1 on optuna 2.10.1
# The two sweeps that made it, from a folder holding toy.csv (tests.conftest.toy_rows(48)):
OLD_GRID = [
    "model=tiny",
    "data=local",
    "data.train_file=toy.csv",
    "progress_bar=false",
    "max_steps=2",
    "batch_size=8,16",
]
OLD_TPE = [*OLD_GRID[:-1], "lr=tag(log, interval(1e-5, 1e-3))", "hydra.sweeper.n_trials=2"]


@pytest.fixture
def toy(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", toy_rows(48))


def base(toy: Path) -> list[str]:
    return ["model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "max_steps=2"]


def define(*arguments: str, objectives=("eval/accuracy",), run_seed=42, **settings) -> SweepDefinition:
    return SweepDefinition.build(SweepSettings(**settings), list(objectives), list(arguments), run_seed=run_seed)


def studies(cwd: Path, storage: str | None = None) -> list[optuna.Study]:
    storage = storage or f"sqlite:///{cwd / 'multirun' / 'optuna.db'}"
    return [optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage)]


def mlflow_runs(experiment: str = "local"):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ftsweep.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


# --------------------------------------------------------------------------- the definition
def test_the_same_sweep_always_names_the_same_study_and_any_change_names_another():
    a = define("lr=1,2", "model=tiny")
    assert a.study_name == define("model=tiny", "lr=1,2").study_name  # order of arguments does not matter
    assert a.study_name != define("lr=1,3", "model=tiny").study_name
    assert a.study_name != define("lr=1,2", "model=minilm").study_name
    assert a.study_name != define("lr=1,2", "model=tiny", constraints={"mem/peak_mb": 3000}).study_name
    assert define("lr=1,2", study_name="mine").study_name == "mine"


def test_study_names_come_from_plain_data_not_from_optunas_repr():
    assert canonical(F(1e-5, 1e-3, log=True)) == {"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "step": None}
    assert canonical(I(1, 9, step=2)) == {"type": "int", "low": 1, "high": 9, "log": False, "step": 2}
    assert canonical(C([8, 16])) == {"choices": [8, 16]}


def test_legacy_names_match_the_studies_ftsweep_0_1_wrote_on_optuna_2_10():
    with sqlite3.connect(f"file:{FIXTURE_2_10}?mode=ro", uri=True) as con:
        names = [name for (name,) in con.execute("select study_name from studies order by study_id")]
    grid, tpe = define(*OLD_GRID), define(*OLD_TPE[:-1])  # hydra.* overrides never reach the sweeper's arguments
    assert [grid.legacy_study_name, tpe.legacy_study_name] == names == ["ftsweep-bc2261723d", "ftsweep-f720719a63"]
    assert grid.study_name not in names  # today's names are different, hence the fallback


def test_grid_only_for_choice_lists_and_directions_from_objective_names():
    assert len(define("a=1,2", "b=x,y,z").grid) == 6
    mixed = define("a=1,2", "lr=tag(log, interval(1e-5, 1e-3))")
    assert mixed.grid is None and mixed.sampler == "tpe" and mixed.n_trials == 20
    assert define("a=1,2", "b=3,4", sampler="random").grid is None
    assert directions_for(["eval/accuracy", "mem/peak_mb", "eval/f1_macro"]) == ["maximize", "minimize", "maximize"]


def test_the_command_line_wins_over_the_sweepers_params_whether_it_sweeps_or_fixes():
    swept = define("batch_size=8,32", params={"batch_size": "16", "lr": "1e-4,2e-4"})
    assert swept.space["batch_size"] == C([8, 32]) and "batch_size" not in swept.fixed  # was silently 16
    fixed = define("lr=1e-4", "batch_size=8,16", params={"lr": "tag(log, interval(1e-5, 1e-3))"})
    assert fixed.fixed["lr"] == "0.0001" and "lr" not in fixed.space


def test_a_key_given_twice_takes_the_later_value_and_says_so(caplog):
    with caplog.at_level("WARNING", logger="ftsweep.sweep"):
        d = define("a=1,2", "max_steps=2", "a@pkg=5", "max_steps=6,8", "a=3")
    assert d.fixed == {"a": "3", "a@pkg": "5"} and d.space == {"max_steps": C([6, 8])}
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "max_steps is given twice: max_steps=6,8 replaces max_steps=2 (the later one wins)",
        "a is given twice: a=3 replaces a=1,2 (the later one wins)",
    ]


def test_a_hydra_range_keeps_its_exclusive_end():
    assert define("r=range(1,5)", "x=1,2").space["r"] == I(1, 4, step=1)


@pytest.mark.parametrize(
    "settings, arguments, message",
    [
        ({"sampler": "bayes"}, ["a=1,2"], "hydra.sweeper.sampler must be one of auto, grid, tpe, gp"),
        ({"pruner": "early"}, ["a=1,2"], "hydra.sweeper.pruner must be one of none, median"),
        ({"storage": "multirun/optuna.db"}, ["a=1,2"], "hydra.sweeper.storage must be a URL"),
        ({"n_trials": 0}, ["a=1,2"], "hydra.sweeper.n_trials must be >= 1"),
        ({"constraints": {"mem/peak_mb": "lots"}}, ["a=1,2"], "constraints.mem/peak_mb must be a number"),
        ({}, ["a=1"], "a sweep (-m) needs at least one swept key"),
        ({}, ["a=1,2", "a=3"], "^a sweep (-m) needs at least one swept key"),  # the later a=3 wins
        ({}, ["a=1,2", "~b"], "^a sweep cannot delete a key (~b); set it to a value instead"),
        ({"sampler": "grid"}, ["lr=tag(log, interval(1e-5, 1e-3))"], "sampler=grid needs every swept key"),
        ({}, ["lr=tag(log, interval(0, 1e-3))"], "cannot read the sweep's search space"),
        ({"direction": "up"}, ["a=1,2"], "hydra.sweeper.direction must be maximize/minimize"),
        ({"pruner": "median"}, ["a=1,2"], "pruning needs an eval/ objective"),
        ({"repeats": 0}, ["a=1,2"], "hydra.sweeper.repeats must be an integer >= 1 (runs of each configuration"),
        ({"tolerance": -1}, ["a=1,2"], "hydra.sweeper.tolerance is in accuracy points, 0 <= tolerance < 100"),
        ({"tolerance": 100}, ["a=1,2"], "hydra.sweeper.tolerance is in accuracy points"),
        ({"repeats": -3}, ["a=1,2"], "hydra.sweeper.repeats must be an integer >= 1"),
        ({"repeats": 2.5}, ["a=1,2"], "hydra.sweeper.repeats must be an integer >= 1"),
        ({"repeats": "3"}, ["a=1,2"], "hydra.sweeper.repeats must be an integer >= 1"),
        ({"repeats": 2}, ["a=1,2", "seed=1,2"], "hydra.sweeper.repeats=2 and a swept seed both set"),
        ({}, ["a=1,2", "seed=interval(1, 5)"], "a swept seed lists its replicates' seeds (seed=1,2,3"),
        ({}, ["a=1,2", "seed=a,b"], "a swept seed lists its replicates' seeds"),
        ({"repeats": 2}, ["a=1,2", "seed=x"], "seed must be an integer, got 'x'"),
        ({"sampler": "tpe"}, ["seed=1,2"], "hydra.sweeper.sampler=tpe has nothing to search: only the seed varies"),
        (
            {"constraints": {"mem/peak": 3000}},
            ["a=1,2"],
            "hydra.sweeper.constraints: mem/peak is not a metric a run logs",
        ),
    ],
)
def test_bad_sweep_settings_are_one_config_error(settings, arguments, message):
    objectives = ["mem/peak_mb"] if settings.get("pruner") == "median" else ["eval/accuracy"]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SweepDefinition.build(SweepSettings(**settings), objectives, arguments)


# --------------------------------------------------------------------------- replicates (hydra.sweeper.repeats)
def seeds_by_config(trials) -> dict[str, list[int]]:
    """Each configuration (a trial's parameters but its seed) and the seeds it ran with, in trial order."""
    from ftsweep.sweep.claims import key

    found: dict[str, list[int]] = {}
    for t in trials:
        found.setdefault(key({k: v for k, v in t.params.items() if k != "seed"}), []).append(t.params["seed"])
    return found


def test_repeats_run_every_grid_point_with_each_seed_and_say_so():
    d = define("batch_size=8,16,32", "method=full,lora", repeats=3)
    assert d.seeds == (42, 43, 44) and len(d.grid) == d.n_trials == 18
    # A point's seeds one after the other, the largest point first (a grid's order).
    assert list(d.grid[:4]) == [
        *({"batch_size": 32, "method": "full", "seed": s} for s in (42, 43, 44)),
        {"batch_size": 32, "method": "lora", "seed": 42},
    ]
    assert d.plan() == "grid of 6 points × 3 seeds = 18 trials; seeds 42, 43, 44"
    assert {p["seed"] for p in d.probe_points()} == {42, 43, 44}  # every seed checked before the sweep starts
    assert define("a=1,2", run_seed=7, repeats=2).seeds == (7, 8)  # the run's seed is the first
    assert define("a=1,2", "seed=7", repeats=2).seeds == (7, 8) and "seed" not in define("a=1,2", "seed=7").space
    assert define("a=1,2", "seed=7", repeats=2).fixed == {}
    only = define(repeats=3)  # one configuration, the run's own, with three seeds: a sweep of its own
    assert only.grid == ({"seed": 42}, {"seed": 43}, {"seed": 44}) and only.plan().startswith("grid of 1 points")
    swept = define("a=1,2", "seed=5,1,5,9")  # a swept seed is read as the seeds of replicates, each once
    assert swept.seeds == (5, 1, 9) and swept.n_trials == 6
    assert swept.plan() == "grid of 2 points × 3 seeds = 6 trials; seeds 5, 1, 9"
    assert define("a=1,2", "seed=range(1,4)").seeds == (1, 2, 3)
    assert define("a=1,2", repeats=8).plan().endswith("seeds 42, 43, ..., 49")


def test_repeats_name_their_own_study_and_one_repeat_names_the_study_it_always_did():
    grid = ("batch_size=8,16", "method=full,lora")
    assert define(*grid).study_name == define(*grid, repeats=1).study_name == "ftsweep-a08045c324"  # before repeats
    names = {define(*grid, repeats=n).study_name for n in (1, 2, 3)} | {define(*grid, run_seed=7, repeats=2).study_name}
    assert len(names) == 4  # another count or first seed is another study
    # `seed=1,2,3` names the study it did before repeats; repeats=3 from seed 1 is that same study.
    assert define("batch_size=8,16", "seed=1,2,3").study_name == "ftsweep-7e08a5215d"
    assert define("batch_size=8,16", "seed=1", repeats=3).study_name == "ftsweep-7e08a5215d"


def test_each_grid_point_runs_once_with_each_seed_across_workers_and_reruns(tmp_path):
    from ftsweep.sweep.claims import Claims

    d = define("batch_size=4,8", "method=full,lora", repeats=2)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    workers = [Claims(d, SweepSettings(), url, open_storage(url)) for _ in range(2)]  # two sweeps on one study
    study = optuna.create_study(storage=workers[0].storage, direction="maximize")
    claimed = [workers[i % 2].claim(study) for i in range(3)]
    workers[0].fail_for_rerun(study, study.get_trials()[1], "interrupted")  # its point and seed run again
    while (trial := workers[len(claimed) % 2].claim(study)) is not None:
        claimed.append(trial)
    for trial in claimed:
        if study.get_trials()[trial.number].state.name == "RUNNING":
            study.tell(trial, 0.5)
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert sorted(map(sorted, seeds_by_config(done).values())) == [[42, 43]] * 4 and len(done) == 8
    assert [t.user_attrs["replicate"] for t in done[:3]] == [0, 0, 1]  # trial 1's point and seed ran next, as trial 3
    assert workers[0].claim(study) is None


def test_two_workers_opening_one_study_at_once_share_one_parent_run(tmp_path, tiny_cfg, monkeypatch):
    import threading

    from ftsweep.sweep import study as study_mod
    from ftsweep.tracking import Tracker

    start = Tracker.start

    def slow_start(self, *args, **kwargs):  # widen the window between reading the study and recording the run
        time.sleep(0.5)
        return start(self, *args, **kwargs)

    monkeypatch.setattr(Tracker, "start", slow_start)
    d, url, config = define("batch_size=4,8"), f"sqlite:///{tmp_path / 'o.db'}", tiny_cfg()
    _, study = study_mod.open_study(d, url)
    opened: list[str] = []

    def worker() -> None:
        opened.append(study_mod.open_parent_run(study, d, url, config, tmp_path).run_id)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 2 and opened[0] == opened[1] == study.user_attrs[PARENT_RUN_ATTR]


def test_a_sampler_proposes_configurations_and_their_other_seeds_run_with_its_parameters(tmp_path):
    from ftsweep.sweep.claims import Claims

    d = define("lr=tag(log, interval(1e-5, 1e-3))", "batch_size=8,16", sampler="gp", n_trials=8, repeats=3)
    assert d.plan() == (
        "gp: 2 configurations × 3 seeds + 1 with 2 of its 3 seeds = 8 trials, hydra.sweeper.n_trials counting "
        "trials, not configurations; seeds 42, 43, 44"
    )
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(storage=open_storage(url), direction="maximize")

    def value(trial) -> float:  # each replicate its own
        return trial.params["lr"] * 1e3 + trial.params["seed"] / 100

    claims = Claims(d, SweepSettings(), url, open_storage(url))
    for _ in range(4):  # the first configuration with its 3 seeds, the second with 1
        trial = claims.claim(study)
        study.tell(trial, value(trial))
    # Killed with one trial in flight (failed for a rerun, as an interrupt does) and a claim cut off before its
    # `ask`, which had queued the next replicate. Then the same command again.
    in_flight = claims.claim(study)
    claims._enqueue_replicate(study, study.get_trials())
    claims.fail_for_rerun(study, study.get_trials()[in_flight.number], "interrupted")
    assert [t.state.name for t in study.get_trials()].count("WAITING") == 2
    claims = Claims(d, SweepSettings(), url, open_storage(url))
    while (trial := claims.claim(study)) is not None:
        study.tell(trial, value(trial))
    counted = [t for t in study.get_trials() if results.counts(t)]
    assert len(counted) == 8 and all(t.state.name == "COMPLETE" for t in counted)
    assert sorted(map(sorted, seeds_by_config(counted).values())) == [[42, 43], [42, 43, 44], [42, 43, 44]]
    assert all(t.user_attrs["replicate"] == t.params["seed"] - 42 for t in counted)
    # The sampler models configurations: the seed is no dimension of the space it samples in.
    sampler = d.make_sampler(len(study.trials))
    assert set(sampler.infer_relative_search_space(study, counted[0])) == {"lr", "batch_size"}


# --------------------------------------------------------------------------- configs written for hydra-optuna-sweeper
def plugin_node(**sweeper) -> SweepSettings:
    """`hydra.sweeper` as Hydra composes it from ftsweep's schema with a plugin-shaped YAML merged on top."""
    from omegaconf import OmegaConf

    from hydra_plugins.ftsweep_sweeper.sweeper import _node

    return SweepSettings.from_config(OmegaConf.merge(_node(), sweeper))


def test_a_sampler_node_in_the_plugins_shape_means_the_same_sampler_and_seed():
    settings = plugin_node(sampler={"_target_": "optuna.samplers.TPESampler", "seed": 123})
    assert (settings.sampler, settings.seed) == ("tpe", 123)
    assert plugin_node(sampler={"_target_": "optuna.samplers.RandomSampler"}).seed == 42  # no seed: ftsweep's
    grid = plugin_node(sampler={"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": None})
    assert grid.sampler == "grid"
    nsga = plugin_node(sampler={"_target_": "hydra_plugins.hydra_optuna_sweeper._impl.create_nsgaii_sampler"})
    assert nsga.sampler == "nsga2"
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from ftsweep.config import CONF_DIR
    from ftsweep.errors import describe_config_error

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):  # as the command line writes it
        cfg = compose(
            "config",
            ["+hydra.sweeper.sampler._target_=optuna.samplers.TPESampler", "+hydra.sweeper.sampler.seed=7"],
            return_hydra_config=True,
        )
        with pytest.raises(HydraException) as err:  # without +: Hydra's struct check, then ftsweep's line
            compose("config", ["hydra.sweeper.sampler._target_=optuna.samplers.TPESampler"], return_hydra_config=True)
    settings = SweepSettings.from_config(cfg.hydra.sweeper)
    assert (settings.sampler, settings.seed) == ("tpe", 7)
    line = describe_config_error(err.value)
    assert "hydra.sweeper.sampler=tpe" in line and "+hydra.sweeper.sampler._target_" in line and "\n" not in line


@pytest.mark.parametrize(
    "sampler, message",
    [
        (
            {"_target_": "optuna.samplers.CmaEsSampler"},
            "sampler._target_=optuna.samplers.CmaEsSampler has no equivalent "
            "in ftsweep's sweeper; use hydra.sweeper.sampler=auto|grid|tpe",
        ),
        (
            {"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 10},
            "sampler.n_startup_trials: ftsweep's sweeper sets its sampler's settings itself",
        ),
    ],
)
def test_a_plugin_sampler_ftsweep_cannot_honour_is_one_line_naming_its_equivalent(sampler, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        plugin_node(sampler=sampler)
    assert "hydra/sweeper=optuna" in str(err.value) and "\n" not in str(err.value)


def test_the_plugins_documented_keys_keep_their_meaning_in_ftsweeps_sweeper():
    settings = plugin_node(
        direction=["maximize", "minimize"],
        study_name="mine",
        storage="sqlite:///o.db",
        n_trials=7,
        n_jobs=2,
        params={
            "lr": "tag(log, interval(1e-5, 1e-3))",
            "warmup": "interval(0, 0.2)",
            "layers": "int(interval(1, 4))",
            "r": "range(4, 12, step=4)",
            "method": "choice(full, lora)",
        },
    )
    d = SweepDefinition.build(settings, ["eval/accuracy", "mem/peak_mb"], [])
    assert d.directions == ("maximize", "minimize") and d.study_name == "mine" and d.n_trials == 7
    assert (settings.storage, settings.n_jobs) == ("sqlite:///o.db", 2)
    assert d.space == {
        "lr": F(1e-5, 1e-3, log=True),
        "warmup": F(0, 0.2),
        "layers": I(1, 4),
        "r": I(4, 8, step=4),
        "method": C(["full", "lora"]),
    }
    assert define("a=1,2", direction="maximize").directions == ("maximize",)  # a string, for one objective
    custom = plugin_node(custom_search_space="ftsweep.sweep.presets.pareto_space")
    assert custom.custom_search_space == "ftsweep.sweep.presets.pareto_space"


def test_optimized_metric_is_the_one_objective(tiny_cfg):
    from ftsweep.config import objectives_of, validate

    cfg = tiny_cfg("optimized_metric=eval/f1_macro")
    assert objectives_of(cfg) == ["eval/f1_macro"] == validate(cfg).objectives
    assert objectives_of(tiny_cfg()) == ["eval/accuracy"]
    with pytest.raises(ConfigError, match="objectives: eval/acc is not a metric a run logs"):
        validate(tiny_cfg("optimized_metric=eval/acc"))


def test_the_task_returns_what_its_sweeper_expects():
    from ftsweep.__main__ import FTSWEEP_SWEEPER, sweeper_return

    metrics = {"eval/accuracy": 0.75, "mem/peak_mb": 900.0, "perf/step_time_ms": 12.0}
    stock = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper_return(metrics, ["eval/accuracy"], stock) == 0.75
    assert sweeper_return(metrics, ["mem/peak_mb", "eval/accuracy"], stock) == (900.0, 0.75)  # objectives' order
    assert sweeper_return(metrics, ["eval/accuracy"], FTSWEEP_SWEEPER) is metrics
    assert sweeper_return(metrics, ["eval/accuracy"], "") is metrics  # a single run


LHT_OVERLAY = """# @package _global_
# lightning-hydra-template's hparams_search/mnist_optuna.yaml, with ftsweep's keys
defaults:
  - override /hydra/sweeper: optuna

optimized_metric: eval/accuracy

hydra:
  mode: MULTIRUN
  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    storage: null
    study_name: null
    n_jobs: 1
    direction: maximize
    n_trials: 2
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10
    params:
      lr: interval(1e-5, 1e-3)
      batch_size: choice(4, 8)
"""


@pytest.mark.parametrize("shape", ["command line", "lightning-hydra-template overlay"])
def test_hydra_optuna_sweepers_own_sweeper_runs_ftsweep_as_its_users_know_it(cli, toy, shape):
    """`hydra/sweeper=optuna` is the plugin's sweeper, not ftsweep's: the task hands it the objective as a
    float, and the plugin tells its own in-memory study and writes optimization_results.yaml."""
    if shape == "command line":
        proc = cli.sweep(
            *base(toy),
            "hydra/sweeper=optuna",
            "lr=interval(1e-5,1e-3)",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.direction=maximize",
        )
    else:
        (cli.cwd / "conf" / "hparams_search").mkdir(parents=True)
        (cli.cwd / "conf" / "hparams_search" / "lht.yaml").write_text(LHT_OVERLAY)
        without_m = cli.run(*base(toy), "hparams_search=lht")  # Hydra 1.4 wants -m for an overlay's MULTIRUN
        assert without_m.returncode == 2 and "add -m" in without_m.stderr, without_m.stderr[-3000:]
        proc = cli.sweep(*base(toy), "hparams_search=lht")  # as the template's README runs it
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Failed experiment" not in proc.stdout + proc.stderr
    from omegaconf import OmegaConf

    results = OmegaConf.load(cli.cwd / "multirun" / "optimization_results.yaml")
    parents, children = mlflow_runs()
    assert parents == [] and len(children) == 0  # the plugin's sweeper has no parent run: two plain runs
    runs = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_runs(
        [MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_experiment_by_name("local").experiment_id]
    )
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 2
    assert results.best_value == max(r.data.metrics["eval/accuracy"] for r in runs)


def test_feasibility_is_metric_minus_bound_and_missing_metrics_are_infeasible():
    d = define("a=1,2", constraints={"perf/step_time_ms": 900, "mem/peak_mb": 3000})
    assert d.feasibility({"mem/peak_mb": 2500.0, "perf/step_time_ms": 1000.0}) == [-500.0, 100.0]
    assert d.feasibility({"mem/peak_mb": 2500.0})[1] == float("inf")


# --------------------------------------------------------------------------- storage
def test_an_optuna_2_10_storage_is_upgraded_in_place_with_a_backup(tmp_path):
    db = shutil.copy(FIXTURE_2_10, tmp_path / "optuna.db")
    storage = open_storage(f"sqlite:///{db}")
    assert storage.get_current_version() == storage.get_head_version()
    assert (tmp_path / "optuna.db.bak-v2.6.0.a").read_bytes() == FIXTURE_2_10.read_bytes()
    tpe = optuna.load_study(study_name="ftsweep-f720719a63", storage=storage)
    assert [t.distributions["lr"] for t in tpe.get_trials()] == [F(1e-5, 1e-3, log=True)] * 2  # read as optuna 5's


def test_a_server_database_on_an_old_schema_is_refused_with_the_upgrade_command(tmp_path, monkeypatch):
    db = shutil.copy(FIXTURE_2_10, tmp_path / "optuna.db")
    url = f"sqlite:///{db}"
    monkeypatch.setattr("ftsweep.sweep.storage.file_of", lambda url: None)  # as if it were postgresql://
    with pytest.raises(ConfigError, match=f"run: optuna storage upgrade --storage '{url}'"):
        open_storage(url)


def test_journal_storage_round_trips_a_study(tmp_path):
    url = f"journal://{tmp_path / 'sub' / 'study.log'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()) == 2


def test_the_best_trial_is_chosen_among_feasible_trials_only(tmp_path):
    d = define("a=1,2,3", constraints={"mem/peak_mb": 1000})
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"), direction="maximize")
    for value, peak in ((0.9, 1500.0), (0.8, 900.0), (0.7, 500.0)):
        trial = study.ask()
        trial.set_user_attr("constraint_values", d.feasibility({"mem/peak_mb": peak}))
        study.tell(trial, value)
    summary = results.summary(study, d)
    assert (summary["best_value"], summary["best_trial"], summary["n_infeasible"]) == (0.8, 1, 1)
    results.write_trials_csv(study.get_trials(), d, tmp_path / "trials.csv")
    lines = (tmp_path / "trials.csv").read_text().splitlines()
    assert lines[0].split(",")[-3] == "feasible" and [ln.split(",")[-3] for ln in lines[1:]] == [
        "False",
        "True",
        "True",
    ]


def test_results_files_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        results.write_trials_csv([], define("a=1,2"), tmp_path / "trials.csv")
    finally:
        os.umask(old)
    assert (tmp_path / "trials.csv").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- sweeps
def test_grid_runs_exactly_the_combinations_once_and_a_rerun_resumes_nothing(cli, toy):
    proc = cli.sweep(*base(toy), "method=full,lora", "batch_size=8,16,32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    combos = {(t.params["method"], t.params["batch_size"]) for t in trials}
    assert combos == {(m, b) for m in ("full", "lora") for b in (8, 16, 32)}
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_id for c in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert {c.data.tags["optuna.trial_number"] for c in children} == {str(t.number) for t in trials}
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["sweep/n_complete"] == 6
    sweep_dir = cli.cwd / "multirun" / study.study_name
    assert (sweep_dir / "optimization_results.yaml").exists() and (sweep_dir / "trials.csv").exists()
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == [f"trial_{i}" for i in range(6)]

    again = cli.sweep(*base(toy), "method=full,lora", "batch_size=8,16,32")
    assert again.returncode == 0
    assert "already complete" in again.stderr + again.stdout
    assert len(studies(cli.cwd)[0].get_trials()) == 6
    assert "RUNNING" not in run_statuses()


def test_repeats_run_each_grid_point_with_each_seed_recorded_in_optuna_and_mlflow(cli, toy):
    args = [*base(toy), "batch_size=8,16", "hydra.sweeper.repeats=2"]
    proc = cli.sweep(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(grid of 2 points × 2 seeds = 4 trials; seeds 42, 43, maximize)" in proc.stderr + proc.stdout
    [study] = studies(cli.cwd)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted((t.params["batch_size"], t.params["seed"]) for t in trials) == [(8, 42), (8, 43), (16, 42), (16, 43)]
    parents, children = mlflow_runs()
    assert parents[0].data.params["sweep.seeds"] == "[42, 43]" and len(children) == 4
    ran = {(c.data.params["batch_size"], c.data.params["seed"], c.data.tags["ftsweep.replicate"]) for c in children}
    assert ran == {("8", "42", "0"), ("8", "43", "1"), ("16", "42", "0"), ("16", "43", "1")}
    again = cli.sweep(*args)
    assert again.returncode == 0 and "is already complete (4 of 4 trials" in again.stderr + again.stdout


def test_tpe_search_runs_the_configured_number_of_trials(cli, toy):
    proc = cli.sweep("hparams_search=lr_bs", *base(toy), "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(1e-5 <= t.params["lr"] <= 2e-4 for t in trials)  # full's lr_range
    assert {t.params["batch_size"] for t in trials} <= {8, 16, 32}
    assert type(study.sampler).__name__ == "TPESampler"


def test_pareto_search_writes_a_front(cli, toy):
    proc = cli.sweep("hparams_search=pareto", *base(toy), "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for t in study.get_trials():
        assert ("method.r" in t.params) == (t.params["method"] == "lora")  # conditional parameter
    text = (cli.cwd / "multirun" / study.study_name / "optimization_results.yaml").read_text()
    assert "solutions:" in text and "mem/footprint_mb" in text
    parents, _ = mlflow_runs()
    assert parents[0].data.metrics["sweep/pareto_size"] >= 1


def test_a_failing_combination_does_not_sink_the_sweep(cli, toy):
    # A bad value is refused before the sweep starts (test_bad_sweep_settings_...); a diverging lr fails only
    # when it trains.
    proc = cli.sweep(*base(toy), "lr=1e-3,1e30,2e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = studies(cli.cwd)[0].get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.params["lr"] == 1e30 and "training diverged" in failed.user_attrs["error"]
    assert "RUNNING" not in run_statuses()


def test_all_trials_failing_exits_non_zero_with_a_summary(cli, toy):
    proc = cli.sweep(*base(toy), "lr=1e30,2e30")  # both diverge (bad values never start: see above)
    assert proc.returncode != 0
    assert "all 2 trials failed" in proc.stderr + proc.stdout
    parents, _ = mlflow_runs()
    assert parents[0].info.status == "FAILED"
    assert "RUNNING" not in run_statuses()


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_sigkill_mid_trial_then_the_same_command_resumes(cli, toy, pruner):
    args = [
        *base(toy),
        "max_steps=400",
        "epochs=1000",
        "log_every_steps=50",
        "batch_size=8,16,32",
        f"hydra.sweeper.pruner={pruner}",
        "eval_every_steps=100",
    ]
    proc = cli.popen("-m", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = cli.cwd / "multirun" / "optuna.db"
    # Killed while trial 1 trains (it has logged; trial 0 logged 8 losses): 0 done, 1 in flight, 2 not started.
    pause_when(
        proc,
        lambda: dict(query(db, "select number, state from trials")).get(1) == "RUNNING" and logged_losses() >= 9,
        "trial 1 to train",
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = cli.sweep(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "left RUNNING" in resumed.stderr + resumed.stdout
    trials = studies(cli.cwd)[0].get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["batch_size"] for t in complete) == [8, 16, 32]  # every point once
    stale = [t for t in trials if t.state.name == "FAIL"]
    assert len(stale) == 1 and stale[0].number == 1 and stale[0].system_attrs.get("ftsweep_stale")
    assert "RUNNING" not in run_statuses()
    parents, children = mlflow_runs()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3 + ["KILLED"]


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_two_concurrent_workers_share_one_grid(cli, toy, pruner):
    args = [
        *base(toy),
        "batch_size=4,8,16,32",
        "method=full,lora",
        f"hydra.sweeper.pruner={pruner}",
        "hydra.sweeper.pruner_startup_trials=2",
        "max_steps=6",
        "eval_every_steps=2",
    ]
    procs = [cli.popen("-m", *args) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    [study] = studies(cli.cwd)
    trials = study.get_trials()
    failed = {t.number: t.user_attrs for t in trials if t.state.name not in ("COMPLETE", "PRUNED")}
    assert len(trials) == 8 and not failed, f"{failed}\n{outs[0][-3000:]}\n{outs[1][-3000:]}"
    assert len({(t.params["batch_size"], t.params["method"]) for t in trials}) == 8  # no point twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both did work
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 8
    assert "database is locked" not in "".join(outs)
    assert "RUNNING" not in run_statuses()


def test_joblib_launcher_runs_trials_in_parallel_processes(cli, toy):
    proc = cli.sweep(
        *base(toy),
        "batch_size=8,16",
        "method=full,lora",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.launcher.n_jobs=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = studies(cli.cwd)[0].get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    parents, children = mlflow_runs()
    assert len(children) == 4 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}


def test_per_trial_memory_peak_does_not_depend_on_trial_order(cli, toy):
    """A big trial first must not inflate the small one's peak (CPU RSS, trials in one process)."""

    def peaks(order: str) -> dict[str, float]:
        folder = cli.cwd / order.replace(",", "-")
        folder.mkdir()
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        proc = cli.sweep(
            *base(toy),
            f"model.hidden_size={order}",
            "model.intermediate_size=1024",
            "data.max_length=256",
            "batch_size=32",
            cwd=folder,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        _, children = mlflow_runs()
        return {c.data.params["model.hidden_size"]: c.data.metrics["mem/cpu_peak_rss_mb"] for c in children}

    big_first, small_first = peaks("512,32"), peaks("32,512")
    assert big_first["512"] > big_first["32"]
    assert abs(big_first["32"] - small_first["32"]) < 0.1 * small_first["32"], (big_first, small_first)


def test_two_workers_on_postgresql_for_optuna_and_mlflow(cli, toy, postgres_server, monkeypatch):
    storage, tracking = postgres_server(), postgres_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    args = [*base(toy), "batch_size=4,8", "method=full,lora", f"hydra.sweeper.storage={storage}"]
    procs = [cli.popen("-m", *args) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    [summary] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({(t.params["batch_size"], t.params["method"]) for t in trials}) == 4
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in parents + children)


# --------------------------------------------------------------------------- pruning
PRUNABLE = ["max_steps=48", "epochs=20", "eval_every_steps=4", "optimizer.warmup_ratio=0", "lr=5e-3,1e-7"]


def test_a_hopeless_trial_is_pruned_early_and_kept(cli, toy):
    proc = cli.sweep(*base(toy), *PRUNABLE, "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    good, bad = sorted(study.get_trials(), key=lambda t: -t.params["lr"])
    assert good.state.name == "COMPLETE" and bad.state.name == "PRUNED"
    assert max(bad.intermediate_values) < 48  # stopped before its last step
    parents, children = mlflow_runs()
    pruned = next(c for c in children if c.info.run_id == bad.user_attrs["mlflow_run_id"])
    assert pruned.info.status == "FINISHED" and pruned.data.tags["pruned"] == "true"
    assert int(pruned.data.tags["pruned_at_step"]) == pruned.data.metrics["train/steps"] < 48
    assert "eval/accuracy" in pruned.data.metrics  # its partial results are kept
    m = parents[0].data.metrics
    assert m["sweep/n_pruned"] == 1 and m["sweep/train_time_unpruned_est_s"] > m["sweep/train_time_s"]
    assert (cli.cwd / "multirun" / study.study_name / "report.md").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (cli.cwd / "multirun" / study.study_name / "report.md").read_text()
    assert "1 pruned" in report and "% saved" in report


def test_without_a_pruner_nothing_is_pruned(cli, toy):
    proc = cli.sweep(*base(toy), *PRUNABLE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state.name for t in studies(cli.cwd)[0].get_trials()] == ["COMPLETE", "COMPLETE"]


def test_pruning_a_multi_objective_study_is_refused_clearly(cli, toy):
    proc = cli.sweep("hparams_search=pareto", *base(toy), "hydra.sweeper.pruner=median")
    assert proc.returncode != 0
    assert "Optuna cannot prune a multi-objective study" in proc.stderr


# --------------------------------------------------------------------------- old studies and what optuna 5 brings
def test_a_sweep_started_on_optuna_2_10_resumes_where_it_stopped(cli):
    write_csv(cli.cwd / "toy.csv", toy_rows(48))
    (cli.cwd / "multirun").mkdir()
    shutil.copy(FIXTURE_2_10, cli.cwd / "multirun" / "optuna.db")
    grid = cli.sweep(*OLD_GRID)
    assert grid.returncode == 0, grid.stderr[-3000:]
    assert "upgraded the Optuna storage" in grid.stderr + grid.stdout
    assert "study ftsweep-bc2261723d is already complete (2 of 2" in grid.stderr + grid.stdout
    more = cli.sweep(*OLD_TPE[:-1], "hydra.sweeper.n_trials=3")  # one more trial on top of the old two
    assert more.returncode == 0, more.stderr[-3000:]
    storage = f"sqlite:///{cli.cwd / 'multirun' / 'optuna.db'}"
    assert sorted(optuna.get_all_study_names(storage)) == ["ftsweep-bc2261723d", "ftsweep-f720719a63"]  # no new study
    trials = optuna.load_study(study_name="ftsweep-f720719a63", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.params["lr"] for t in trials}) == 3  # the resumed sampler did not propose an old point again
    assert (cli.cwd / "multirun" / "optuna.db.bak-v2.6.0.a").read_bytes() == FIXTURE_2_10.read_bytes()


def test_two_workers_on_a_journal_file_share_one_grid(cli, toy):
    url = f"journal://{cli.cwd / 'shared' / 'study.log'}"
    args = [*base(toy), "batch_size=4,8,16,32", "method=full,lora", f"hydra.sweeper.storage={url}"]
    procs = [cli.popen("-m", *args) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    storage = open_storage(url)
    [name] = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({(t.params["batch_size"], t.params["method"]) for t in trials}) == 8  # no point twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both did work
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 8 and "RUNNING" not in run_statuses()


def workers_at_once(cli, n: int, args: list[str]) -> tuple[list[int], float]:
    """n sweep processes of one command, started together (as fast as they can be spawned, before any has
    imported anything), as a cluster's job array starts them; their exit codes and the wall time."""
    t0 = time.monotonic()
    procs = [cli.popen("-m", *args) for _ in range(n)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * n and not any("Traceback" in out for out in outs), "\n---\n".join(o[-1500:] for o in outs)
    return codes, time.monotonic() - t0


@pytest.mark.parametrize("storage_kind, n", [("postgresql", 8), ("journal", 4)])
def test_many_workers_started_at_once_on_a_fresh_study_run_each_trial_once(
    cli, toy, storage_kind, n, request, monkeypatch
):
    """Load (docs/reliability.md, row 41): 8 processes on a fresh PostgreSQL study and a fresh PostgreSQL MLflow store;
    4 on one journal file. Exactly n_trials trials, each point once, every run FINISHED, no error."""
    if storage_kind == "postgresql":
        new_database = request.getfixturevalue("postgres_server")
        url = new_database()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", new_database())
    else:
        url = f"journal://{cli.cwd / 'shared' / 'study.log'}"
    grid = ["batch_size=2,4,8,16", "method=full,lora"]  # 8 points: with 8 workers, every claim contends
    _, wall = workers_at_once(cli, n, [*base(toy), *grid, f"hydra.sweeper.storage={url}"])
    storage = open_storage(url)
    [name] = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({(t.params["batch_size"], t.params["method"]) for t in trials}) == 8  # no claim twice
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 8
    assert all(r.info.status == "FINISHED" for r in parents + children)
    print(f"{n} workers on {storage_kind}: 8 trials in {wall:.1f} s")  # shown with -s; quoted in docs/reliability.md


def test_a_postgresql_restart_while_trials_claim_and_tell_loses_and_doubles_no_trial(cli, toy, postgres_server):
    """The Optuna storage's server restarts mid-sweep (4 s down). Claims and tells wait for it (pooled
    connections are checked before use, failed calls retried within the window); a claim cut off after `ask`
    is failed and run again. The grid ends complete, each point once, with exit 0."""
    url = postgres_server()
    args = [
        *base(toy),
        "batch_size=2,4,8,16",
        "method=full,lora",
        "max_steps=30",
        "epochs=1000",
        f"hydra.sweeper.storage={url}",
    ]
    proc = cli.popen("-m", *args)
    wait_for(lambda: _complete(url) >= 2, "two trials to complete")
    postgres_server.restart(down_s=4)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    storage = open_storage(url)
    [name] = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    complete = [(t.params["batch_size"], t.params["method"]) for t in trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(set(complete)) and len(complete) == 8, (
        [(t.number, t.state) for t in trials],
        out[-4000:],
    )
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials) and "RUNNING" not in run_statuses()


def test_a_claim_cut_off_after_ask_is_failed_and_its_point_claimed_again(tmp_path):
    """The storage went away right after `ask` (or the claiming process died): the trial is RUNNING without its
    worker's attrs. The next claim, under the claim lock, fails it and claims its grid point again."""
    from ftsweep.sweep.claims import Claims

    d = define("batch_size=4,8")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    claims = Claims(d, SweepSettings(), url, open_storage(url))
    study = optuna.create_study(storage=claims.storage, direction="maximize")
    study.enqueue_trial({"batch_size": 8})
    cut = study.ask(fixed_distributions=d.space)  # claimed, then cut off before its attrs
    claimed = [claims.claim(study), claims.claim(study)]
    assert sorted(t.params["batch_size"] for t in claimed) == [4, 8] and claims.claim(study) is None
    assert study.get_trials()[cut.number].state.name == "FAIL"


def test_storage_calls_wait_out_a_restart_and_give_up_after_the_window_in_one_line(monkeypatch):
    from sqlalchemy.exc import OperationalError

    from ftsweep import spool
    from ftsweep.sweep import storage as storage_mod

    monkeypatch.setattr(spool.time, "sleep", lambda s: None)  # the backoff it shares with the tracking spool
    gone = OperationalError("SELECT 1", {}, Exception("terminating connection due to administrator command"))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise gone
        return "told"

    assert storage_mod.retrying("postgresql://u:pw@db/x", flaky, "telling trial 3") == "told" and len(calls) == 4
    with pytest.raises(
        storage_mod.StorageGone,
        match=r"postgresql://u:\*\*\*@db/x could not be reached for 0 s "
        r"while telling trial 3; rerun the same command",
    ):
        storage_mod.retrying(
            "postgresql://u:pw@db/x", lambda: (_ for _ in ()).throw(gone), "telling trial 3", window_s=0
        )
    with pytest.raises(ValueError):  # any other error is not waited for
        storage_mod.retrying("postgresql://db/x", lambda: (_ for _ in ()).throw(ValueError("bad")), "x")


def _complete(url: str) -> int:
    try:
        storage = open_storage(url)
        names = optuna.get_all_study_names(storage)
        return sum(
            t.state.name == "COMPLETE"
            for n in names
            for t in optuna.load_study(study_name=n, storage=storage).get_trials(deepcopy=False)
        )
    except Exception:  # not created yet
        return 0


def test_budgets_make_trials_infeasible_the_sampler_is_told_and_the_answer_keeps_within(cli, toy):
    # params/trainable is exact: full fine-tuning of the tiny model trains ~1M numbers, LoRA 2,114
    proc = cli.sweep(
        *base(toy),
        "method=full,lora",
        "lr=tag(log, interval(1e-4, 1e-2))",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.constraints={params/trainable: 10000}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.params["method"] for t in trials} == {"full", "lora"}
    for t in trials:
        # what the TPE sampler learned from (Optuna's own key) is what ftsweep measured
        assert t.system_attrs["constraints"] == t.user_attrs["constraint_values"]
        assert (t.user_attrs["constraint_values"][0] <= 0) == (t.params["method"] == "lora")
    best = yaml_of(cli.cwd / "multirun" / study.study_name / "optimization_results.yaml")
    assert best["best_params"]["method"] == "lora" and best["n_infeasible"] == sum(
        t.params["method"] == "full" for t in trials
    )
    assert (cli.cwd / "multirun" / study.study_name / "report.md").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (cli.cwd / "multirun" / study.study_name / "report.md").read_text()
    assert "Budget (hydra.sweeper.constraints): `params/trainable` <= 10000" in report
    assert report.count("✗ params/trainable") == best["n_infeasible"]


def test_gp_sampler_runs_a_small_search(cli, toy):
    proc = cli.sweep(
        *base(toy), "lr=tag(log, interval(1e-5, 1e-2))", "hydra.sweeper.sampler=gp", "hydra.sweeper.n_trials=4"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 4  # 3 random start-up trials, then GP
    parents, _ = mlflow_runs()
    assert parents[0].data.params["sweep.sampler"] == "gp"


def test_optuna_dashboard_serves_the_sweeps_study_to_a_browser(cli, toy, chromium):
    import sys

    from tests.conftest import free_port, wait_http

    assert cli.sweep(*base(toy), "batch_size=8,16").returncode == 0
    [study] = studies(cli.cwd)
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"  # what `make dashboard` starts
    server = subprocess.Popen(
        [
            str(dashboard),
            f"sqlite:///{cli.cwd / 'multirun' / 'optuna.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--server",
            "wsgiref",
        ],
        cwd=cli.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        listed = wait_http(f"http://127.0.0.1:{port}/api/studies")
        assert study.study_name in listed.decode()
        page = chromium(f"http://127.0.0.1:{port}/dashboard", "--dump-dom")
        assert f"{study._study_id}. {study.study_name}</h5>" in page.stdout
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_an_out_of_memory_trial_is_a_failure_and_infeasible_not_a_crash(tmp_path):
    import torch
    from hydra.core.utils import JobReturn, JobStatus

    from ftsweep.sweep.outcomes import Outcomes, job_outcome

    d = define("batch_size=8,16", constraints={"mem/peak_mb": 3000})
    outcomes = Outcomes(d, SweepSettings(), url="")
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"), direction="maximize")
    oom, ok = study.ask(), study.ask()
    outcomes.tell(
        study,
        oom,
        *job_outcome(JobReturn(status=JobStatus.FAILED, _return_value=torch.OutOfMemoryError("CUDA out of memory"))),
    )
    outcomes.tell(
        study,
        ok,
        *job_outcome(
            JobReturn(status=JobStatus.COMPLETED, _return_value={"eval/accuracy": 0.9, "mem/peak_mb": 2000.0})
        ),
    )
    failed, done = study.get_trials()
    assert failed.state.name == "FAIL" and failed.user_attrs["infeasible"] == "out of memory"
    assert failed.user_attrs["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert done.state.name == "COMPLETE" and done.user_attrs["constraint_values"] == [-1000.0]
    assert [results.feasible(t) for t in (failed, done)] == [False, True]


def yaml_of(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


# --------------------------------------------------------------------------- presets
def test_presets_compose_with_their_objectives_and_search_spaces():
    from hydra import compose, initialize_config_dir

    from ftsweep.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        time_preset = compose("config", ["hparams_search=pareto_time"], return_hydra_config=True)
        lr_bs = compose(
            "config", ["hparams_search=lr_bs", "method=lora", "method.lr_range=[1e-4,1e-2]"], return_hydra_config=True
        )
    assert list(time_preset.objectives) == ["eval/accuracy", "mem/footprint_mb", "perf/step_time_ms"]
    assert time_preset.hydra.sweeper.custom_search_space == "ftsweep.sweep.presets.pareto_space"
    assert lr_bs.hydra.sweeper.params.lr == "tag(log, interval(0.0001, 0.01))"  # the override reaches the space


def test_the_pareto_space_takes_lr_bounds_from_the_command_line_before_the_methods_yaml():
    from omegaconf import OmegaConf

    from ftsweep.sweep.presets import method_lr_range
    from tests.conftest import compose_cfg

    plain = OmegaConf.create({"hydra": {"overrides": {"task": ["model=tiny"]}}, "method": {"lr_range": [1e-5, 2e-4]}})
    lora_yaml = compose_cfg("method=lora").method.lr_range  # lora's own (LoraMethodConfig's since the one-home move)
    assert method_lr_range(plain, "lora") == tuple(float(v) for v in lora_yaml)
    overridden = OmegaConf.create(
        {"hydra": {"overrides": {"task": ["method.lr_range=[1e-4,1e-2]"]}}, "method": {"lr_range": [1e-4, 1e-2]}}
    )
    assert method_lr_range(overridden, "lora") == (1e-4, 1e-2) == method_lr_range(overridden, "head")


def test_pareto_time_search_has_three_directions_and_a_front(cli, toy):
    proc = cli.sweep("hparams_search=pareto_time", *base(toy), "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [study] = studies(cli.cwd)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    text = (cli.cwd / "multirun" / study.study_name / "optimization_results.yaml").read_text()
    assert "solutions:" in text and "perf/step_time_ms" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["batch_size=8"], "a sweep (-m) needs at least one swept key"),
        (["batch_size=8,16", "objectives=[eval/acc]"], "objectives: eval/acc is not a metric a run logs"),
        (["batch_size=8,16", "hydra.sweeper.sampler=bayes"], "hydra.sweeper.sampler must be one of"),
        (["batch_size=8,16", "hydra.sweeper.storage=multirun/x.db"], "hydra.sweeper.storage must be a URL"),
        (["'lr=tag(log, interval(0, 1e-3))'"], "cannot read the sweep's search space"),
        # every job the sweep would launch is composed and checked first: keys, values, data
        (["lrr=1e-3,2e-3"], "Could not override 'lrr': Key 'lrr' not in 'TrainConfig'"),
        (["batch_size=8,0"], "batch_size must be >= 1, got 0"),
        (["batch_size=8,16", "seed=-1"], "seed must be in [0, 2**32), got -1"),
        (["batch_size=8,16", "seed=1,2", "hydra.sweeper.repeats=2"], "hydra.sweeper.repeats=2 and a swept seed"),
        (["batch_size=8,16", "hydra.sweeper.repeats=0"], "hydra.sweeper.repeats must be an integer >= 1"),
        (["batch_size=8,16", "data.text_column=body"], "no text column 'body'"),
    ],
)
def test_bad_sweep_settings_stop_before_any_study_or_run_with_one_line(cli, toy, args, message):
    proc = cli.sweep(*base(toy), *[a.strip("'") for a in args])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ftsweep: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (cli.cwd / "multirun" / "optuna.db").exists() and run_statuses() == []


def test_a_storage_password_never_reaches_mlflow(cli, toy, postgres_server):
    """The server trusts loopback, so it accepts any password: plant one and look for it everywhere MLflow keeps."""
    storage = postgres_server().replace("postgresql://postgres@", "postgresql://postgres:pl4nted-s3cret@")
    proc = cli.sweep(*base(toy), "batch_size=8,16", f"hydra.sweeper.storage={storage}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pl4nted-s3cret" not in proc.stdout + proc.stderr
    parents, children = mlflow_runs()
    assert len(parents) == 1 and len(children) == 2
    assert children[0].data.params["sweep.storage"].startswith("postgresql://postgres:***@")
    store = Path(os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///") :])
    leaked = [
        p
        for p in [store, *store.parent.joinpath("mlartifacts").rglob("*")]
        if p.is_file() and b"pl4nted-s3cret" in p.read_bytes()
    ]
    assert leaked == []


def test_the_docs_slurm_command_composes_with_the_submitit_launcher_it_names():
    """SLURM itself is not on this machine (submitit_local runs the same launcher path in test_launchers.py);
    this keeps docs/scaling-out.md's copy-pasteable command true: every key it sets exists, with the value it
    gives."""
    import shlex

    from hydra import compose, initialize_config_dir

    from ftsweep.config import CONF_DIR

    page = (REPO / "docs" / "scaling-out.md").read_text()
    block = next(b for b in page.split("```") if "hydra/launcher=submitit_slurm" in b)
    command = " ".join(
        line.split("#")[0].rstrip(" \\")
        for line in block.splitlines()
        if not line.lstrip().startswith(("#", "pip", "export"))
    )
    words = shlex.split(command)
    overrides = [w for w in words[words.index("ftsweep") + 1 :] if w != "-m"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    settings = SweepSettings.from_config(cfg.hydra.sweeper)
    assert settings.n_jobs > 1 and settings.storage.startswith("postgresql://")


def test_a_grid_runs_its_largest_trials_first_so_that_slots_finish_together():
    grid = define("batch_size=8,32,16", "method=full,lora", "max_steps=10,100").grid
    work = [p["batch_size"] * p["max_steps"] for p in grid]
    assert work == sorted(work, reverse=True) and len(grid) == 12
    assert [p["method"] for p in grid[:2]] == ["full", "lora"]  # equal work keeps the product's order
    assert list(define("method=full,lora").grid) == [{"method": "full"}, {"method": "lora"}]


def study_config():
    from hydra import compose, initialize_config_dir

    from ftsweep.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("config", ["hparams_search=study"], return_hydra_config=True)


def test_the_study_preset_proposes_each_method_and_lr_once():
    import warnings

    from ftsweep.sweep.presets import STUDY_LRS, study_space

    cfg = study_config()
    settings = cfg.hydra.sweeper
    assert (settings.sampler, settings.n_trials, settings.repeats, settings.custom_search_space) == (
        "bruteforce",
        18,
        3,
        "ftsweep.sweep.presets.study_space",
    )
    d = define(sampler="bruteforce", n_trials=6, custom_search_space="ftsweep.sweep.presets.study_space")
    study = optuna.create_study()
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)  # the sampler keeps it quiet
        for k in range(6):
            study.sampler = d.make_sampler(k)  # the runner makes a fresh, reseeded sampler for every claim
            trial = study.ask()
            study_space(cfg, trial)
            seen.append((trial.params["method"], trial.params["lr"]))
            study.tell(trial, 0.5)
    assert sorted(set(seen)) == sorted(seen) and len(seen) == 6
    for method, lrs in STUDY_LRS.items():
        assert sorted(lr for m, lr in seen if m == method) == pytest.approx(sorted(lrs))


def test_the_study_runs_each_configuration_with_each_of_its_3_seeds_then_stops(tmp_path):
    from ftsweep.sweep.claims import Claims

    cfg = study_config()
    d = define(sampler="bruteforce", n_trials=20, repeats=3, custom_search_space="ftsweep.sweep.presets.study_space")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    claims = Claims(d, SweepSettings(), url, open_storage(url), config=cfg)
    study = optuna.create_study(storage=claims.storage, direction="maximize")
    ran = []
    while (trial := claims.claim(study)) is not None:
        ran.append((trial.params["method"], trial.params["lr"], trial.params["seed"]))
        study.tell(trial, 0.5)
    assert len(ran) == len(set(ran)) == 18  # every combination with every seed once, then no repeat
    assert {seed for *_, seed in ran} == {42, 43, 44}
    repeat = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(repeat) == 1 and "every combination of the search space has run" in repeat[0].user_attrs["error"]


def test_an_optuna_storage_is_created_whole_or_not_at_all(tmp_path, monkeypatch):
    """A new sqlite study file is made aside and moved into place: a creator killed mid-way leaves nothing that
    the next start would stumble on."""
    db = tmp_path / "optuna.db"

    def killed(*args, **kwargs):
        (tmp_path / "optuna.db").parent.mkdir(exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(optuna.storages, "RDBStorage", killed)
    with pytest.raises(KeyboardInterrupt):
        open_storage(f"sqlite:///{db}")
    assert not db.exists()
    monkeypatch.undo()
    study = optuna.create_study(storage=open_storage(f"sqlite:///{db}"), study_name="s")
    assert db.stat().st_size > 0 and study.study_name == "s" and not list(tmp_path.glob("optuna.db.new-*"))
