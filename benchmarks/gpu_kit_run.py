"""On the GPU machine: install the kit (benchmarks/gpu_kit.py), run the user's grid through ftsweep's real CLI,
write the report, check what ran, and copy the MLflow store and the report into OUT.

    python3 benchmarks/gpu_kit_run.py .gpu-kit $OUT                 # there: 6 trials on 12,000 IMDB reviews
    python benchmarks/gpu_kit_run.py .gpu-kit OUT --cpu-smoke       # here: the same pipeline on CPU, a tiny slice

The kit's wheels go into WORK/site with `pip install --target` and PYTHONPATH, on top of the machine's own
packages: its python3 is itself a virtual environment (/opt/torch/.venv), so a `venv --system-site-packages`
made from it would not see its torch. ftsweep runs from this tree, as the tree travels anyway (conf/ and
hydra_plugins/ included, where Hydra finds ftsweep's sweeper). Only the standard library is imported at the
top: nothing else is installed until this script has done it.

Checks, one PASS/FAIL line each (exit 1 if any fails): every trial FINISHED; each ran on the expected device
with the `precision` tag that `precision=auto` resolves to there; the CUDA peak metrics were logged (skipped on
CPU, where there are none); the report exists; the sweep's best model is registered (`ftsweep-<experiment>@best`).
OUT gets mlflow.db, report/report.{md,html,json}, kit_run.log and kit_run.json (versions and checks): few
enough files to come back from the machine; the kept models' weights stay in WORK.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_kit import normalise, unpack_weights  # noqa: E402  (the standard library only, as here)

REPO = Path(__file__).resolve().parents[1]
GRID = ("method=full,lora", "batch_size=8,16,32")  # the user's grid (issue 24)
EXPERIMENT = "imdb-gpu-kit"
# On the CPU: the same pipeline end to end, on a slice small enough for minutes on 2 cores.
SMOKE = {
    "data.max_train_samples": 64,
    "data.max_eval_samples": 32,
    "data.max_length": 64,
    "max_steps": 2,
    "device": "cpu",
}
REPORT_FILES = ("report.md", "report.html", "report.json")  # the plots are inside report.html
CUDA_PEAKS = (
    "mem/cuda_peak_allocated_mb",
    "mem/cuda_peak_reserved_mb",
    "mem/cuda_train_peak_allocated_mb",
    "mem/cuda_eval_peak_allocated_mb",
)
VERSIONS = """
import importlib.metadata as md, platform, torch
names = ("torch", "transformers", "peft", "hydra-core", "omegaconf", "optuna", "mlflow-skinny", "sqlalchemy",
         "datasets", "huggingface-hub", "pyarrow", "pandas", "numpy")
v = {"python": platform.python_version(), **{n: md.version(n) for n in names}}
v["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
v["cuda"] = torch.version.cuda
print("VERSIONS " + __import__("json").dumps(v))
"""


def unpack_model(kit: Path, manifest: dict, work: Path) -> Path:
    """The kit's MiniLM as a Hugging Face folder in WORK: its small files, and the fp16 weights unpacked and checked."""
    info = manifest["model"]
    src, dest = kit / info["folder"], work / info["folder"]
    dest.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.name != info["weights"]:
            shutil.copy2(path, dest / path.name)
    weights = unpack_weights((src / info["weights"]).read_bytes())
    if hashlib.sha256(weights).hexdigest() != info["sha256_fp16"]:
        raise SystemExit(f"gpu kit: {src / info['weights']} does not unpack to the weights it was built from")
    (dest / "model.safetensors").write_bytes(weights)
    return dest


def overrides(kit: Path, manifest: dict, work: Path, smoke: bool) -> list[str]:
    """The grid's command line: the kit's model folder and IMDB slice through data=local, as a user would."""
    data = manifest["data"]
    settings = {
        "precision": "auto",
        "model.name_or_path": work / manifest["model"]["folder"],  # a folder wins over model=minilm's package
        "data": "local",
        "data.train_file": kit / data["train"]["file"],
        "data.eval_file": kit / data["eval"]["file"],
        "data.text_column": data["text_column"],
        "data.label_column": data["label_column"],
        "data.max_length": 256,  # as data=imdb cuts reviews
        "data.truncation": "head_tail",
        "experiment_name": EXPERIMENT,
        "hydra.sweep.dir": work / "multirun",  # the study's storage and the trials' folders, out of the tree
        "progress_bar": "false",
        **(SMOKE if smoke else {}),
    }
    return [*GRID, *(f"{key}={value}" for key, value in settings.items())]


def environment(site: Path, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(REPO), env.get("PYTHONPATH")]))
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",  # kept models land beside it, in WORK/mlartifacts
        FTSWEEP_CACHE=str(work / "cache"),
        PYTHONUNBUFFERED="1",
        # No network there: nothing may wait on a hub or a telemetry endpoint.
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
    )
    return env


