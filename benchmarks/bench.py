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
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ftsweep.config import LoraMethodConfig, MethodConfig, OptimizerConfig, Truncation, compose_config, validate  # noqa: E402
from ftsweep.data import LengthGroupedBatchSampler, PadCollator, load_splits, make_loader, tokenize  # noqa: E402
from ftsweep.loop import LoopSettings, build_optimizer, build_scheduler, evaluate, fit  # noqa: E402
from ftsweep.metrics import PeakMemory, step_time_stats  # noqa: E402
from ftsweep.model import apply_method, count_params, load_model, load_tokenizer  # noqa: E402

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
        return apply_method(load_model(self.cfg.model, self.splits.label_names, self.tokenizer, method), method,
                            total_steps)

    def fixed_batches(self, n: int, length: int = LENGTH) -> list[dict]:
        ids = self.ids(self.splits.train_texts[: n * BATCH], length)
        collate = PadCollator(self.pad_id)
        return [collate(list(zip(ids[i * BATCH:(i + 1) * BATCH], self.splits.train_labels[i * BATCH:(i + 1) * BATCH])))
                for i in range(n)]


FULL = MethodConfig(name="full", lr=5e-5)
LORA = LoraMethodConfig(name="lora", lr=5e-4)


def ftsweep_steps(setup: Setup, method: MethodConfig, batches: list[dict], fused: bool = True) -> list[float]:
    """ftsweep's own loop (ftsweep.loop.fit) over the given batches; returns per-step seconds."""
    model = setup.model(method)
    opt = build_optimizer(model, OPT, method.lr, fused=fused)
    sched = build_scheduler(opt, OPT, len(batches))
    empty_eval = [{"input_ids": batches[0]["input_ids"][:1], "attention_mask": batches[0]["attention_mask"][:1],
                   "labels": batches[0]["labels"][:1]}]
    settings = LoopSettings(total_steps=len(batches), epochs=1, num_labels=2, max_grad_norm=1.0,
                            log_every_steps=len(batches), progress=False)
    result = fit(model, batches, empty_eval, opt, sched, settings, torch.device("cpu"))
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
        for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
            results[name].append(cases[name]())
    return results


