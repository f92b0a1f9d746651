"""Optuna sweeps behind `python -m ftsweep -m ...`.

definition.py  the settings (`hydra.sweeper.*`) and the frozen sweep definition that names a study
storage.py     storage URLs (sqlite, journal, PostgreSQL), schema upgrades, the claim lock, dead workers
study.py       the study and its MLflow parent run: opened at the start, the results written at the end
claims.py      which trial runs next; trials that must run again
outcomes.py    how a trial ended, told to Optuna
launchers.py   what a Hydra launcher can do (asked, not guessed from its name)
runner.py      the slots: claim -> launch -> tell, until the study is done
results.py     summary, trials.csv, optimization_results.yaml, pruning savings
trial_link.py  the trial side: record the MLflow run id, report evals, ask the pruner
presets.py     search spaces of the presets that need conditional parameters
replicates.py  seed replicates (hydra.sweeper.repeats, a swept seed): the seeds, and the replicate missing next

What follows a sweep (the best model, the report) is ftsweep/conclude.py's.
"""