class Log:
    """Every step's output, printed as it comes and kept for OUT/kit_run.log."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w", encoding="utf-8")

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def run(self, cmd: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
        self.say("$ " + " ".join(arg if "\n" not in arg else "'<script>'" for arg in cmd))
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            self.say(lines[-1])
        return proc.wait(), lines


def install(kit: Path, manifest: dict, site: Path, extra_links: list[Path], log: Log) -> int:
    """The kit's wheels into `site`, offline and without dependencies: each one the machine lacks is in the kit,
    and anything else must come from the machine itself, never from a newer copy that pip would go looking for."""
    links = [arg for folder in (kit / "wheels", *extra_links) for arg in ("--find-links", str(folder))]
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade"]
    rc, _ = log.run([*pip, "--target", str(site), *links, *manifest["install"]], dict(os.environ))
    if rc == 0:
        report_unmet(manifest, site, log)
    return rc


def report_unmet(manifest: dict, site: Path, log: Log) -> None:
    """Informational: what the kit's packages declare that neither the kit nor the machine has (pip check)."""
    env = environment(site, site.parent)
    out = subprocess.run([sys.executable, "-m", "pip", "check"], env=env, capture_output=True, text=True).stdout
    kit = {normalise(r.split("==")[0]) for r in manifest["install"]}
    unmet = [line.strip() for line in out.splitlines() if line.strip() and normalise(line.split()[0]) in kit]
    log.say(f"pip check on the kit's packages (left out on purpose: {', '.join(manifest.get('left_out', {}))}):")
    for line in unmet or ["nothing missing"]:
        log.say("  " + line)


def judge(store: dict, expect: dict, report: Path) -> list[tuple[str, str, str]]:
    """(PASS | FAIL | SKIP, check, detail) for a finished grid; `store` as read_store gives it."""
    trials, n = store["trials"], expect["trials"]
    finished = [t for t in trials if t["status"] == "FINISHED"]
    others = sorted(f"{t['status']} ({t['tags'].get('error', 'no error tag')})" for t in trials if t not in finished)
    detail = f"{len(finished)} of {n} expected" + (f"; {'; '.join(others)}" if others else "")
    checks = [("PASS" if len(finished) == len(trials) == n else "FAIL", "every trial FINISHED", detail)]
    devices = sorted({t["tags"].get("device", "?") for t in trials})
    precisions = sorted({t["tags"].get("precision", "?") for t in trials})
    ok = bool(trials) and devices == [expect["device"]] and precisions == [expect["precision"]]
    checks.append(
        (
            "PASS" if ok else "FAIL",
            "device and precision tags",
            f"device {devices}, precision {precisions}; expected {expect['device']}, {expect['precision']} "
            f"(precision=auto there)",
        )
    )
    if expect["device"] == "cuda":
        lacking = [t["run_id"] for t in trials if not all(t["metrics"].get(k, 0) > 0 for k in CUDA_PEAKS)]
        peaks = sorted(round(t["metrics"].get(CUDA_PEAKS[0], 0)) for t in trials)
        detail = f"{CUDA_PEAKS[0]} (MB) {peaks}" + (f"; missing in {lacking}" if lacking else "")
        checks.append(("PASS" if trials and not lacking else "FAIL", "CUDA peak metrics logged", detail))
        # the memory axis on a GPU is training's peak, whatever the eval batch needs
        axis = [t["run_id"] for t in trials if t["metrics"].get("mem/footprint_mb") != t["metrics"].get(CUDA_PEAKS[2])]
        checks.append(
            ("FAIL" if axis else "PASS", "memory axis is training's CUDA peak", f"not in {axis}" if axis else "")
        )
    else:
        checks.append(("SKIP", "CUDA peak metrics logged", "ran on cpu, where ftsweep logs no CUDA peaks"))
    missing = [name for name in REPORT_FILES if not (report / name).is_file()]
    checks.append(("FAIL" if missing else "PASS", "report written", f"missing {missing}" if missing else str(report)))
    reg, run_ids = store["registered"], {t["run_id"] for t in trials}
    ok = reg is not None and reg["run_id"] in run_ids
    detail = f"{reg['name']}@best is version {reg['version']}, run {reg['run_id']}" if reg else "no @best version"
    checks.append(("PASS" if ok else "FAIL", "best model registered", detail))
    return checks