# --------------------------------------------------------------------------- 1. framework overhead
def bench_overhead(setup: Setup, steps: int, repeats: int) -> dict:
    batches = setup.fixed_batches(steps)
    out = {}
    for method in (FULL, LORA):
        runs = alternating(repeats, {
            "ftsweep": lambda m=method: steady(ftsweep_steps(setup, m, batches)) * 1000,
            "bare": lambda m=method: steady(bare_steps(setup, m, batches)) * 1000,
        })
        a, b = runs["ftsweep"], runs["bare"]
        out[method.name] = {"ftsweep_step_ms": stats(a), "bare_step_ms": stats(b),
                            "overhead_vs_bare_loop": statistics.median(a) / statistics.median(b)}
        print(f"[overhead] {method.name}: ftsweep {statistics.median(a):.0f} ms, bare {statistics.median(b):.0f} ms",
              flush=True)
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
            targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=steps,
                                      learning_rate=FULL.lr, weight_decay=0.01, warmup_steps=0, lr_scheduler_type="linear",
                                      max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to=[],
                                      disable_tqdm=True, seed=0, dataloader_num_workers=0, use_cpu=True)
            trainer = Trainer(model=model, args=targs, train_dataset=hf_data, data_collator=default_data_collator,
                              callbacks=[timer])
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
        settings = LoopSettings(total_steps=steps, epochs=1, num_labels=2, max_grad_norm=1.0, log_every_steps=steps,
                                progress=False)
        result = fit(model, loader, [next(iter(loader))], opt, sched, settings, torch.device("cpu"))
        wall = time.perf_counter() - t0 - result.eval_time_s
        return wall, steady(result.step_times_s)

    runs = alternating(repeats, {"hf": hf_run, "fs": ftsweep_run})
    hf_wall, hf_step = [w for w, _ in runs["hf"]], [s * 1000 for _, s in runs["hf"]]
    fs_wall, fs_step = [w for w, _ in runs["fs"]], [s * 1000 for _, s in runs["fs"]]
    out = {"hf_train_wall_s": stats(hf_wall), "ftsweep_train_wall_s": stats(fs_wall),
           "hf_step_ms": stats(hf_step), "ftsweep_step_ms": stats(fs_step),
           "speedup_vs_hf_trainer_wall": statistics.median(hf_wall) / statistics.median(fs_wall),
           "speedup_vs_hf_trainer_step": statistics.median(hf_step) / statistics.median(fs_step),
           "note": f"{steps} steps, batch {BATCH}, lr {FULL.lr}; Trainer pads to {LENGTH} (run_glue default), "
                   f"ftsweep pads per batch"}
    print(f"[hf] wall speedup {out['speedup_vs_hf_trainer_wall']:.3f}, step {out['speedup_vs_hf_trainer_step']:.3f}",
          flush=True)
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
            "pad_to_max": [collate([(x + [setup.pad_id] * (length - len(x)), y) for x, y in
                                    zip(ids[i:i + BATCH], labels[i:i + BATCH])]) for i in range(0, n, BATCH)],
            "dynamic": [collate(list(zip(ids[i:i + BATCH], labels[i:i + BATCH]))) for i in range(0, n, BATCH)],
            "dynamic_grouped": [collate([(ids[j], labels[j]) for j in b]) for b in
                                LengthGroupedBatchSampler([len(x) for x in ids], BATCH, seed=0)],
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
        out[str(length)] = {**{f"{k}_samples_per_s": stats(v) for k, v in res.items()},
                            "padded_tokens": tokens, "real_tokens": sum(len(x) for x in ids),
                            "dynamic_padding_speedup": statistics.median(res["dynamic"]) /
                            statistics.median(res["pad_to_max"]),
                            "grouped_speedup": statistics.median(res["dynamic_grouped"]) /
                            statistics.median(res["pad_to_max"])}
        print(f"[padding] {length}: dynamic x{out[str(length)]['dynamic_padding_speedup']:.2f}, "
              f"grouped x{out[str(length)]['grouped_speedup']:.2f}", flush=True)
    return out


# --------------------------------------------------------------------------- 4. against the limit
def matmul_gflops(size: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(best) / 1e9


def step_flops(setup: Setup, method: MethodConfig, tokens_per_seq: int) -> dict:
    model = setup.model(method)
    cfg = model.config
    embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n and "lora_" not in n
               and "modules_to_save" not in n)
    tokens = BATCH * tokens_per_seq
    attention = 12 * cfg.num_hidden_layers * BATCH * tokens_per_seq**2 * cfg.hidden_size  # QK^T and AV, fwd+bwd
    if method.name == "full":
        flops, formula = 6 * base * tokens + attention, "6 * N_nonembed * tokens + 12 * L * B * T^2 * H"
    else:  # frozen base: forward + input-gradient only (4N); adapters: forward + both gradients (6N)
        flops, formula = 4 * base * tokens + 6 * lora * tokens + attention, \
            "4 * N_base * tokens + 6 * N_lora * tokens + 12 * L * B * T^2 * H"
    return {"flops_per_step": flops, "formula": formula, "non_embedding_params": base, "embedding_params": embed,
            "lora_params": lora}


def bench_mfu(setup: Setup, overhead: dict) -> dict:
    peak = statistics.median([matmul_gflops() for _ in range(3)])
    batches = setup.fixed_batches(2)
    seq = int(batches[0]["input_ids"].shape[1])
    out = {"matmul_gflops": peak, "threads": torch.get_num_threads()}
    for method in (FULL, LORA):
        f = step_flops(setup, method, seq)
        step_s = overhead[method.name]["ftsweep_step_ms"]["median"] / 1000
        achieved = f["flops_per_step"] / step_s / 1e9
        out[method.name] = {**f, "achieved_gflops": achieved, "mfu_vs_matmul_peak": achieved / peak}
        print(f"[mfu] {method.name}: {achieved:.1f} GFLOP/s of {peak:.1f} -> {achieved / peak:.2f}", flush=True)
    return out


