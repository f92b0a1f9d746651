"""The GPU kit's pure parts (benchmarks/gpu_kit.py, benchmarks/gpu_kit_run.py): pins, the size budget, the packed
weights, the grid's command line and the checks. No network, no wheels downloaded: building the kit and running
it on a clean Python is checked by hand (docs/benchmarks.md, "The GPU kit")."""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load, save

from benchmarks import gpu_kit, gpu_kit_run
from ftsweep.config import validate
from tests.conftest import REPO, compose_cfg

LOCK = """# header
accelerate==1.15.0        # via peft
Mako==1.4.3               # via alembic
torch==2.13.0+cpu         # via ftsweep (pyproject.toml)
typing_extensions==4.16.0  # via pydantic
"""


def test_pins_read_the_lock_with_normalised_names_and_no_local_tags():
    assert gpu_kit.pins(LOCK) == {
        "accelerate": "1.15.0",
        "mako": "1.4.3",
        "torch": "2.13.0",
        "typing-extensions": "4.16.0",
    }


def test_requirements_pin_each_name_and_refuse_one_the_lock_lacks():
    pinned = gpu_kit.pins(LOCK)
    assert gpu_kit.requirements(["Mako", "typing-extensions"], pinned) == ["Mako==1.4.3", "typing-extensions==4.16.0"]
    with pytest.raises(SystemExit, match="optuna not pinned in requirements.lock"):
        gpu_kit.requirements(["mako", "optuna"], pinned)


def test_every_package_of_the_kit_is_pinned_once_in_the_real_lock():
    names = [gpu_kit.normalise(n) for n, _ in gpu_kit.PURE + gpu_kit.BINARY]
    assert len(names) == len(set(names))
    assert not set(names) & set(gpu_kit.LEFT_OUT)
    reqs = gpu_kit.requirements(names, gpu_kit.pins((REPO / "requirements.lock").read_text()))
    assert "mlflow-skinny==3.17.2" in reqs  # the client without the server's dependencies


def test_the_budget_is_what_the_machine_takes_less_the_tree():
    mib = gpu_kit.MIB
    fits, line = gpu_kit.budget_line(62 * mib, 2 * mib)
    assert fits and line == "gpu kit: 62.0 MiB; budget 62.0 MiB (64 MiB less the tree's 2.0 MiB)"
    fits, line = gpu_kit.budget_line(62 * mib + 1, 2 * mib)
    assert not fits
    assert "\n" not in line and line.startswith("gpu kit: too large, 62.0 MiB; budget 62.0 MiB")
    assert "--train N" in line  # says what to do


def test_the_tree_counts_tracked_and_untracked_files_but_not_ignored_ones(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/.gpu-kit/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 100)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    (tmp_path / "untracked.txt").write_bytes(b"y" * 30)
    (tmp_path / ".gpu-kit").mkdir()
    (tmp_path / ".gpu-kit" / "big.whl").write_bytes(b"z" * 10_000)
    assert gpu_kit.tree_bytes(tmp_path) == 100 + 30 + len("/.gpu-kit/\n")


def test_packed_weights_unpack_to_the_same_bytes():
    raw = save({"a": torch.randn(64, 8).half(), "b": torch.arange(10).half()}, metadata={"format": "pt"})
    packed = gpu_kit.pack_weights(raw)
    assert gpu_kit.unpack_weights(packed) == raw
    assert torch.equal(load(gpu_kit.unpack_weights(packed))["b"], torch.arange(10).half())