def read_store(tracking_uri: str) -> dict:
    """The grid's trials and the registered best from the MLflow store (run with the kit installed)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    trials = [
        {"run_id": r.info.run_id, "status": r.info.status, "tags": r.data.tags, "metrics": r.data.metrics}
        for r in runs
        if "mlflow.parentRunId" in r.data.tags  # the sweep's parent run is not a trial
    ]
    name = f"ftsweep-{EXPERIMENT}"
    try:
        version = client.get_model_version_by_alias(name, "best")
        registered = {"name": name, "version": version.version, "run_id": version.run_id}
    except MlflowException:
        registered = None
    return {"trials": trials, "registered": registered}


def check(work: Path, smoke: bool) -> int:
    """Judge a finished grid in WORK; writes WORK/checks.json. Needs the kit on PYTHONPATH (run() sets it)."""
    import torch

    from ftsweep.config import Precision
    from ftsweep.evaluation import precision_tag

    device = "cpu" if smoke else "cuda"
    # The tag precision=auto gives here: bf16 on a card with native bf16; fp32+bf16-eval on such a CPU (the smoke)
    expect = {"trials": 6, "device": device, "precision": precision_tag(Precision.auto, torch.device(device))}
    checks = judge(read_store(f"sqlite:///{work / 'mlflow.db'}"), expect, work / "report")
    for verdict, name, detail in checks:
        print(f"{verdict} {name}: {detail}")
    (work / "checks.json").write_text(json.dumps(checks, indent=2))
    return 1 if any(verdict == "FAIL" for verdict, _, _ in checks) else 0


def run_grid(kit: Path, manifest: dict, work: Path, smoke: bool, log: Log) -> dict:
    """Versions, the grid, the report and the checks, each a step whose exit status is kept."""
    env = environment(work / "site", work)
    log.say(f"model unpacked into {unpack_model(kit, manifest, work)}")
    rc, lines = log.run([sys.executable, "-c", VERSIONS], env)
    versions: dict = next((json.loads(x[len("VERSIONS ") :]) for x in lines if x.startswith("VERSIONS ")), {})
    steps = {"versions": rc}
    if rc == 0 and not smoke and versions.get("device") == "cpu":
        log.say("FAIL no CUDA device here: the full grid is for the GPU machine (use --cpu-smoke on a CPU)")
        return {"versions": versions, "steps": {**steps, "cuda": 1}}
    grid = [sys.executable, "-m", "ftsweep", "-m", *overrides(kit, manifest, work, smoke)]
    steps["grid"], _ = log.run(grid, env)
    report = [sys.executable, "-m", "ftsweep.report", "--experiment", EXPERIMENT, "--out", str(work / "report")]
    steps["report"], _ = log.run(report, env)
    check_cmd = [sys.executable, str(Path(__file__).resolve()), "--check", str(work), *(["--cpu-smoke"] * smoke)]
    steps["checks"], _ = log.run(check_cmd, env)
    return {"versions": versions, "steps": steps}


def collect(work: Path, out: Path) -> None:
    """The store and the report into OUT (a handful of files; the kept models' weights stay in WORK)."""
    if (work / "mlflow.db").is_file():
        shutil.copy2(work / "mlflow.db", out / "mlflow.db")
    (out / "report").mkdir(exist_ok=True)
    for name in REPORT_FILES:
        if (work / "report" / name).is_file():
            shutil.copy2(work / "report" / name, out / "report" / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kit", type=Path, nargs="?", help="the kit's folder (benchmarks/gpu_kit.py build)")
    ap.add_argument("out", type=Path, nargs="?", help="where the store, the report and the log go")
    ap.add_argument("--cpu-smoke", action="store_true", help="CPU, 64 train / 32 eval reviews, 64 tokens, 2 steps")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    ap.add_argument("--find-links", type=Path, action="append", default=[], help="more wheels (another Python's)")
    ap.add_argument("--check", type=Path, metavar="WORK", help="only judge a finished grid in WORK")
    args = ap.parse_args(argv)
    if args.check:
        return check(args.check, args.cpu_smoke)
    if args.kit is None or args.out is None:
        ap.error("give KIT and OUT")
    kit, out = args.kit.resolve(), args.out.resolve()
    work = (args.work or Path(tempfile.mkdtemp(prefix="ftsweep-kit-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((kit / "manifest.json").read_text())
    log = Log(out / "kit_run.log")
    log.say(f"kit {kit} (built {manifest['built']} from {manifest['git_commit']}), work {work}, out {out}")
    result: dict = {"steps": {"install": install(kit, manifest, work / "site", args.find_links, log)}}
    if result["steps"]["install"] == 0:
        ran = run_grid(kit, manifest, work, args.cpu_smoke, log)
        result = {"versions": ran["versions"], "steps": {**result["steps"], **ran["steps"]}}
    checks = work / "checks.json"
    result["checks"] = json.loads(checks.read_text()) if checks.is_file() else []
    collect(work, out)
    (out / "kit_run.json").write_text(json.dumps({"cpu_smoke": args.cpu_smoke, **result}, indent=2) + "\n")
    failed = [name for name, rc in result["steps"].items() if rc != 0]
    log.say(f"{'FAIL' if failed else 'PASS'} kit run: {'steps failed: ' + ', '.join(failed) if failed else 'all'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
