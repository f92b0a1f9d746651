"""GPU throughput, the training-state check and MiniLM's accuracy ceiling, as one prepared device script.

Two halves, because the GPU machine has no network, no Hydra or MLflow, and takes at most 64 MiB of files:

    python benchmarks/gpu_throughput.py --prepare .gpu     # here: fp16 MiniLM + IMDB token ids (head_tail, 256)
    python3 benchmarks/gpu_throughput.py --assets .gpu --out $OUT   # there: torch, transformers, peft only

On the GPU it measures, with ftsweep's step (autocast, fused AdamW, clip at 1.0):
1. training samples/s and CUDA peak memory, MiniLM and a randomly initialised BERT-base-sized config (weights do
   not matter for speed), fp32 and bf16, batch 32/128/512 at 256 tokens, full fine-tuning and LoRA (r=8 on
   query/value, as method=lora), and torch.compile on bf16 batch 128; MFU against the card's bf16 dense peak;
2. eval samples/s under inference_mode at eval batch 64/256/1024 (bf16), to size the default eval batch;
3. ftsweep's exact training state (params + grads + optimizer state + activations saved for backward, counted by
   ftsweep.metrics.SavedForBackward) against torch.cuda.max_memory_allocated, for full, LoRA and checkpointing;
4. the accuracy ceiling: MiniLM fine-tuned on the whole training split (40,000 reviews, 2 epochs, 256 tokens,
   bf16), scored on all 10,000 held-out reviews and on the 1,000 that `make run` scores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (NVIDIA's SXM data sheets)
LENGTH = 256


def prepare(out: Path) -> None:
    """Here: the fp16 MiniLM folder and the IMDB split as uint16 token ids, as ftsweep cuts them."""
    from safetensors.torch import load_file, save_file

    from ftsweep.batches import tokenize
    from ftsweep.compose import compose_config
    from ftsweep.config import validate
    from ftsweep.data import load_splits
    from ftsweep.model import load_tokenizer, resolve_path

    cfg = validate(
        compose_config("data.max_train_samples=null", "data.max_eval_samples=null", f"data.max_length={LENGTH}")
    )
    src = Path(resolve_path(cfg.model))
    (out / "minilm").mkdir(parents=True, exist_ok=True)
    weights = {k: v.half().contiguous() for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(weights, str(out / "minilm" / "model.safetensors"))
    (out / "minilm" / "config.json").write_text((src / "config.json").read_text())
    splits = load_splits(cfg.data)
    tok = load_tokenizer(cfg.model)
    arrays = {}
    for name, texts, labels in (
        ("train", splits.train_texts, splits.train_labels),
        ("eval", splits.eval_texts, splits.eval_labels),
    ):
        ids = tokenize(texts, tok, LENGTH, cfg.data.truncation)
        flat = np.zeros((len(ids), LENGTH), dtype=np.uint16)
        for i, row in enumerate(ids):
            flat[i, : len(row)] = row
        arrays[f"{name}_ids"], arrays[f"{name}_len"] = flat, np.array([len(r) for r in ids], dtype=np.int16)
        arrays[f"{name}_labels"] = np.array(labels, dtype=np.int8)
    np.savez_compressed(out / "imdb_256.npz", **arrays)
    print({k: v.shape for k, v in arrays.items()}, "pad id", tok.pad_token_id)


# --------------------------------------------------------------------------- the GPU side
def build(kind: str, assets: Path, method: str, checkpointing: bool = False, seed: int = 0, lora_dropout: float = 0.1):
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    if kind == "minilm":
        model = AutoModelForSequenceClassification.from_pretrained(
            str(assets / "minilm"), num_labels=2, dtype=torch.float32
        )
    else:  # BERT-base's shape; random weights
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=8,
                lora_alpha=16,
                lora_dropout=lora_dropout,
                target_modules=["query", "value"],
            ),
        )
    return model.cuda().train()


def train_flops(model, method: str, batch: int, length: int) -> float:
    """The bench's FLOP count (benchmarks/README.md, item 4) for one step."""
    cfg = model.config
    hidden, layers = cfg.hidden_size, cfg.num_hidden_layers
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    tokens = batch * length
    attention = 12 * layers * batch * length**2 * hidden
    if method == "full":
        return 6 * (sum(p.numel() for p in model.parameters()) - emb) * tokens + attention
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad) - emb
    return 4 * base * tokens + 6 * lora * tokens + attention


