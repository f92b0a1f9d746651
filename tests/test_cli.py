"""The entry point as a user types it: `python -m ftsweep ...` in a subprocess."""

import os

import pytest

from tests.conftest import error_lines, run_statuses, toy_rows, write_csv


@pytest.mark.parametrize(
    "args, message",
    [
        (["lr=-1"], "lr must be > 0"),
        (["lr=0"], "lr must be > 0"),
        (["epochs=0"], "epochs must be >= 1"),
        (["data=local", "data.train_file={toy}", "data.max_length=1024"], "above model 'tiny' limit of 512"),
        (["data=local", "data.train_file={toy}", "data.text_column=body"], "no text column 'body'"),
        (["data=local", "data.train_file={empty}"], "is empty"),
        (["data=local", "data.train_file={toy}", "data.eval_file={unseen}"], "eval labels never seen in training"),
        (["data=local", "data.train_file={parquet}"], "no text column 'text' (columns: body, y)"),
        (["data=local", "data.train_file={json}"], "no label column 'label'"),
        (["batch_size=0"], "batch_size must be >= 1"),
        (["method=lorra"], "Could not find 'method/lorra'"),
        (["lrr=1"], "Could not override 'lrr'"),
        (["data=local", "data.train_file=/nope/train.csv"], "data file not found: /nope/train.csv"),
        (["data=local", "data.train_file={toy}", "data.label_column=y"], "no label column 'y'"),
        (["data=local", "data.train_file={one}"], "only one class"),
        (["data=local", "data.train_file={latin}"], "set data.encoding"),
        (
            ["data=local", "data.train_file={toy}", "method=lora", "method.target_modules=[nope]"],
            "method.target_modules=['nope']",
        ),
    ],
)
def test_bad_input_exits_non_zero_with_one_clear_line(cli, tmp_path, args, message):
    toy = write_csv(tmp_path / "toy.csv", toy_rows(20))
    one = write_csv(tmp_path / "one.csv", [(t, "pos") for t, _ in toy_rows(20)])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,pos\nbad,neg\n".encode("latin-1"))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    unseen = write_csv(tmp_path / "unseen.csv", [("so so", "neutral"), ("great", "pos")])
    parquet = tmp_path / "wrong.parquet"
    import pandas as pd

    pd.DataFrame({"body": ["a", "b"], "y": [0, 1]}).to_parquet(parquet)
    json_file = tmp_path / "wrong.jsonl"
    json_file.write_text('{"text": "a", "stars": 1}\n{"text": "b", "stars": 2}\n')
    args = [
        a.format(toy=toy, one=one, latin=latin, empty=empty, unseen=unseen, parquet=parquet, json=json_file)
        for a in args
    ]
    proc = cli.run("model=tiny", *args)
    [line] = error_lines(proc.stderr)  # Hydra's own composition errors too: one line, exit 2
    assert message in line and proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "RUNNING" not in run_statuses()


@pytest.mark.slow
def test_lora_on_the_real_minilm_end_to_end(cli):
    """`python -m ftsweep method=lora lr=2e-4` on the embedded MiniLM and real IMDB, with small caps."""
    proc = cli.run(
        "method=lora",
        "lr=2e-4",
        "data.max_train_samples=64",
        "data.max_eval_samples=32",
        "data.max_length=64",
        "progress_bar=false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "lora-r8-lr2e-4-bs16"
    assert run.data.tags["model"] == "minilm"
    assert run.data.metrics["params/total"] > 22_000_000
    assert run.data.metrics["params/trainable_pct"] < 2
    # the summary line the user sees reports the accuracy that MLflow holds
    assert f"eval/accuracy={run.data.metrics['eval/accuracy']:.4g}" in proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """ftsweep's wheel installed into a throwaway venv that reuses this environment's dependencies."""
    import site
    import subprocess
    import sys

    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = (root / "dist").glob("ftsweep-*.whl")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    [site_dir] = env_dir.glob("lib/python*/site-packages")
    # The dependencies, not ftsweep: a path in a .pth file adds the folder but runs none of its own .pth files,
    # so the editable install of this checkout stays out of the throwaway venv.
    (site_dir / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return env_dir / "bin"


def test_the_wheel_runs_anywhere_with_its_configs_and_a_users_own_config_group(installed_wheel, tmp_path):
    import subprocess

    work = tmp_path / "elsewhere"
    (work / "conf" / "data").mkdir(parents=True)
    toy = write_csv(work / "toy.csv", toy_rows(48))
    # a user's own config group option, added without copying ftsweep's conf/
    (work / "conf" / "data" / "mydata.yaml").write_text(
        f"defaults:\n  - base_local\nname: mydata\ntrain_file: {toy}\nmax_length: 32\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*cmd):
        return subprocess.run(
            [str(installed_wheel / cmd[0]), *cmd[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )

    where = run("python", "-c", "import ftsweep, ftsweep.config as c; print(ftsweep.__file__); print(c.CONF_DIR)")
    assert str(installed_wheel.parent) in where.stdout and "/ftsweep/conf" in where.stdout, where.stdout + where.stderr
    base = ["model=tiny", "progress_bar=false", "max_steps=2"]
    script = run("ftsweep", "method=lora", "data=mydata", *base)
    assert script.returncode == 0, script.stderr[-3000:]
    module = run("python", "-m", "ftsweep", "data=local", f"data.train_file={toy}", *base)
    assert module.returncode == 0, module.stderr[-3000:]
    swept = run("python", "-m", "ftsweep", "-m", "data=mydata", "batch_size=8,16", *base)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert run_statuses() == ["FINISHED"] * 5  # two single runs, a sweep's parent and its two trials
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_experiment_by_name("mydata") is not None


def test_the_console_script_stops_on_sigterm_like_python_m_ftsweep(installed_wheel, tmp_path):
    import signal
    import subprocess
    import time

    toy = write_csv(tmp_path / "toy.csv", toy_rows(64))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [
            str(installed_wheel / "ftsweep"),
            "model=tiny",
            "data=local",
            f"data.train_file={toy}",
            "progress_bar=false",
            "epochs=100000",
            "log_every_steps=5",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while "RUNNING" not in run_statuses() and time.time() < deadline:
        time.sleep(0.3)
    time.sleep(2)  # training, past start-up
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "MLflow run is marked KILLED" in err and "Traceback" not in err
    assert run_statuses() == ["KILLED"]