def test_the_grid_is_the_users_and_the_smoke_only_shrinks_it(tmp_path):
    manifest = {
        "model": {"folder": "minilm"},
        "data": {
            "train": {"file": "imdb/train.csv.xz"},
            "eval": {"file": "imdb/eval.csv.xz"},
            "text_column": "review",
            "label_column": "sentiment",
        },
    }
    full = gpu_kit_run.overrides(tmp_path / "kit", manifest, tmp_path / "work", smoke=False)
    smoke = gpu_kit_run.overrides(tmp_path / "kit", manifest, tmp_path / "work", smoke=True)
    assert full[:2] == ["method=full,lora", "batch_size=8,16,32"] and "precision=auto" in full
    assert f"model.name_or_path={tmp_path / 'work' / 'minilm'}" in full  # the unpacked folder
    keys = [o.split("=")[0] for o in smoke]
    assert len(keys) == len(set(keys))  # one value per key: the smoke replaces, never repeats
    assert {"data.max_length=64", "max_steps=2", "device=cpu"} <= set(smoke) - set(full)
    # One point of the grid composes and validates against the shipped config.
    single = ["method=lora", "batch_size=8"] + [o for o in full[2:] if not o.startswith("hydra.")]
    cfg = validate(compose_cfg(*single))
    assert (cfg.data.max_length, cfg.data.text_column, cfg.model.name) == (256, "review", "minilm")


def trial(status="FINISHED", device="cuda", precision="bf16", peaks=True, run_id="r1", **tags):
    metrics = {"eval/accuracy": 0.9, **({k: 512.0 for k in gpu_kit_run.CUDA_PEAKS} if peaks else {})}
    if peaks:  # the memory axis on a GPU is training's CUDA peak
        metrics["mem/footprint_mb"] = metrics["mem/cuda_train_peak_allocated_mb"]
    return {
        "run_id": run_id,
        "status": status,
        "tags": {"device": device, "precision": precision, **tags},
        "metrics": metrics,
    }


def report_folder(tmp_path, files=gpu_kit_run.REPORT_FILES):
    for name in files:
        (tmp_path / name).write_text("x")
    return tmp_path


GPU = {"trials": 2, "device": "cuda", "precision": "bf16"}
BEST = {"name": "ftsweep-imdb-gpu-kit", "version": "1", "run_id": "r1"}


def test_a_good_gpu_grid_passes_every_check(tmp_path):
    store = {"trials": [trial(run_id="r1"), trial(run_id="r2")], "registered": BEST}
    checks = gpu_kit_run.judge(store, GPU, report_folder(tmp_path))
    assert [v for v, _, _ in checks] == ["PASS"] * 6


def test_each_failure_is_its_own_fail_line(tmp_path):
    store = {
        "trials": [
            trial(run_id="r1"),
            trial(status="FAILED", device="cpu", precision="fp32", peaks=False, run_id="r2", error="oom"),
        ],
        "registered": None,
    }
    checks = {name: (v, detail) for v, name, detail in gpu_kit_run.judge(store, GPU, report_folder(tmp_path, ()))}
    assert checks["every trial FINISHED"] == ("FAIL", "1 of 2 expected; FAILED (oom)")
    assert checks["device and precision tags"][0] == "FAIL"
    verdict, detail = checks["CUDA peak metrics logged"]
    assert verdict == "FAIL" and "missing in ['r2']" in detail
    assert checks["report written"][0] == "FAIL"
    assert checks["best model registered"] == ("FAIL", "no @best version")


def test_on_cpu_the_cuda_peaks_are_skipped_and_fewer_trials_fail(tmp_path):
    cpu = {"trials": 2, "device": "cpu", "precision": "fp32"}
    store = {"trials": [trial(device="cpu", precision="fp32", peaks=False)], "registered": BEST}
    checks = {name: v for v, name, _ in gpu_kit_run.judge(store, cpu, report_folder(tmp_path))}
    assert checks["CUDA peak metrics logged"] == "SKIP"
    assert checks["every trial FINISHED"] == "FAIL"  # one trial of the two expected


def test_a_memory_axis_that_is_not_trainings_cuda_peak_fails(tmp_path):
    wrong = trial(run_id="r2")
    wrong["metrics"]["mem/footprint_mb"] = 900.0  # e.g. the whole run's peak, eval batch included
    store = {"trials": [trial(run_id="r1"), wrong], "registered": BEST}
    checks = {name: (v, detail) for v, name, detail in gpu_kit_run.judge(store, GPU, report_folder(tmp_path))}
    assert checks["memory axis is training's CUDA peak"] == ("FAIL", "not in ['r2']")
