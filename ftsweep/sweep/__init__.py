"""Optuna sweeps behind `python -m ftsweep -m ...`.

definition.py  the settings (`hydra.sweeper.*`) and the frozen sweep definition that names a study
storage.py     storage URLs (sqlite, journal, PostgreSQL), schema upgrades, the claim lock, dead workers
runner.py      the sweeper's loop: claim -> launch -> tell
results.py     summary, trials.csv, optimization_results.yaml, pruning savings
trial_link.py  the trial side: record the MLflow run id, report evals, ask the pruner
presets.py     search spaces of the presets that need conditional parameters
"""
