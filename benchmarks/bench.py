"""`make bench`: ftsweep's training step against a bare PyTorch loop, the Hugging Face Trainer and the
machine's own matmul limit; padding strategies; every method side by side; eval throughput; GP against TPE
on one small search (benchmarks/samplers.py).

Everything is measured in this one run, side by side, alternating A/B where two things are compared,
and reported as median and min-max over repeats. Writes benchmarks/results.json and rewrites the
results table in benchmarks/README.md. Not a test: it asserts nothing and takes minutes.

    python benchmarks/bench.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ftsweep.batches import LengthGroupedBatchSampler, PadCollator, make_loader, tokenize  # noqa: E402
from ftsweep.compose import compose_config  # noqa: E402
from ftsweep.config import LoraMethodConfig, MethodConfig, OptimizerConfig, Truncation, validate  # noqa: E402
from ftsweep.data import load_splits  # noqa: E402
from ftsweep.evaluation import evaluate  # noqa: E402
from ftsweep.loop import LoopSettings, fit  # noqa: E402
from ftsweep.metrics import PeakMemory, optimizer_state_mb, step_time_stats, tensor_mb  # noqa: E402
from ftsweep.model import apply_method, count_params, load_model, load_tokenizer  # noqa: E402
from ftsweep.optim import build_optimizer, build_scheduler  # noqa: E402

BATCH, LENGTH = 16, 128
OPT = OptimizerConfig(name="adamw", weight_decay=0.01, warmup_ratio=0.0)


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- fixtures
class Setup:
    def __init__(self, n_train: int):
        cfg = validate(compose_config("data.max_train_samples=%d" % n_train, "data.max_eval_samples=256"))
        self.cfg = cfg
        self.splits = load_splits(cfg.data)
        self.tokenizer = load_tokenizer(cfg.model)
        self.pad_id = self.tokenizer.pad_token_id

    def ids(self, texts, length: int, truncation=Truncation.head_tail):
        return tokenize(texts, self.tokenizer, length, truncation)

    def model(self, method: MethodConfig, total_steps: int = 100):
        torch.manual_seed(0)
        return apply_method(
            load_model(self.cfg.model, self.splits.label_names, self.tokenizer, method), method, total_steps
        )

    def fixed_batches(self, n: int, length: int = LENGTH) -> list[dict]:
        ids = self.ids(self.splits.train_texts[: n * BATCH], length)
        collate = PadCollator(self.pad_id)
        return [
            collate(list(zip(ids[i * BATCH : (i + 1) * BATCH], self.splits.train_labels[i * BATCH : (i + 1) * BATCH])))
            for i in range(n)
        ]


FULL = MethodConfig(name="full", lr=5e-5)
LORA = LoraMethodConfig(name="lora", lr=5e-4)


def ftsweep_steps(
    setup: Setup, method: MethodConfig, batches: list[dict], fused: bool = True, state: dict | None = None
) -> list[float]:
    """ftsweep's own loop (ftsweep.loop.fit) over the given batches; returns per-step seconds. `state`, when
    given, receives the training state's parts in MB, as a run logs them (mem/train_state_mb)."""
    model = setup.model(method)
    opt = build_optimizer(model, OPT, method.lr, fused=fused)
    sched = build_scheduler(opt, OPT, len(batches))
    empty_eval = [
        {
            "input_ids": batches[0]["input_ids"][:1],
            "attention_mask": batches[0]["attention_mask"][:1],
            "labels": batches[0]["labels"][:1],
        }
    ]
    settings = LoopSettings(
        total_steps=len(batches),
        epochs=1,
        num_labels=2,
        max_grad_norm=1.0,
        log_every_steps=len(batches),
        progress=False,
    )
    result = fit(model, batches, empty_eval, opt, sched, settings, torch.device("cpu"))
    if state is not None:
        state.update(
            params_mb=tensor_mb(model.parameters()),
            grads_mb=result.grads_mb,
            optimizer_state_mb=optimizer_state_mb(opt),
            activations_saved_mb=result.activations_saved_mb,
        )
        state["train_state_mb"] = sum(state.values())
    return result.step_times_s


def bare_steps(setup: Setup, method: MethodConfig, batches: list[dict]) -> list[float]:
    """The plainest loop that does the same work: forward, loss, backward, clip, step, schedule."""
    model = setup.model(method)
    model.train()
    opt = build_optimizer(model, OPT, method.lr)
    sched = build_scheduler(opt, OPT, len(batches))
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def steady(times: list[float]) -> float:
    """Median step seconds, warm-up skipped exactly as ftsweep reports perf/step_time_ms."""
    return step_time_stats(times)["perf/step_time_ms"] / 1000


def alternating(repeats: int, cases: dict[str, Callable[[], Any]]) -> dict[str, list]:
    """Run every case once per repeat, reversing the order on odd repeats so no side always goes first."""
    results: dict[str, list] = {name: [] for name in cases}
    for r in range(repeats):
        for name in list(cases) if r % 2 == 0 else list(cases)[::-1]:
            results[name].append(cases[name]())
    return results