# --------------------------------------------------------------------------- 5. methods side by side
def bench_methods(setup: Setup, steps: int) -> dict:
    from ftsweep.config import (AdaLoraMethodConfig, FreezeMethodConfig, IA3MethodConfig,
                                PromptTuningMethodConfig)

    methods = [FULL, LORA, MethodConfig(name="head", lr=1e-3), MethodConfig(name="bitfit", lr=1e-3),
               FreezeMethodConfig(name="freeze", lr=5e-5), IA3MethodConfig(name="ia3", lr=5e-3),
               PromptTuningMethodConfig(name="prompt_tuning", lr=1e-2),
               AdaLoraMethodConfig(name="adalora", lr=5e-4, target_modules=["query", "key", "value"])]
    batches = setup.fixed_batches(steps)
    out = {}
    for method in methods:
        meter = PeakMemory(torch.device("cpu")).start()
        times = ftsweep_steps(setup, method, batches)
        peak = meter.stop()["mem/cpu_peak_rss_mb"]
        model = setup.model(method)
        trainable, total = count_params(model)
        step = steady(times)
        out[method.name] = {"step_ms": step * 1000, "samples_per_s": BATCH / step, "peak_rss_mb": peak,
                            "trainable_pct": 100 * trainable / total}
        print(f"[methods] {method.name}: {step * 1000:.0f} ms/step, {peak:.0f} MB", flush=True)
    out["qlora"] = "not measured: CUDA only (see README's GPU check)"
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


# --------------------------------------------------------------------------- 7. before/after
def bench_before_after(setup: Setup, steps: int, repeats: int) -> dict:
    """The optimisation these numbers led to: AdamW's fused implementation instead of foreach (before)."""
    batches = setup.fixed_batches(steps)
    out = {}
    for method in (FULL, LORA):
        runs = alternating(repeats, {
            "before": lambda m=method: steady(ftsweep_steps(setup, m, batches, fused=False)) * 1000,
            "after": lambda m=method: steady(ftsweep_steps(setup, m, batches, fused=True)) * 1000,
        })
        before, after = runs["before"], runs["after"]
        out[method.name] = {"before_foreach_step_ms": stats(before), "after_fused_step_ms": stats(after),
                            "speedup": statistics.median(before) / statistics.median(after)}
        print(f"[before/after] {method.name}: foreach {statistics.median(before):.0f} ms -> fused "
              f"{statistics.median(after):.0f} ms", flush=True)
    return out


