"""Eval predictions of one trained model in fp32 and in bf16 autocast on this CPU: the share that agree.

Issue 24's rule: where bf16 training misses accuracy parity, eval may still run in bf16 if its predictions agree
with fp32's on >= 99.5 % of examples. Run by hand on a kept model (a run's `model` or `peft` folder under
`mlartifacts/models/*/artifacts/`), with the overrides it was trained with (they choose its eval split and cut):

    python benchmarks/eval_agreement.py FOLDER [OVERRIDE ...] >> benchmarks/results/eval_agreement_<date>.jsonl
"""

from __future__ import annotations

import json
import sys
import time

import torch

from ftsweep import batches, keep
from ftsweep import model as model_mod
from ftsweep.compose import compose_config
from ftsweep.config import Precision, validate
from ftsweep.data import load_splits
from ftsweep.evaluation import evaluate


def main(folder: str, *overrides: str) -> dict:
    tc = validate(compose_config(*overrides))
    splits = load_splits(tc.data)
    tokenizer = model_mod.load_tokenizer(tc.model)
    ids = batches.tokenize(splits.eval_texts, tokenizer, tc.data.max_length, tc.data.truncation)
    loader = batches.make_loader(
        ids, splits.eval_labels, 32, tokenizer.pad_token_id, shuffle=False, seed=0, max_width=tc.data.max_length
    )
    model, out = keep.load_weights(folder), {}
    for p in (Precision.fp32, Precision.bf16):
        t0 = time.perf_counter()
        out[p.value] = evaluate(model, loader, torch.device("cpu"), splits.num_labels, p)
        out[p.value]["s"] = time.perf_counter() - t0
    a, b = out["fp32"]["probs"].argmax(1), out["bf16"]["probs"].argmax(1)
    return {
        "overrides": list(overrides),
        "n": int(len(a)),
        "agree": float((a == b).mean()),
        "differ": int((a != b).sum()),
        "accuracy": {p: out[p]["accuracy"] for p in ("fp32", "bf16")},
        "eval_s": {p: round(out[p]["s"], 1) for p in ("fp32", "bf16")},
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
