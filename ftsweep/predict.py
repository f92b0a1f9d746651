"""`python -m ftsweep.predict`: classify new texts with a kept model.

    python -m ftsweep.predict model=MODEL input=texts.csv output=preds.csv [text_column=text] [batch_size=64]

MODEL is an MLflow model URI (`runs:/<run id>/model`, `models:/ftsweep-imdb@best`, `models:/m-...`) or a
folder (one ftsweep saved, or a downloaded MLflow model). The input is read like training data (csv, tsv,
json, jsonl, parquet; cells as written). The output keeps the input's rows and columns, in order, and adds
`predicted_label` (the class name) and `prob_<class>` for every class. Texts are cut to the length the model
was trained on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from ftsweep import artifacts
from ftsweep.config import Truncation
from ftsweep.errors import FtsweepError, first_line, quiet_logs

PREDICTED = "predicted_label"
KEYS = {"model": None, "input": None, "output": None, "text_column": "text", "batch_size": "64"}


def parse(argv: list[str]) -> dict[str, str]:
    """key=value arguments, like the trainer's overrides; every mistake is one line."""
    args = dict(KEYS)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise FtsweepError(f"unknown argument '{item}'; use {' '.join(f'{k}=...' for k in KEYS)}")
        args[key] = value
    missing = [k for k, v in args.items() if v is None]
    if missing:
        raise FtsweepError(
            f"missing {', '.join(f'{k}=...' for k in missing)} (python -m ftsweep.predict "
            f"model=runs:/RUN_ID/model input=texts.csv output=preds.csv)"
        )
    given = {k: v for k, v in args.items() if v is not None}  # every key: none is missing
    if not given["batch_size"].isdigit() or int(given["batch_size"]) < 1:
        raise FtsweepError(f"batch_size must be a whole number >= 1, got {given['batch_size']}")
    return given


def load(ref: str):
    """(model, tokenizer) from an MLflow model URI or a folder; refuses anything that is not a text classifier."""
    # Here, not at the top, as in the functions below: keep (torch, transformers, peft, MLflow), batches and data
    # take seconds to import, and a mistake on the command line is one line before any of them loads (measured:
    # `python -m ftsweep.predict bad=1` answers in 0.2 s with these imports here, 5.6 s with them at the top).
    from ftsweep import keep

    try:
        with quiet_logs("mlflow", "huggingface_hub", "transformers", warnings_too=True):
            folder = Path(ref).expanduser()
            if folder.is_dir() and not (folder / "MLmodel").is_file():
                _check_classifier_folder(folder, ref)
                model, tokenizer = keep.load_folder(folder)
            else:
                import mlflow.transformers

                parts = mlflow.transformers.load_model(ref, return_type="components")
                model, tokenizer = parts["model"], parts["tokenizer"]
    except FtsweepError:
        raise
    except Exception as exc:  # no such run, model, alias or folder; not a transformers model
        raise FtsweepError(f"could not load model={ref}: {first_line(exc)}") from exc
    if "ForSequenceClassification" not in type(model).__name__:
        raise FtsweepError(f"model={ref} is not a text classifier ({type(model).__name__})")
    return model.eval(), tokenizer


def _cut(ref: str) -> Optional[dict]:
    from ftsweep import keep  # not at the top: see load()

    try:
        return keep.cut_of(ref)
    except Exception:  # a model ftsweep did not keep: cut as its tokenizer says
        return None


def _check_classifier_folder(folder: Path, ref: str) -> None:
    """A folder must hold a sequence classifier (or an adapter for one): loading anything else would silently
    bolt a random head onto it."""
    adapter, config = folder / "adapter_config.json", folder / "config.json"
    if adapter.is_file():
        kind = json.loads(adapter.read_text()).get("task_type")
        ok = kind == "SEQ_CLS"
    elif config.is_file():
        kind = ", ".join(json.loads(config.read_text()).get("architectures") or ["no architecture"])
        ok = "ForSequenceClassification" in kind
    else:
        raise FtsweepError(f"model={ref} is neither an MLflow model nor a Hugging Face folder (no config.json)")
    if not ok:
        raise FtsweepError(f"model={ref} is not a text classifier ({kind})")


def probabilities(
    model, tokenizer, texts: list[str], batch_size: int, cut: Optional[dict] = None, progress: bool = True
):
    """Class probabilities, one row per text, in the texts' order. Texts are cut as training cut them (`cut`,
    kept with the model; else to the tokenizer's length, keeping the head). Batches go by length."""
    # Not at the top: see load().
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ftsweep.batches import PadCollator, encode_texts

    if cut is None:
        cut = {"max_length": min(tokenizer.model_max_length, 512), "truncation": "head"}
    ids = encode_texts(texts, tokenizer, int(cut["max_length"]), Truncation(cut["truncation"]))
    pad = PadCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, int(cut["max_length"]))
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="predicting", unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            batch = pad([(ids[i], 0) for i in idx])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).numpy()
    return out


def predict(
    model_ref: str,
    input_path: str,
    output_path: str,
    text_column: str = "text",
    batch_size: int = 64,
    progress: bool = True,
):
    """Classify the texts of `input_path` into `output_path` (written whole); returns the output table."""
    from ftsweep.data import read_table  # not at the top: see load()

    table = read_table(input_path)
    if text_column not in table.columns:
        raise FtsweepError(
            f"{input_path}: no text column '{text_column}' (columns: "
            f"{', '.join(map(str, table.columns))}); set text_column=..."
        )
    texts = table[text_column]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise FtsweepError(f"{input_path}: row {bad[0] + 1} of column '{text_column}' is not text")
    model, tokenizer = load(model_ref)
    probs = probabilities(model, tokenizer, texts.tolist(), batch_size, _cut(model_ref), progress)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    added = [PREDICTED, *(f"prob_{name}" for name in names)]
    clash = [c for c in added if c in table.columns]
    if clash:  # an input's own columns (a true `label`, say) are kept as they are, never overwritten
        raise FtsweepError(f"{input_path} already has a column '{clash[0]}', which predict writes; rename it")
    table = table.copy()
    table[PREDICTED] = [names[i] for i in probs.argmax(axis=1)]
    for i, name in enumerate(names):
        table[f"prob_{name}"] = probs[:, i]
    artifacts.atomic_write(Path(output_path), lambda f: table.to_csv(f, index=False))
    return table


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        table = predict(args["model"], args["input"], args["output"], args["text_column"], int(args["batch_size"]))
    except FtsweepError as exc:
        print(f"ftsweep.predict: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(table)} predictions written to {args['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