def step_fn(model, precision: str, compiled: bool):
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    fwd = torch.compile(model, dynamic=False) if compiled else model
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step(ids, mask, labels):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = fwd(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, opt


def throughput(assets: Path, peak: float, budget_s: float, rows: list) -> None:
    cases = [
        (k, m, p, b, False)
        for k in ("minilm", "bert_base")
        for m in ("full", "lora")
        for p in ("fp32", "bf16")
        for b in (32, 128, 512)
    ]
    cases += [(k, m, "bf16", 128, True) for k in ("minilm", "bert_base") for m in ("full", "lora")]
    t_start = time.time()
    for kind, method, precision, batch, compiled in cases:
        if time.time() - t_start > budget_s:
            rows.append({"case": [kind, method, precision, batch, compiled], "status": "skipped: time budget"})
            continue
        row = {"model": kind, "method": method, "precision": precision, "batch": batch, "compile": compiled}
        try:
            model = build(kind, assets, method)
            step, _ = step_fn(model, precision, compiled)
            ids = torch.randint(1000, 30000, (batch, LENGTH), device="cuda")
            mask, labels = torch.ones_like(ids), torch.randint(0, 2, (batch,), device="cuda")
            for _ in range(3 if not compiled else 4):
                step(ids, mask, labels)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            n = 10
            t0 = time.perf_counter()
            for _ in range(n):
                step(ids, mask, labels)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / n
            flops = train_flops(model, method, batch, LENGTH)
            row.update(
                step_ms=1000 * dt,
                samples_per_s=batch / dt,
                tflops=flops / dt / 1e12,
                mfu_vs_bf16_peak=flops / dt / 1e12 / peak,
                cuda_peak_allocated_mb=torch.cuda.max_memory_allocated() / 2**20,
                status="ok",
            )
        except torch.cuda.OutOfMemoryError:
            row["status"] = "out of memory"
        except Exception as exc:  # one unsupported case must not hide the others
            row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        finally:
            model = step = None
            torch.cuda.empty_cache()
            torch._dynamo.reset()
        rows.append(row)
        print(json.dumps(row), flush=True)


@torch.inference_mode()
def eval_speed(assets: Path, rows: list) -> None:
    model = build("minilm", assets, "full").eval()
    for batch in (64, 256, 1024):
        ids = torch.randint(1000, 30000, (batch, LENGTH), device="cuda")
        mask = torch.ones_like(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                model(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                model(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
        rows.append({"eval_batch": batch, "samples_per_s": 10 * batch / (time.perf_counter() - t0)})
        print(json.dumps(rows[-1]), flush=True)


def train_state(assets: Path, rows: list) -> None:
    from ftsweep.metrics import SavedForBackward, optimizer_state_mb, tensor_mb

    for method, precision, ckpt in (
        ("full", "fp32", False),
        ("lora", "fp32", False),
        ("full", "fp32", True),
        ("full", "bf16", False),
        ("lora", "bf16", False),
        ("lora", "bf16", True),
    ):
        model = build("minilm", assets, method, checkpointing=ckpt)
        step, opt = step_fn(model, precision, False)
        ids = torch.randint(1000, 30000, (32, LENGTH), device="cuda")
        mask, labels = torch.ones_like(ids), torch.randint(0, 2, (32,), device="cuda")
        step(ids, mask, labels)  # optimizer state exists from here on
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        counter = SavedForBackward(exclude=model.parameters())
        trainable = [p for p in model.parameters() if p.requires_grad]
        with counter:
            step(ids, mask, labels)
        torch.cuda.synchronize()
        params = tensor_mb(model.parameters())
        grads = tensor_mb(trainable)  # grads are as large as the trainable params
        state = params + grads + optimizer_state_mb(opt) + counter.peak_mb
        peak = torch.cuda.max_memory_allocated() / 2**20
        rows.append(
            {
                "method": method,
                "precision": precision,
                "checkpointing": ckpt,
                "params_mb": params,
                "grads_mb": grads,
                "optimizer_state_mb": optimizer_state_mb(opt),
                "activations_saved_mb": counter.peak_mb,
                "train_state_mb": state,
                "cuda_peak_allocated_mb": peak,
                "baseline_allocated_mb": base / 2**20,
                "ratio_state_to_cuda_peak": state / peak,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        model = step = opt = None
        torch.cuda.empty_cache()


def ceiling(assets: Path, epochs: int, out: dict) -> None:
    """MiniLM on all 40,000 training reviews: ftsweep's recipe (AdamW 5e-5, linear decay, clip 1.0) in bf16."""
    from transformers import get_linear_schedule_with_warmup

    data = np.load(assets / "imdb_256.npz")
    model = build("minilm", assets, "full", seed=42)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    x, lens, y = (torch.from_numpy(data[f"train_{k}"].astype(np.int64)) for k in ("ids", "len", "labels"))
    batch, n = 32, len(y)
    total = epochs * (n // batch)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * total), total)
    positions = torch.arange(LENGTH)
    t0 = time.time()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(n // batch):
            idx = order[i * batch : (i + 1) * batch]
            ids, m = x[idx].cuda(non_blocking=True), (positions < lens[idx, None]).long().cuda(non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=m, labels=y[idx].cuda()).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    train_s = time.time() - t0
    model.eval()
    ex, el, ey = (torch.from_numpy(data[f"eval_{k}"].astype(np.int64)) for k in ("ids", "len", "labels"))
    preds = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(0, len(ey), 512):
            m = (positions < el[i : i + 512, None]).long().cuda()
            preds.append(model(input_ids=ex[i : i + 512].cuda(), attention_mask=m).logits.argmax(-1).cpu())
    hit = (torch.cat(preds) == ey).float()
    out.update(
        train_reviews=n,
        epochs=epochs,
        length=LENGTH,
        batch=batch,
        train_s=train_s,
        accuracy_all_eval=hit.mean().item(),
        eval_reviews=len(ey),
        accuracy_first_1000=hit[:1000].mean().item(),
    )
    print(json.dumps(out), flush=True)


def cut(ids: torch.Tensor, lens: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ftsweep's head_tail cut to `length`, from ids already cut that way to LENGTH: the head keeps a quarter of
    the budget and the tail the rest, and both are inside the longer cut's head and tail."""
    out, new = torch.zeros(len(ids), length, dtype=ids.dtype), torch.zeros_like(lens)
    budget = length - 2
    for i in range(len(ids)):
        content = ids[i, 1 : int(lens[i]) - 1]
        if len(content) > budget:
            head = budget // 4
            content = torch.cat([content[:head], content[len(content) - (budget - head) :]])
        row = torch.cat([ids[i, :1], content, ids[i, int(lens[i]) - 1 : int(lens[i])]])
        out[i, : len(row)], new[i] = row, len(row)
    return out, new


def _imdb_slices(assets: Path) -> tuple[torch.Tensor, ...]:
    """Training ids, lengths and labels, and those of the 1,000 eval reviews `make run` scores."""
    data = np.load(assets / "imdb_256.npz")
    train = (torch.from_numpy(data[f"train_{k}"].astype(np.int64)) for k in ("ids", "len", "labels"))
    evaluation = (torch.from_numpy(data[f"eval_{k}"][:1000].astype(np.int64)) for k in ("ids", "len", "labels"))
    return (*train, *evaluation)


def fine_tune_and_score(model, lr: float, tx, tl, ty, vx, vl, vy) -> float:
    """ftsweep's recipe in fp32 on cut reviews: AdamW (weight decay 0.01) on the trainable parameters, warm-up 0.1
    then linear decay, clip 1.0, batch 16, one epoch; then the accuracy on the eval reviews."""
    from transformers import get_linear_schedule_with_warmup

    device = next(model.parameters()).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, fused=True)
    steps = len(ty) // 16
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    order = torch.randperm(len(ty))
    pos = torch.arange(tx.shape[1])
    for i in range(steps):
        idx = order[i * 16 : (i + 1) * 16]
        loss = model(
            input_ids=tx[idx].to(device),
            attention_mask=(pos < tl[idx, None]).long().to(device),
            labels=ty[idx].to(device),
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.inference_mode():
        logits = model(input_ids=vx.to(device), attention_mask=(pos < vl[:, None]).long().to(device)).logits
    return (logits.argmax(-1).cpu() == vy).float().mean().item()


def choose_default(assets: Path, rows: list, budget_s: float) -> None:
    """Accuracy of `make run` candidates (full fine-tuning, fp32 as on the CPU, ftsweep's recipe) on the 1,000
    reviews make run scores. Speed is measured on the CPU; this only says which candidates reach the accuracy."""
    x, lens, y, ex, el, ey = _imdb_slices(assets)
    t_start = time.time()
    for length, n in (
        (128, 3000),
        (128, 4000),
        (128, 5000),
        (192, 2500),
        (192, 3000),
        (192, 3500),
        (256, 2000),
        (256, 2500),
    ):
        tx, tl = cut(x[:n], lens[:n], length)
        vx, vl = cut(ex, el, length)
        for lr in (5e-5, 8e-5):
            for seed in (42, 43):
                if time.time() - t_start > budget_s:
                    return
                model = build("minilm", assets, "full", seed=seed)  # the seed sets the head and the order
                acc = fine_tune_and_score(model, lr, tx, tl, y[:n], vx, vl, ey)
                rows.append({"length": length, "train_reviews": n, "lr": lr, "seed": seed, "accuracy": acc})
                print(json.dumps(rows[-1]), flush=True)


def lora_dropout_parity(assets: Path, rows: list) -> None:
    """LoRA with lora_dropout 0.1 (ftsweep's old default) against 0.0 (peft's), 3 seeds each, ftsweep's recipe in
    fp32: is dropping it (0.89x -> 0.80x of full fine-tuning's CPU step) free in accuracy?"""
    x, lens, y, ex, el, ey = _imdb_slices(assets)
    for length, n in ((256, 2500), (128, 2000)):
        tx, tl = cut(x[:n], lens[:n], length)
        vx, vl = cut(ex, el, length)
        for dropout in (0.1, 0.0):
            for seed in (1, 2, 3):
                model = build("minilm", assets, "lora", seed=seed, lora_dropout=dropout)
                acc = fine_tune_and_score(model, 5e-4, tx, tl, y[:n], vx, vl, ey)
                rows.append(
                    {"length": length, "train_reviews": n, "lora_dropout": dropout, "seed": seed, "accuracy": acc}
                )
                print(json.dumps(rows[-1]), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare", type=Path)
    ap.add_argument("--assets", type=Path)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--throughput-budget-s", type=float, default=200)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--choose-default", action="store_true", help="only: accuracy of make run's candidates")
    ap.add_argument("--lora-dropout", action="store_true", help="only: LoRA accuracy with lora_dropout 0.1 and 0")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return 0
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), math.nan)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here, as in ftsweep's default
    result = {
        "meta": {
            "device": name,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "bf16_peak_tflops": peak,
            "length": LENGTH,
        },
        "throughput": [],
        "eval": [],
        "train_state": [],
        "ceiling": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if args.lora_dropout:
        rows = []
        lora_dropout_parity(args.assets, rows)
        (args.out / "gpu_lora_dropout.json").write_text(json.dumps({"meta": result["meta"], "rows": rows}, indent=2))
        return 0
    if args.choose_default:
        rows: list = []
        choose_default(args.assets, rows, 300)
        (args.out / "gpu_default_run.json").write_text(json.dumps({"meta": result["meta"], "rows": rows}, indent=2))
        return 0

    def save():
        (args.out / "gpu_throughput.json").write_text(json.dumps(result, indent=2))

    for part in (
        lambda: train_state(args.assets, result["train_state"]),
        lambda: eval_speed(args.assets, result["eval"]),
        lambda: throughput(args.assets, peak, args.throughput_budget_s, result["throughput"]),
        lambda: ceiling(args.assets, args.epochs, result["ceiling"]),
    ):
        try:
            part()
        except Exception as exc:  # keep what the other parts measured
            print(f"part failed: {type(exc).__name__}: {exc}", flush=True)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
