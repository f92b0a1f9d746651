"""Each warning kind on hand-built rows whose truth is known: it fires when it should, and not otherwise."""

from ftsweep.report.caveats import KINDS, find
from ftsweep.report.recommend import recommend
from ftsweep.report.replicates import configurations
from ftsweep.report.rows import Row


def row(trial, acc, lr="1e-4", method="full", loss=(0.7, 0.6, 0.5, 0.45, 0.44, 0.44, 0.44, 0.44), evals=(), **extra):
    metrics = {
        "eval/accuracy": acc,
        "eval/accuracy_ci_low": acc - 0.03,
        "eval/accuracy_ci_high": acc + 0.03,
        "baseline/majority_accuracy": 0.5,
        "mem/footprint_mb": 100.0 + trial,
        "train/steps": 40,
    }
    r = Row(trial, method, {"lr": lr, **extra}, metrics, "FINISHED", run_id=f"r{trial}", eval_samples=1000)
    r.history = {"train/loss": list(loss), "eval/accuracy": list(evals)}
    r.predicted_classes = 2
    return r


def kinds(rows, importances=None):
    caveats = find(rows, recommend(configurations(rows), {}), importances or {})
    assert all(c.kind in KINDS for c in caveats)
    return {c.kind: c for c in caveats}


def healthy():
    """Twelve trials, lr spread so that the best sits inside the range, each clearly apart from the best."""
    lrs = ["1e-5", "2e-5", "5e-5", "8e-5", "1e-4", "2e-4", "3e-4", "5e-4", "8e-4", "1e-3", "2e-3", "3e-3"]
    return [row(i, 0.90 - 0.1 * abs(i - 5) / 5 - (0.05 if i != 5 else 0.0), lr) for i, lr in enumerate(lrs)]


def test_a_healthy_sweep_has_no_warnings():
    assert kinds(healthy()) == {}


def test_at_chance_by_interval_or_by_a_single_predicted_class():
    rows = healthy()
    rows[0].metrics.update({"eval/accuracy": 0.52, "eval/accuracy_ci_low": 0.49})  # not above 0.5 by its interval
    rows[1].predicted_classes = 1
    found = kinds(rows)["at_chance"]
    assert "2 of 12 finished trial(s) (0, 1)" in found.message and "rate 0.500" in found.message
    assert "1 of them predict a single class" in found.message


def test_edge_of_range_names_the_direction_and_the_next_value():
    rows = healthy()
    rows[11].metrics["eval/accuracy"] = 0.99  # the best now sits at the top of the lrs tried
    found = kinds(rows)["edge_of_range"]
    assert found.parameter == "lr" and "highest of the 12 values tried" in found.message and "above" in found.message
    assert found.override == "lr=0.003,0.0045"  # one step beyond, at the ratio of the top two values


def test_undertrained_when_the_loss_still_falls_or_the_eval_still_rises():
    rows = healthy()
    rows[5].history["train/loss"] = [0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3]
    found = kinds(rows)["undertrained"]
    assert (
        found.message
        == "1 of the answer's trials were still learning (trial 5: loss 0.475 → 0.350 over its last quarters)"
    )
    assert found.override == "max_steps=80"
    rows = healthy()
    rows[5].history["eval/accuracy"] = [0.7, 0.8, 0.9]
    assert "trial 5: last eval still rising, 0.800 → 0.900" in kinds(rows)["undertrained"].message


def test_diverged_on_a_non_finite_loss_or_one_that_ends_higher():
    rows = healthy()
    rows[2].history["train/loss"] = [0.7, 0.8, 0.9, 1.2]  # its last quarter: 1.2
    found = kinds(rows)["diverged"]
    assert (
        "trial 2: its loss ended above where it started (0.700 → 1.200)" in found.message
        and found.override == "lr=5e-06"
    )
    failed = Row(12, "full", {"lr": "1"}, {}, "FAILED", error="training diverged: loss became nan by step 3")
    assert "NaN or inf" in kinds([*healthy(), failed])["diverged"].message


def test_cannot_separate_says_how_many_examples_would_tell():
    rows = [row(i, 0.80 + 0.005 * i, lr) for i, lr in enumerate(["1e-5", "3e-5", "1e-4"])]
    found = kinds(rows)["cannot_separate"]
    assert "all 3 configurations are tied with the best on 1,000 eval examples" in found.message
    examples = int(found.override.split("=")[1])
    assert examples > 1000 and f"about {examples:,} eval examples" in found.message


def test_few_trials_behind_importances_and_fronts():
    rows = healthy()[:4]
    found = kinds(rows, {"lr": 1.0})["few_trials"]
    assert "importances and Pareto fronts drawn from only 4" in found.message
    assert found.override == "hydra.sweeper.n_trials=10"
    assert "few_trials" not in kinds(healthy(), {"lr": 1.0})
