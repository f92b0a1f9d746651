"""The metric names of the contract (docs/contract.md): public API, like the config keys."""

from __future__ import annotations

from collections.abc import Iterable

from ftsweep.errors import check_config

EVAL_METRICS = ("eval/accuracy", "eval/f1_macro", "eval/loss")  # every evaluation logs these
PREDICTIONS = "predictions.parquet"  # every run's artifact: the final eval, one row per example

# What train() returns and logs at the end (docs/contract.md): the names `objectives` and
# `hydra.sweeper.constraints` may use. The CUDA and compile entries appear only on CUDA / with compile=true.
FINAL_METRICS = frozenset(
    {
        "eval/accuracy",
        "eval/accuracy_ci_low",  # Wilson's 95 % interval of eval/accuracy (ftsweep/stats.py)
        "eval/accuracy_ci_high",
        "baseline/majority_accuracy",  # the training set's most common class, scored on the same eval rows
        "baseline/tfidf_accuracy",  # TF-IDF + logistic regression on the same rows (ftsweep/baselines.py)
        "eval/f1_macro",
        "eval/loss",
        "perf/step_time_ms",
        "perf/step_time_p90_ms",
        "perf/samples_per_s",
        "perf/tokens_per_s",
        "perf/train_time_s",
        "perf/eval_time_s",
        "perf/effective_batch_size",
        "perf/micro_batch_size",  # examples per forward pass, all ranks together (batch_size when unset)
        "perf/compile_time_s",
        "train/steps",
        "train/total_steps",
        "train/stopped_early",
        "train/best_step",
        "params/trainable",
        "params/total",
        "params/trainable_pct",
        "mem/peak_mb",
        "mem/cpu_peak_rss_mb",
        "mem/cuda_peak_allocated_mb",
        "mem/cuda_peak_reserved_mb",
        "mem/cuda_train_peak_allocated_mb",  # training alone: the memory axis on a GPU
        "mem/cuda_eval_peak_allocated_mb",
        "mem/params_mb",
        "mem/grads_mb",
        "mem/optimizer_state_mb",
        "mem/baseline_mb",
        "mem/activations_est_mb",
        "mem/activations_saved_mb",
        "mem/train_state_mb",
        "mem/footprint_mb",
    }
)


def check_metric_names(names: Iterable[str], what: str) -> None:
    unknown = [n for n in names if n not in FINAL_METRICS]
    check_config(
        not unknown,
        f"{what}: {', '.join(unknown)} is not a metric a run logs; choose from {', '.join(sorted(FINAL_METRICS))}",
    )