# --------------------------------------------------------------------------- report
def write_readme(results: dict) -> None:
    r = results
    m = r["meta"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads), torch "
             f"{m['torch']}, transformers {m['transformers']}; MiniLM-L6, batch {BATCH}, {LENGTH} tokens unless said; "
             f"median (min-max) of {m['repeats']} repeats, A/B alternating. Wall time of the whole bench: "
             f"{m['bench_wall_s']:.0f} s.", "",
             "| measure | result | target |", "|---|---|---|"]
    for name in ("full", "lora"):
        o = r["overhead"][name]
        lines.append(f"| overhead_vs_bare_loop ({name}) | **{o['overhead_vs_bare_loop']:.3f}** (ftsweep "
                     f"{o['ftsweep_step_ms']['median']:.0f} ms [{o['ftsweep_step_ms']['min']:.0f}-"
                     f"{o['ftsweep_step_ms']['max']:.0f}], bare {o['bare_step_ms']['median']:.0f} ms "
                     f"[{o['bare_step_ms']['min']:.0f}-{o['bare_step_ms']['max']:.0f}]) | <= 1.02 |")
    h = r["hf_trainer"]
    lines.append(f"| speedup_vs_hf_trainer, whole training | **{h['speedup_vs_hf_trainer_wall']:.3f}** (HF "
                 f"{h['hf_train_wall_s']['median']:.1f} s, ftsweep {h['ftsweep_train_wall_s']['median']:.1f} s) | >= 1.0 |")
    lines.append(f"| speedup_vs_hf_trainer, step | **{h['speedup_vs_hf_trainer_step']:.3f}** (HF "
                 f"{h['hf_step_ms']['median']:.0f} ms, ftsweep {h['ftsweep_step_ms']['median']:.0f} ms) | >= 1.0 |")
    for length, p in r["padding"].items():
        lines.append(f"| dynamic_padding_speedup at {length} tokens | **{p['dynamic_padding_speedup']:.2f}** "
                     f"(+ length grouping: {p['grouped_speedup']:.2f}; pad-to-max "
                     f"{p['pad_to_max_samples_per_s']['median']:.1f} samples/s; real/padded tokens "
                     f"{p['real_tokens']}/{p['padded_tokens']['pad_to_max']}) | > 1 |")
    f = r["mfu"]
    lines.append(f"| fp32 matmul peak (2048^2, torch) | {f['matmul_gflops']:.1f} GFLOP/s | |")
    for name in ("full", "lora"):
        lines.append(f"| mfu_vs_matmul_peak ({name}) | **{f[name]['mfu_vs_matmul_peak']:.2f}** "
                     f"({f[name]['achieved_gflops']:.1f} GFLOP/s; {f[name]['formula']}) | "
                     f"{'>= 0.65' if name == 'full' else ''} |")
    lines += ["", "| method | step ms | samples/s | peak RSS MB | trainable % |", "|---|---|---|---|---|"]
    for name, v in r["methods"].items():
        if isinstance(v, dict):
            lines.append(f"| {name} | {v['step_ms']:.0f} | {v['samples_per_s']:.1f} | {v['peak_rss_mb']:.0f} | "
                         f"{v['trainable_pct']:.3g} |")
    lines += ["", "| before/after (ftsweep step) | before: AdamW foreach | after: AdamW fused | speedup |",
              "|---|---|---|---|"]
    for name, v in r["before_after"].items():
        lines.append(f"| {name} | {v['before_foreach_step_ms']['median']:.0f} ms | {v['after_fused_step_ms']['median']:.0f}"
                     f" ms | {v['speedup']:.3f} |")
    lines += ["", "| eval case (256 reviews) | samples/s |", "|---|---|"]
    for name, v in r["eval"].items():
        lines.append(f"| {name} | {v['median']:.0f} ({v['min']:.0f}-{v['max']:.0f}) |")
    from samplers import readme_lines

    lines += readme_lines(r["samplers"])
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n\n<!-- results -->\n<!-- /results -->\n"
    start, end = text.index("<!-- results -->"), text.index("<!-- /results -->")
    readme.write_text(text[:start] + "<!-- results -->\n" + "\n".join(lines) + "\n" + text[end:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats: a smoke run, not for quoting")
    ap.add_argument("--only-samplers", action="store_true",
                    help="rerun only GP vs TPE and replace that section of results.json (dated on its own)")
    args = ap.parse_args()
    if args.only_samplers:
        from samplers import bench_samplers

        results = json.loads((HERE / "results.json").read_text())
        t0 = time.time()
        results["samplers"] = bench_samplers(quick=False)
        results["samplers"].update(date=dt.date.today().isoformat(), wall_s=time.time() - t0, cpu=cpu_model())
        (HERE / "results.json").write_text(json.dumps(results, indent=2))
        write_readme(results)
        return 0
    steps, repeats = (4, 1) if args.quick else (10, 3)
    t0 = time.time()
    import transformers

    setup = Setup(n_train=max(steps, 8) * BATCH * 2)
    results = {"meta": {"date": dt.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "repeats": repeats, "steps": steps,
                        "quick": args.quick}}
    results["overhead"] = bench_overhead(setup, steps, repeats)
    results["hf_trainer"] = bench_hf_trainer(setup, steps, max(repeats - 1, 1))
    results["padding"] = bench_padding(setup, 4 if not args.quick else 2, max(repeats - 1, 1))
    results["mfu"] = bench_mfu(setup, results["overhead"])
    results["methods"] = bench_methods(setup, max(steps // 2, 4))
    results["eval"] = bench_eval(setup, repeats)
    results["before_after"] = bench_before_after(setup, steps, repeats)
    from samplers import bench_samplers

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