# --------------------------------------------------------------------------- 1. framework overhead
def bench_overhead(setup: Setup, steps: int, repeats: int) -> dict:
    batches = setup.fixed_batches(steps)
    out = {}
    for method in (FULL, LORA):
        runs = alternating(
            repeats,
            {
                "ftsweep": lambda m=method: steady(ftsweep_steps(setup, m, batches)) * 1000,
                "bare": lambda m=method: steady(bare_steps(setup, m, batches)) * 1000,
            },
        )
        a, b = runs["ftsweep"], runs["bare"]
        out[method.name] = {
            "ftsweep_step_ms": stats(a),
            "bare_step_ms": stats(b),
            "overhead_vs_bare_loop": statistics.median(a) / statistics.median(b),
        }
        print(
            f"[overhead] {method.name}: ftsweep {statistics.median(a):.0f} ms, bare {statistics.median(b):.0f} ms",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- 2. vs the HF Trainer
def bench_hf_trainer(setup: Setup, steps: int, repeats: int) -> dict:
    """The Trainer as in transformers' run_glue example: pad to max_length (128), AdamW, linear schedule."""
    import datasets
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    n = steps * BATCH
    texts, labels = setup.splits.train_texts[:n], setup.splits.train_labels[:n]
    enc = setup.tokenizer(texts, padding="max_length", truncation=True, max_length=LENGTH)
    hf_data = datasets.Dataset.from_dict({**enc, "labels": labels})
    ids = setup.ids(texts, LENGTH, Truncation.head)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    def hf_run() -> tuple[float, float]:
        model = setup.model(FULL)
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as tmp:
            targs = TrainingArguments(
                output_dir=tmp,
                per_device_train_batch_size=BATCH,
                max_steps=steps,
                learning_rate=FULL.lr,
                weight_decay=0.01,
                warmup_steps=0,
                lr_scheduler_type="linear",
                max_grad_norm=1.0,
                logging_strategy="no",
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                seed=0,
                dataloader_num_workers=0,
                use_cpu=True,
            )
            trainer = Trainer(
                model=model, args=targs, train_dataset=hf_data, data_collator=default_data_collator, callbacks=[timer]
            )
            t0 = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - t0
        return wall, steady(timer.times)

    def ftsweep_run() -> tuple[float, float]:
        model = setup.model(FULL)
        loader = make_loader(ids, labels, BATCH, setup.pad_id, shuffle=True, seed=0)  # dynamic padding
        opt = build_optimizer(model, OPT, FULL.lr)
        sched = build_scheduler(opt, OPT, steps)
        t0 = time.perf_counter()
        settings = LoopSettings(
            total_steps=steps, epochs=1, num_labels=2, max_grad_norm=1.0, log_every_steps=steps, progress=False
        )
        result = fit(model, loader, [next(iter(loader))], opt, sched, settings, torch.device("cpu"))
        wall = time.perf_counter() - t0 - result.eval_time_s
        return wall, steady(result.step_times_s)

    runs = alternating(repeats, {"hf": hf_run, "fs": ftsweep_run})
    hf_wall, hf_step = [w for w, _ in runs["hf"]], [s * 1000 for _, s in runs["hf"]]
    fs_wall, fs_step = [w for w, _ in runs["fs"]], [s * 1000 for _, s in runs["fs"]]
    out = {
        "hf_train_wall_s": stats(hf_wall),
        "ftsweep_train_wall_s": stats(fs_wall),
        "hf_step_ms": stats(hf_step),
        "ftsweep_step_ms": stats(fs_step),
        "speedup_vs_hf_trainer_wall": statistics.median(hf_wall) / statistics.median(fs_wall),
        "speedup_vs_hf_trainer_step": statistics.median(hf_step) / statistics.median(fs_step),
        "note": f"{steps} steps, batch {BATCH}, lr {FULL.lr}; Trainer pads to {LENGTH} (run_glue default), "
        f"ftsweep pads per batch",
    }
    print(
        f"[hf] wall speedup {out['speedup_vs_hf_trainer_wall']:.3f}, step {out['speedup_vs_hf_trainer_step']:.3f}",
        flush=True,
    )
    return out


# --------------------------------------------------------------------------- 3. padding strategies
def bench_padding(setup: Setup, n_batches: int, repeats: int) -> dict:
    out = {}
    n = n_batches * BATCH
    texts, labels = setup.splits.train_texts[:n], setup.splits.train_labels[:n]
    for length in (256, 512):
        ids = setup.ids(texts, length, Truncation.head)
        collate = PadCollator(setup.pad_id)
        plans = {
            "pad_to_max": [
                collate(
                    [
                        (x + [setup.pad_id] * (length - len(x)), y)
                        for x, y in zip(ids[i : i + BATCH], labels[i : i + BATCH])
                    ]
                )
                for i in range(0, n, BATCH)
            ],
            "dynamic": [collate(list(zip(ids[i : i + BATCH], labels[i : i + BATCH]))) for i in range(0, n, BATCH)],
            "dynamic_grouped": [
                collate([(ids[j], labels[j]) for j in b])
                for b in LengthGroupedBatchSampler([len(x) for x in ids], BATCH, seed=0)
            ],
        }

        def samples_per_s(batches: list[dict]) -> float:
            model = setup.model(FULL)
            opt = build_optimizer(model, OPT, FULL.lr)
            t0 = time.perf_counter()
            for batch in batches:
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return n / (time.perf_counter() - t0)

        res = alternating(repeats, {name: (lambda b=batches: samples_per_s(b)) for name, batches in plans.items()})
        tokens = {k: sum(int(b["input_ids"].numel()) for b in v) for k, v in plans.items()}
        out[str(length)] = {
            **{f"{k}_samples_per_s": stats(v) for k, v in res.items()},
            "padded_tokens": tokens,
            "real_tokens": sum(len(x) for x in ids),
            "dynamic_padding_speedup": statistics.median(res["dynamic"]) / statistics.median(res["pad_to_max"]),
            "grouped_speedup": statistics.median(res["dynamic_grouped"]) / statistics.median(res["pad_to_max"]),
        }
        print(
            f"[padding] {length}: dynamic x{out[str(length)]['dynamic_padding_speedup']:.2f}, "
            f"grouped x{out[str(length)]['grouped_speedup']:.2f}",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- 4. against the limit
def matmul_gflops(size: int = 2048, reps: int = 10) -> float:
    return 2 * size**3 / _mm_seconds(size, size, size, reps=reps, warmup=3) / 1e9


def step_flops(setup: Setup, method: MethodConfig, tokens_per_seq: int) -> dict:
    model = setup.model(method)
    cfg = model.config
    embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "embeddings" not in n and "lora_" not in n and "modules_to_save" not in n
    )
    tokens = BATCH * tokens_per_seq
    attention = 12 * cfg.num_hidden_layers * BATCH * tokens_per_seq**2 * cfg.hidden_size  # QK^T and AV, fwd+bwd
    if method.name == "full":
        flops, formula = 6 * base * tokens + attention, "6 * N_nonembed * tokens + 12 * L * B * T^2 * H"
    else:  # frozen base: forward + input-gradient only (4N); adapters: forward + both gradients (6N)
        flops, formula = (
            4 * base * tokens + 6 * lora * tokens + attention,
            "4 * N_base * tokens + 6 * N_lora * tokens + 12 * L * B * T^2 * H",
        )
    return {
        "flops_per_step": flops,
        "formula": formula,
        "non_embedding_params": base,
        "embedding_params": embed,
        "lora_params": lora,
    }


def _mm_seconds(m: int, k: int, n: int, batch: int = 1, reps: int = 5, warmup: int = 2) -> float:
    """Median seconds of one (m x k) @ (k x n) product (batched when batch > 1), as torch runs it here."""
    a, b = (torch.randn(batch, m, k), torch.randn(batch, k, n)) if batch > 1 else (torch.randn(m, k), torch.randn(k, n))
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_ceiling(model, tokens_per_seq: int) -> dict:
    """The matmul throughput this machine reaches on the shapes one training step runs, weighted by their FLOPs.

    Every nn.Linear runs its forward product, its input-gradient product and (when it trains) its weight-gradient
    product; attention runs QK^T and AV forward and two products each backward. Each distinct shape is timed with
    torch alone; the ceiling is their FLOPs over their summed time. An MFU against it means the same on any CPU:
    how close the step comes to the GEMMs it cannot avoid, at the sizes it must run them."""
    tokens = BATCH * tokens_per_seq
    shapes: dict[tuple, int] = {}  # (m, k, n, batch) -> how many per step
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            rows = BATCH if "pooler" in name or "classifier" in name else tokens  # these see one vector a review
            i, o = mod.in_features, mod.out_features
            for shape in [(rows, i, o, 1), (rows, o, i, 1)] + ([(o, rows, i, 1)] if mod.weight.requires_grad else []):
                shapes[shape] = shapes.get(shape, 0) + 1
    cfg = model.config
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    t = tokens_per_seq
    for shape in [(t, d, t, BATCH * heads)] * 3 + [(t, t, d, BATCH * heads)] * 3:  # fwd + 2 grads each
        shapes[shape] = shapes.get(shape, 0) + cfg.num_hidden_layers
    flops = seconds = 0.0
    for (m, k, n, b), count in shapes.items():
        flops += count * 2 * m * k * n * b
        seconds += count * _mm_seconds(m, k, n, b)
    return {
        "gemm_flops_per_step": flops,
        "gemm_seconds_per_step": seconds,
        "gemm_ceiling_gflops": flops / seconds / 1e9,
        "distinct_shapes": len(shapes),
    }


def bench_mfu(setup: Setup, overhead: dict) -> dict:
    peak = statistics.median([matmul_gflops() for _ in range(3)])
    batches = setup.fixed_batches(2)
    seq = int(batches[0]["input_ids"].shape[1])
    out = {"matmul_gflops": peak, "threads": torch.get_num_threads()}
    for method in (FULL, LORA):
        f = step_flops(setup, method, seq)
        step_s = overhead[method.name]["ftsweep_step_ms"]["median"] / 1000
        achieved = f["flops_per_step"] / step_s / 1e9
        ceiling = gemm_ceiling(setup.model(method), seq)
        out[method.name] = {
            **f,
            **ceiling,
            "achieved_gflops": achieved,
            "mfu_vs_matmul_peak": achieved / peak,
            "mfu_vs_gemm_ceiling": achieved / ceiling["gemm_ceiling_gflops"],
            "gemm_time_share_of_step": ceiling["gemm_seconds_per_step"] / step_s,
        }
        print(
            f"[mfu] {method.name}: {achieved:.1f} GFLOP/s of {peak:.1f} -> {achieved / peak:.2f}; shape ceiling "
            f"{ceiling['gemm_ceiling_gflops']:.1f} -> {achieved / ceiling['gemm_ceiling_gflops']:.2f}",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- 5. methods side by side
def bench_methods(setup: Setup, steps: int) -> dict:
    from ftsweep.config import AdaLoraMethodConfig, FreezeMethodConfig, IA3MethodConfig, PromptTuningMethodConfig

    methods = [
        FULL,
        LORA,
        MethodConfig(name="head", lr=1e-3),
        MethodConfig(name="bitfit", lr=1e-3),
        FreezeMethodConfig(name="freeze", lr=5e-5),
        IA3MethodConfig(name="ia3", lr=5e-3),
        PromptTuningMethodConfig(name="prompt_tuning", lr=1e-2),
        AdaLoraMethodConfig(name="adalora", lr=5e-4, target_modules=["query", "key", "value"]),
    ]
    batches = setup.fixed_batches(steps)
    out = {}
    for method in methods:
        meter = PeakMemory(torch.device("cpu")).start()
        state: dict = {}
        times = ftsweep_steps(setup, method, batches, state=state)
        peak = meter.stop()["mem/cpu_peak_rss_mb"]
        model = setup.model(method)
        trainable, total = count_params(model)
        step = steady(times)
        out[method.name] = {
            "step_ms": step * 1000,
            "samples_per_s": BATCH / step,
            "peak_rss_mb": peak,
            "trainable_pct": 100 * trainable / total,
            **state,
        }
        print(
            f"[methods] {method.name}: {step * 1000:.0f} ms/step, {peak:.0f} MB RSS, train state "
            f"{state['train_state_mb']:.0f} MB",
            flush=True,
        )
    out["qlora"] = "not measured: CUDA only (see docs/benchmarks.md, GPU check)"
    return out


# --------------------------------------------------------------------------- 6. eval throughput
def bench_eval(setup: Setup, repeats: int) -> dict:
    ids = setup.ids(setup.splits.eval_texts[:256], LENGTH)
    labels = setup.splits.eval_labels[:256]
    out = {}
    cases = []
    for bs in (16, 32, 64):
        cases.append((f"full_bs{bs}", FULL, bs, False))
    cases += [("lora_bs32_unmerged", LORA, 32, False), ("lora_bs32_merged", LORA, 32, True)]
    for name, method, bs, merge in cases:
        model = setup.model(method)
        if merge:
            model = model.merge_and_unload()
        loader = make_loader(ids, labels, bs, setup.pad_id, shuffle=False, seed=0)
        evaluate(model, [next(iter(loader))], torch.device("cpu"), 2)  # warm-up
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            evaluate(model, loader, torch.device("cpu"), 2)
            rates.append(len(labels) / (time.perf_counter() - t0))
        out[name] = stats(rates)
        print(f"[eval] {name}: {statistics.median(rates):.0f} samples/s", flush=True)
    return out


def bench_eval_sorted(setup: Setup, repeats: int, n: int = 192) -> dict:
    """Eval samples/s with batches in the data's order (before) and longest first (after, ftsweep's eval
    loader), at 128 and 512 tokens; the accuracy of both, which must be the same."""
    from torch.utils.data import DataLoader

    from ftsweep.batches import EncodedDataset

    labels = setup.splits.eval_labels[:n]
    out = {}
    model = setup.model(FULL)
    for length in (128, 512):
        ids = setup.ids(setup.splits.eval_texts[:n], length)
        loaders = {
            "before": DataLoader(EncodedDataset(ids, labels), batch_size=32, collate_fn=PadCollator(setup.pad_id)),
            "after": make_loader(ids, labels, 32, setup.pad_id, shuffle=False, seed=0),
        }
        accuracy = {}

        def rate(name: str, loaders: dict = loaders, accuracy: dict = accuracy) -> float:  # this length's
            t0 = time.perf_counter()
            accuracy[name] = evaluate(model, loaders[name], torch.device("cpu"), 2)["accuracy"]
            return n / (time.perf_counter() - t0)

        evaluate(model, [next(iter(loaders["after"]))], torch.device("cpu"), 2)  # warm-up
        res = alternating(repeats, {name: (lambda k=name: rate(k)) for name in loaders})
        padded = {k: sum(int(b["input_ids"].numel()) for b in v) for k, v in loaders.items()}
        out[str(length)] = {
            **{f"{k}_samples_per_s": stats(v) for k, v in res.items()},
            "speedup": statistics.median(res["after"]) / statistics.median(res["before"]),
            "padded_tokens": padded,
            "real_tokens": sum(len(x) for x in ids),
            "accuracy": accuracy,
            "same_accuracy": accuracy["before"] == accuracy["after"],
        }
        print(f"[eval sorted] {length}: x{out[str(length)]['speedup']:.2f}, accuracy {accuracy}", flush=True)
    return out


# --------------------------------------------------------------------------- LoRA against full, op by op
CATEGORIES = {
    "dropout masks (bernoulli_)": ("aten::bernoulli_",),
    "matmuls": ("aten::mm", "aten::addmm", "aten::bmm"),
    "optimizer": ("aten::_fused_adamw_",),
}


def _profile_step_ms(setup: Setup, method: MethodConfig, batches: list[dict]) -> dict[str, float]:
    """Self CPU time per step by category, from torch.profiler over len(batches) - 2 steps after 2 warm-ups."""
    from torch.profiler import ProfilerActivity, profile

    model = setup.model(method)
    model.train()
    opt = build_optimizer(model, OPT, method.lr)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[2:]:
            step(batch)
    n = len(batches) - 2
    ops = {e.key: e.self_cpu_time_total / 1000 / n for e in prof.key_averages()}
    out = {cat: sum(ops.get(k, 0.0) for k in keys) for cat, keys in CATEGORIES.items()}
    out["everything else"] = sum(ops.values()) - sum(out.values())
    out["total"] = sum(ops.values())
    return out


def bench_lora(setup: Setup, steps: int, repeats: int) -> dict:
    """Where LoRA's step goes against full fine-tuning's (profiled): before, with lora_dropout=0.1 (the old
    default), and after, with 0.0 (the default since the accuracy parity in results/gpu_lora_dropout_*.json)."""
    batches = setup.fixed_batches(steps)
    before = LoraMethodConfig(name="lora", lr=LORA.lr, lora_dropout=0.1)
    after = LoraMethodConfig(name="lora", lr=LORA.lr, lora_dropout=0.0)
    profiles = {
        "full": _profile_step_ms(setup, FULL, batches[:5]),
        "lora": _profile_step_ms(setup, before, batches[:5]),
        "lora_dropout_0": _profile_step_ms(setup, after, batches[:5]),
    }
    runs = alternating(
        repeats,
        {
            "full": lambda: steady(ftsweep_steps(setup, FULL, batches)) * 1000,
            "lora": lambda: steady(ftsweep_steps(setup, before, batches)) * 1000,
            "lora_dropout_0": lambda: steady(ftsweep_steps(setup, after, batches)) * 1000,
        },
    )
    flops = {
        m.name: step_flops(setup, m, int(batches[0]["input_ids"].shape[1]))["flops_per_step"] for m in (FULL, LORA)
    }
    out = {
        "profile_ms_per_step": profiles,
        "step_ms": {k: stats(v) for k, v in runs.items()},
        "flops_ratio_lora_vs_full": flops["lora"] / flops["full"],
    }
    for k in ("lora", "lora_dropout_0"):
        out[f"{k}_vs_full_step"] = statistics.median(runs[k]) / statistics.median(runs["full"])
    print(
        f"[lora] step vs full {out['lora_vs_full_step']:.2f} (FLOPs {out['flops_ratio_lora_vs_full']:.2f}); without "
        f"its dropout {out['lora_dropout_0_vs_full_step']:.2f}; profile {profiles}",
        flush=True,
    )
    return out


def bench_cpu_bf16(setup: Setup, steps: int, repeats: int) -> dict:
    """precision=bf16 against fp32 on this CPU (autocast; fast where the CPU has AMX or AVX512-BF16): the
    training step and eval throughput. Accuracy parity is the bf16_parity section's (benchmarks/runs.py)."""
    from ftsweep.config import Precision

    batches = setup.fixed_batches(steps)
    ids = setup.ids(setup.splits.eval_texts[:128], LENGTH)
    loader = make_loader(ids, setup.splits.eval_labels[:128], 32, setup.pad_id, shuffle=False, seed=0)
    model = setup.model(FULL)

    def train_step(precision: Precision) -> float:
        m = setup.model(FULL)
        opt = build_optimizer(m, OPT, FULL.lr)
        settings = LoopSettings(
            total_steps=len(batches),
            epochs=1,
            num_labels=2,
            max_grad_norm=1.0,
            log_every_steps=len(batches),
            progress=False,
            precision=precision,
        )
        return (
            steady(
                fit(
                    m,
                    batches,
                    [batches[0]],
                    opt,
                    build_scheduler(opt, OPT, len(batches)),
                    settings,
                    torch.device("cpu"),
                ).step_times_s
            )
            * 1000
        )

    def eval_rate(precision: Precision) -> float:
        t0 = time.perf_counter()
        evaluate(model, loader, torch.device("cpu"), 2, precision)
        return 128 / (time.perf_counter() - t0)

    evaluate(model, [next(iter(loader))], torch.device("cpu"), 2, Precision.bf16)  # warm-up
    step = alternating(repeats, {p.value: (lambda q=p: train_step(q)) for p in (Precision.fp32, Precision.bf16)})
    rate = alternating(repeats, {p.value: (lambda q=p: eval_rate(q)) for p in (Precision.fp32, Precision.bf16)})
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    amx = ", ".join(f for f in ("amx_bf16", "avx512_bf16") if f in flags) or "no bf16 matrix instructions"
    out = {
        "cpu_capability": amx,
        "step_ms": {k: stats(v) for k, v in step.items()},
        "eval_samples_per_s": {k: stats(v) for k, v in rate.items()},
        "train_speedup": statistics.median(step["fp32"]) / statistics.median(step["bf16"]),
        "eval_speedup": statistics.median(rate["bf16"]) / statistics.median(rate["fp32"]),
    }
    print(f"[cpu bf16] train x{out['train_speedup']:.2f}, eval x{out['eval_speedup']:.2f} ({amx})", flush=True)
    return out


# --------------------------------------------------------------------------- 7. before/after
def bench_before_after(setup: Setup, steps: int, repeats: int) -> dict:
    """The optimisation these numbers led to: AdamW's fused implementation instead of foreach (before)."""
    batches = setup.fixed_batches(steps)
    out = {}
    for method in (FULL, LORA):
        runs = alternating(
            repeats,
            {
                "before": lambda m=method: steady(ftsweep_steps(setup, m, batches, fused=False)) * 1000,
                "after": lambda m=method: steady(ftsweep_steps(setup, m, batches, fused=True)) * 1000,
            },
        )
        before, after = runs["before"], runs["after"]
        out[method.name] = {
            "before_foreach_step_ms": stats(before),
            "after_fused_step_ms": stats(after),
            "speedup": statistics.median(before) / statistics.median(after),
        }
        print(
            f"[before/after] {method.name}: foreach {statistics.median(before):.0f} ms -> fused "
            f"{statistics.median(after):.0f} ms",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- report
def write_readme(results: dict) -> None:
    r = results
    m = r["meta"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads), torch "
        f"{m['torch']}, transformers {m['transformers']}; MiniLM-L6, batch {BATCH}, {LENGTH} tokens unless said; "
        f"median (min-max) of {m['repeats']} repeats, A/B alternating. Wall time of the whole bench: "
        f"{m['bench_wall_s']:.0f} s.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
    ]
    for name in ("full", "lora"):
        o = r["overhead"][name]
        lines.append(
            f"| overhead_vs_bare_loop ({name}) | **{o['overhead_vs_bare_loop']:.3f}** (ftsweep "
            f"{o['ftsweep_step_ms']['median']:.0f} ms [{o['ftsweep_step_ms']['min']:.0f}-"
            f"{o['ftsweep_step_ms']['max']:.0f}], bare {o['bare_step_ms']['median']:.0f} ms "
            f"[{o['bare_step_ms']['min']:.0f}-{o['bare_step_ms']['max']:.0f}]) | <= 1.02 |"
        )
    h = r["hf_trainer"]
    lines.append(
        f"| speedup_vs_hf_trainer, whole training | **{h['speedup_vs_hf_trainer_wall']:.3f}** (HF "
        f"{h['hf_train_wall_s']['median']:.1f} s, ftsweep {h['ftsweep_train_wall_s']['median']:.1f} s) | >= 1.0 |"
    )
    lines.append(
        f"| speedup_vs_hf_trainer, step | **{h['speedup_vs_hf_trainer_step']:.3f}** (HF "
        f"{h['hf_step_ms']['median']:.0f} ms, ftsweep {h['ftsweep_step_ms']['median']:.0f} ms) | >= 1.0 |"
    )
    for length, p in r["padding"].items():
        lines.append(
            f"| dynamic_padding_speedup at {length} tokens | **{p['dynamic_padding_speedup']:.2f}** "
            f"(+ length grouping: {p['grouped_speedup']:.2f}; pad-to-max "
            f"{p['pad_to_max_samples_per_s']['median']:.1f} samples/s; real/padded tokens "
            f"{p['real_tokens']}/{p['padded_tokens']['pad_to_max']}) | > 1 |"
        )
    f = r["mfu"]
    lines.append(f"| fp32 matmul peak (2048^2, torch) | {f['matmul_gflops']:.1f} GFLOP/s | |")
    for name in ("full", "lora"):
        lines.append(
            f"| mfu_vs_matmul_peak ({name}) | **{f[name]['mfu_vs_matmul_peak']:.2f}** "
            f"({f[name]['achieved_gflops']:.1f} GFLOP/s; {f[name]['formula']}) | "
            f"{'>= 0.65' if name == 'full' else ''} |"
        )
        if "mfu_vs_gemm_ceiling" in f[name]:
            lines.append(
                f"| mfu_vs_gemm_ceiling ({name}) | **{f[name]['mfu_vs_gemm_ceiling']:.2f}** (the step's own "
                f"{f[name]['distinct_shapes']} GEMM shapes run at {f[name]['gemm_ceiling_gflops']:.1f} GFLOP/s "
                f"alone; they are {100 * f[name]['gemm_time_share_of_step']:.0f} % of the step's time) | |"
            )
    lines += [
        "",
        "| method | step ms | samples/s | peak RSS MB | train state MB (params + grads + optimizer + saved "
        "activations) | trainable % |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["methods"].items():
        if isinstance(v, dict):
            state = (
                (
                    f"**{v['train_state_mb']:.0f}** ({v['params_mb']:.0f} + {v['grads_mb']:.1f} + "
                    f"{v['optimizer_state_mb']:.1f} + {v['activations_saved_mb']:.0f})"
                )
                if "train_state_mb" in v
                else ""
            )
            lines.append(
                f"| {name} | {v['step_ms']:.0f} | {v['samples_per_s']:.1f} | {v['peak_rss_mb']:.0f} | "
                f"{state} | {v['trainable_pct']:.3g} |"
            )
    lines += [
        "",
        "| before/after (ftsweep step) | before: AdamW foreach | after: AdamW fused | speedup |",
        "|---|---|---|---|",
    ]
    for name, v in r["before_after"].items():
        lines.append(
            f"| {name} | {v['before_foreach_step_ms']['median']:.0f} ms | {v['after_fused_step_ms']['median']:.0f}"
            f" ms | {v['speedup']:.3f} |"
        )
    lines += ["", "| eval case (256 reviews) | samples/s |", "|---|---|"]
    for name, v in r["eval"].items():
        lines.append(f"| {name} | {v['median']:.0f} ({v['min']:.0f}-{v['max']:.0f}) |")
    if "eval_sorted" in r:
        lines += [
            "",
            "| eval, 192 reviews, batch 32 | before: data order | after: longest first | speed-up | same accuracy |",
            "|---|---|---|---|---|",
        ]
        for length, v in r["eval_sorted"].items():
            lines.append(
                f"| {length} tokens | {v['before_samples_per_s']['median']:.1f} samples/s | "
                f"{v['after_samples_per_s']['median']:.1f} samples/s | **{v['speedup']:.2f}** | "
                f"{'yes' if v['same_accuracy'] else 'NO'} ({v['accuracy']['after']:.3f}) |"
            )
    if "lora" in r:
        lo = r["lora"]
        lines += [
            "",
            f"LoRA against full fine-tuning: step {lo['lora_vs_full_step']:.2f}x of full's for "
            f"{lo['flops_ratio_lora_vs_full']:.2f}x the FLOPs. Self CPU time per step (torch.profiler, 3 steps):",
            "",
            "| where | full ms | lora before (lora_dropout=0.1) ms | lora after (lora_dropout=0, the default) ms |",
            "|---|---|---|---|",
        ]
        for cat in lo["profile_ms_per_step"]["full"]:
            lines.append(
                f"| {cat} | "
                + " | ".join(f"{lo['profile_ms_per_step'][k][cat]:.0f}" for k in ("full", "lora", "lora_dropout_0"))
                + " |"
            )
        sm = lo["step_ms"]
        lines.append(
            f"| **measured step (median)** | {sm['full']['median']:.0f} | {sm['lora']['median']:.0f} "
            f"({lo['lora_vs_full_step']:.2f}x) | {sm['lora_dropout_0']['median']:.0f} "
            f"({lo['lora_dropout_0_vs_full_step']:.2f}x) |"
        )
    if "cpu_bf16" in r:
        c = r["cpu_bf16"]
        lines += [
            "",
            f"`precision=bf16` on this CPU ({c['cpu_capability']}; autocast, fp32 master weights): training step "
            f"{c['step_ms']['fp32']['median']:.0f} → {c['step_ms']['bf16']['median']:.0f} ms "
            f"(**{c['train_speedup']:.2f}x**), eval {c['eval_samples_per_s']['fp32']['median']:.0f} → "
            f"{c['eval_samples_per_s']['bf16']['median']:.0f} samples/s (**{c['eval_speedup']:.2f}x**). Accuracy "
            "parity: the bf16 parity table below; "
            + (
                "it held, so `precision=auto` is bf16 on CPUs with AMX or AVX512-BF16."
                if r.get("bf16_parity", {}).get("holds")
                else "it did not hold everywhere, so on CPUs with AMX or AVX512-BF16 `precision=auto` trains in fp32 "
                "and evaluates in bf16 (`fp32+bf16-eval`), which gave the same predictions as fp32 on >= 99.5 % of "
                "eval reviews (`benchmarks/eval_agreement.py`)."
            ),
        ]
    if "sweep_efficiency" in r:
        import runs

        lines += runs.readme_lines(r)
    if "plan_accuracy" in r:
        import plan_accuracy

        lines += plan_accuracy.readme_lines(r["plan_accuracy"])
    from samplers import readme_lines

    lines += readme_lines(r["samplers"])
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n\n<!-- results -->\n<!-- /results -->\n"
    start, end = text.index("<!-- results -->"), text.index("<!-- /results -->")
    readme.write_text(text[:start] + "<!-- results -->\n" + "\n".join(lines) + "\n" + text[end:])


BEFORE = "285fc70"  # main before issue 24 (bf16 on the CPU, the fixed cost per trial, the default run's memory)


@contextlib.contextmanager
def before_checkout(ref: str):
    """A temporary git worktree of `ref`, or None where there is no git checkout to make one from."""
    if not ref:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        made = subprocess.run(
            ["git", "-C", str(HERE.parent), "worktree", "add", "--detach", tmp, ref], capture_output=True, text=True
        )
        if made.returncode != 0:
            print(f"[before] no worktree of {ref}: {made.stderr.strip()}; measuring 'after' only", flush=True)
            yield None
            return
        try:
            yield Path(tmp)
        finally:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", tmp], capture_output=True)


def _sections(before: Path | None) -> dict[str, Callable[[], dict]]:
    import plan_accuracy
    import runs
    from samplers import bench_samplers

    return {
        "grouped_parity": runs.bench_grouped_parity,
        "samplers": lambda: bench_samplers(quick=False),
        "bf16_parity": runs.bench_bf16_parity,
        "attention_dropout": runs.bench_attention_dropout,
        "sweep_efficiency": lambda: runs.bench_sweep_efficiency(before),
        "default_run": lambda: runs.bench_default_run(before),
        "plan_accuracy": plan_accuracy.bench_plan_accuracy,
    }


def rerun_sections(names: list[str], before_ref: str) -> int:
    """Rerun some whole-run sections alone: each replaces its part of results.json with its own date and CPU."""
    known = list(_sections(None))
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    results = json.loads((HERE / "results.json").read_text())
    with before_checkout(before_ref if {"sweep_efficiency", "default_run"} & set(names) else "") as before:
        sections = _sections(before)
        for name in names:
            t0 = time.time()
            results[name] = sections[name]()
            results[name].update(
                date=dt.date.today().isoformat(), wall_s=time.time() - t0, cpu=cpu_model(), rerun="--only"
            )
            if before is not None:
                results[name]["before_ref"] = before_ref
            (HERE / "results.json").write_text(json.dumps(results, indent=2))  # each section kept as it ends
    write_readme(results)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats: a smoke run, not for quoting")
    ap.add_argument(
        "--before",
        default=BEFORE,
        help="git commit to measure the sweep on as 'before' (a temporary worktree); '' skips it",
    )
    ap.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to rerun alone ({', '.join(_sections(None))}); each replaces its part "
        "of results.json, dated and named by CPU on its own",
    )
    args = ap.parse_args()
    if args.only:
        return rerun_sections(args.only.split(","), args.before)
    steps, repeats = (4, 1) if args.quick else (10, 3)
    t0 = time.time()
    import runs
    import transformers

    setup = Setup(n_train=max(steps, 8) * BATCH * 2)
    results = {
        "meta": {
            "date": dt.date.today().isoformat(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "repeats": repeats,
            "steps": steps,
            "quick": args.quick,
        }
    }
    results["overhead"] = bench_overhead(setup, steps, repeats)
    results["hf_trainer"] = bench_hf_trainer(setup, steps, max(repeats - 1, 1))
    results["padding"] = bench_padding(setup, 4 if not args.quick else 2, max(repeats - 1, 1))
    results["mfu"] = bench_mfu(setup, results["overhead"])
    results["methods"] = bench_methods(setup, max(steps // 2, 4))
    results["eval"] = bench_eval(setup, repeats)
    results["eval_sorted"] = bench_eval_sorted(setup, max(repeats - 1, 1), n=64 if args.quick else 192)
    results["before_after"] = bench_before_after(setup, steps, repeats)
    results["lora"] = bench_lora(setup, steps, repeats)
    results["cpu_bf16"] = bench_cpu_bf16(setup, steps, max(repeats - 1, 1))
    with before_checkout(args.before) as before:
        results["sweep_efficiency"] = runs.bench_sweep_efficiency(before)
        results["default_run"] = runs.bench_default_run(before)
    results["grouped_parity"] = runs.bench_grouped_parity()
    results["bf16_parity"] = runs.bench_bf16_parity()
    results["attention_dropout"] = runs.bench_attention_dropout()
    import plan_accuracy
    from samplers import bench_samplers

    results["plan_accuracy"] = plan_accuracy.bench_plan_accuracy()
    results["samplers"] = bench_samplers(args.quick)
    results["meta"]["bench_wall_s"] = time.time() - t0
    out = HERE / ("results_quick.json" if args.quick else "results.json")
    out.write_text(json.dumps(results, indent=2))
    if not args.quick:
        write_readme(results)
    print(f"wrote {out} in {results['meta']['bench_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
