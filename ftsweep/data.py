"""Data: read a labelled text set, check it, split it, tokenise it, batch it.

Everything a user can get wrong about their data (a missing file or column,
undecodable bytes, one class only, eval labels unseen in training) is found
here, before a model is loaded, and reported as one DataError line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from ftsweep import assets
from ftsweep.config import DataConfig, HubDataConfig, LocalDataConfig, Truncation
from ftsweep.errors import DataError, first_line

log = logging.getLogger("ftsweep.data")

@dataclass
class TextSplits:
    train_texts: list[str]
    train_labels: list[int]
    eval_texts: list[str]
    eval_labels: list[int]
    label_names: list[str]  # label id -> original label, as text

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------- reading
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _read_imdb() -> pd.DataFrame:
    df = pd.read_csv(assets.fetch(assets.IMDB))
    df["review"] = df["review"].str.replace(_BR, " ", regex=True)
    # 418 reviews occur twice; a copy on each side of the split would leak test answers into training.
    return df.drop_duplicates(subset="review", keep="first").reset_index(drop=True)


def _read_bbc_news() -> pd.DataFrame:
    root = assets.fetch(assets.BBC_NEWS)
    files = sorted(p for p in root.rglob("*.txt"))
    return pd.DataFrame({
        "text": [_decode_bbc(p.read_bytes()) for p in files],
        "label": [p.parent.name for p in files],
    })


def _decode_bbc(raw: bytes) -> str:
    # The corpus is UTF-8 but for one article saved as Latin-1 (a pound sign).
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_table(path: str, encoding: str = "utf-8") -> pd.DataFrame:
    """Read csv, tsv, json, jsonl or parquet, chosen by the file's extension. Cells are read as written:
    `NA`, `null` or `None` are values (a class may be called that), not missing ones."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data file {path} is a folder; give a .csv, .tsv, .json, .jsonl or .parquet file")
    if not p.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = p.suffix.lower()
    literal = {"dtype": str, "keep_default_na": False, "na_filter": False, "encoding": encoding}
    readers = {
        ".csv": lambda: pd.read_csv(p, sep=_separator(p, encoding), **literal),
        ".tsv": lambda: pd.read_csv(p, sep="\t", **literal),
        ".json": lambda: _read_json(p, encoding, lines=False),
        ".jsonl": lambda: _read_json(p, encoding, lines=True),
        ".parquet": lambda: pd.read_parquet(p),
    }
    if suffix not in readers:
        raise DataError(f"{path}: unsupported extension '{suffix}'; use one of {', '.join(readers)}")
    if p.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    try:
        df = readers[suffix]()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid {encoding} (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            f"set data.encoding to the file's encoding, e.g. data.encoding=latin-1"
        ) from exc
    except LookupError as exc:  # an encoding name Python does not know
        raise DataError(f"data.encoding={encoding} is not an encoding Python knows (e.g. utf-8, latin-1)") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty") from exc
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        first = first_line(exc)
        raise DataError(f"{path} could not be read as {suffix[1:]}: {first}") from exc
    if len(df) == 0:
        raise DataError(f"{path} has no rows")
    return df


def _separator(p: Path, encoding: str) -> str:
    """`,` unless the header line has none and has tabs, semicolons or pipes (a TSV or an Excel export saved as .csv)."""
    with open(p, "rb") as f:
        header = f.readline().decode(encoding, errors="replace")
    if "," in header:
        return ","
    for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
        if sep in header:
            log.warning("%s has no comma in its header line: read as %s-separated", p, name)
            return sep
    return ","


def _read_json(p: Path, encoding: str, lines: bool) -> pd.DataFrame:
    # Decode ourselves so that a wrong encoding is reported as such, not as bad JSON.
    from io import StringIO

    text = p.read_bytes().decode(encoding)
    df = pd.read_json(StringIO(text), lines=lines, dtype=False)  # values as written
    if not isinstance(df, pd.DataFrame):
        raise ValueError("expected a list of records")
    return df


def _read_hub(cfg: HubDataConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    import datasets

    try:
        path = Path(cfg.path)
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(cfg.path, cfg.config_name)
    except Exception as exc:  # hub unreachable, unknown name, bad folder: all user-fixable
        first = first_line(exc)
        raise DataError(f"could not load data.path={cfg.path}: {first}") from exc
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({cfg.train_split: ds})
    for split in (cfg.train_split, cfg.eval_split):
        if split is not None and split not in ds:
            raise DataError(f"data.path={cfg.path} has no split '{split}' (splits: {', '.join(ds)})")
    train = ds[cfg.train_split].to_pandas()
    eval_ = ds[cfg.eval_split].to_pandas() if cfg.eval_split else None
    return train, eval_


def _read(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, str, str]:
    """The raw train table, the eval table if the source has one, and names for each in messages."""
    if isinstance(cfg, LocalDataConfig):
        train = read_table(cfg.train_file, cfg.encoding)
        eval_ = read_table(cfg.eval_file, cfg.encoding) if cfg.eval_file else None
        return train, eval_, cfg.train_file, cfg.eval_file or cfg.train_file
    if isinstance(cfg, HubDataConfig):
        train, eval_ = _read_hub(cfg)
        return train, eval_, f"{cfg.path} ({cfg.train_split})", f"{cfg.path} ({cfg.eval_split})"
    builtin = {"imdb": _read_imdb, "bbc_news": _read_bbc_news}
    if cfg.name not in builtin:
        raise DataError(f"unknown data set '{cfg.name}'; built in: {', '.join(builtin)}, or data=local / data=hub")
    return builtin[cfg.name](), None, cfg.name, cfg.name


def sources(cfg: DataConfig) -> tuple[str, str]:
    """Where the train and eval data were read from, for the record (MLflow's dataset inputs)."""
    if isinstance(cfg, LocalDataConfig):
        return str(Path(cfg.train_file).resolve()), str(Path(cfg.eval_file or cfg.train_file).resolve())
    if isinstance(cfg, HubDataConfig):
        return cfg.path, cfg.path
    asset = {"imdb": assets.IMDB, "bbc_news": assets.BBC_NEWS}.get(cfg.name)
    source = str(assets.cache_dir() / asset.name) if asset else cfg.name
    return source, source


# --------------------------------------------------------------------------- checking
def _columns(df: pd.DataFrame, cfg: DataConfig, source: str) -> tuple[list[str], list]:
    for role, col in (("text", cfg.text_column), ("label", cfg.label_column)):
        if col not in df.columns:
            raise DataError(
                f"{source}: no {role} column '{col}' (columns: {', '.join(map(str, df.columns))}); "
                f"set data.{role}_column"
            )
    texts, labels = df[cfg.text_column], df[cfg.label_column]
    if isinstance(texts, pd.DataFrame) or isinstance(labels, pd.DataFrame):
        raise DataError(f"{source}: more than one column is named '{cfg.text_column}' or '{cfg.label_column}'")
    for i, value in enumerate(labels):
        if isinstance(value, (list, tuple, dict, set, np.ndarray)):
            raise DataError(f"{source}: column '{cfg.label_column}' holds a {type(value).__name__} in row {i + 1}; "
                            f"a label must be a single value (one class per row)")
    missing = labels.isna() | labels.map(lambda v: isinstance(v, str) and not v.strip())
    if missing.any():
        raise DataError(f"{source}: {int(missing.sum())} rows have no label in column '{cfg.label_column}' "
                        f"(first: row {int(np.flatnonzero(missing.to_numpy())[0]) + 1})")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DataError(f"{source}: {len(bad)} rows have an empty or non-text value in column '{cfg.text_column}' "
                        f"(first: row {bad[0] + 1})")
    return texts.tolist(), labels.tolist()


def _label_key(value) -> tuple[int, int, str]:
    # Sort whole numbers numerically (also when a CSV gives them as text) and everything else as text: stable ids.
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (0, int(value), str(value))
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value):
        return (0, int(value), value)
    return (1, 0, str(value))


def stratified_split(labels: Sequence[int], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, eval): each class split in the same proportion, both sides shuffled."""
    rng = np.random.RandomState(seed)
    labels_arr = np.asarray(labels)
    train_idx, eval_idx = [], []
    for cls in sorted(set(labels_arr.tolist())):
        idx = np.flatnonzero(labels_arr == cls)
        rng.shuffle(idx)
        n_eval = int(round(len(idx) * eval_fraction))
        n_eval = min(max(n_eval, 1), len(idx) - 1) if len(idx) > 1 else 0
        eval_idx.extend(idx[:n_eval].tolist())
        train_idx.extend(idx[n_eval:].tolist())
    rng.shuffle(train_idx)
    rng.shuffle(eval_idx)
    return train_idx, eval_idx


# A sweep's trials (and its up-front check of every job) run in one process with the basic launcher: what they
# share is read and tokenised once. A key holds everything that decides the result; files and folders count
# by the size and mtime of what is in them (assets.stamp).
_SPLITS: dict[str, TextSplits] = {}
_IDS: dict[str, list[list[int]]] = {}
_KEEP = 8  # entries per memo: a sweep over data settings holds a few at most


def _remember(memo: dict, key: str, value):
    if len(memo) >= _KEEP:
        memo.pop(next(iter(memo)))
    memo[key] = value
    return value


def load_splits(cfg: DataConfig) -> TextSplits:
    """Read, check, split and cap the data; labels become ids 0..K-1. Kept per process (see _SPLITS)."""
    files = [getattr(cfg, k, None) for k in ("train_file", "eval_file", "path")]
    key = repr(cfg) + "|" + repr([(f, assets.stamp(f)) for f in files])
    if key not in _SPLITS:
        _remember(_SPLITS, key, _load_splits(cfg))
    kept = _SPLITS[key]
    return TextSplits(list(kept.train_texts), list(kept.train_labels), list(kept.eval_texts), list(kept.eval_labels),
                      list(kept.label_names))


def _load_splits(cfg: DataConfig) -> TextSplits:
    train_df, eval_df, source, eval_source = _read(cfg)
    texts, raw_labels = _columns(train_df, cfg, source)
    classes = sorted(set(raw_labels), key=_label_key)
    if len(classes) < 2:
        raise DataError(f"{source}: only one class ({classes[0]!r}) in column '{cfg.label_column}'; need at least 2")
    label_id = {c: i for i, c in enumerate(classes)}

    if eval_df is None:
        train_idx, eval_idx = stratified_split([label_id[c] for c in raw_labels], cfg.eval_fraction, cfg.split_seed)
        if not eval_idx:
            counts = ", ".join(f"{c} {raw_labels.count(c)}" for c in classes)
            raise DataError(f"{source}: too few rows to hold out an eval set ({counts}); the stratified split needs "
                            f"at least 2 rows of a class. Add rows, or give an eval set (data.eval_file)")
        eval_texts, eval_raw = [texts[i] for i in eval_idx], [raw_labels[i] for i in eval_idx]
        texts, raw_labels = [texts[i] for i in train_idx], [raw_labels[i] for i in train_idx]
    else:
        eval_texts, eval_raw = _columns(eval_df, cfg, eval_source)
        unseen = sorted({str(c) for c in eval_raw if c not in label_id})
        if unseen:
            raise DataError(f"{eval_source}: eval labels never seen in training: {', '.join(unseen[:5])}")
        # A given eval file keeps its order; a capped slice of it must still mix classes.
        order = np.random.RandomState(cfg.split_seed).permutation(len(eval_texts))
        eval_texts, eval_raw = [eval_texts[i] for i in order], [eval_raw[i] for i in order]

    n_train = cfg.max_train_samples or len(texts)
    n_eval = cfg.max_eval_samples or len(eval_texts)
    if len(eval_texts) == 0:
        raise DataError(f"{eval_source}: the eval split is empty")
    present = set(eval_raw[:n_eval])
    absent = [str(c) for c in classes if c not in present]
    if absent:
        log.warning("the eval set (%d rows) has no example of class %s: its accuracy says nothing about it",
                    min(n_eval, len(eval_texts)), ", ".join(absent[:5]))
    return TextSplits(
        train_texts=texts[:n_train],
        train_labels=[label_id[c] for c in raw_labels[:n_train]],
        eval_texts=eval_texts[:n_eval],
        eval_labels=[label_id[c] for c in eval_raw[:n_eval]],
        label_names=[str(c) for c in classes],
    )


# --------------------------------------------------------------------------- tokenising
def _truncate(ids: list[int], budget: int, side: Truncation) -> list[int]:
    if len(ids) <= budget:
        return ids
    if side == Truncation.head:
        return ids[:budget]
    if side == Truncation.tail:
        return ids[-budget:]
    head = budget // 4  # Sun et al. 2019 kept 128 head + 382 tail tokens of 510
    return ids[:head] + ids[len(ids) - (budget - head):]


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        ident = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    else:
        state = json.loads(backend.to_str())
        # Calling the tokenizer rewrites its truncation/padding state; that is not part of its identity.
        state.pop("truncation", None)
        state.pop("padding", None)
        ident = json.dumps(state, sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}:{ident}".encode()).hexdigest()[:16]


def encode_texts(texts: list[str], tokenizer, max_length: int, truncation: Truncation) -> list[list[int]]:
    """Token ids of each text, cut to max_length with the special tokens, as training and `predict` both cut."""
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    specials = [t for t in (cls_id,) if t is not None], [t for t in (sep_id,) if t is not None]
    budget = max_length - len(specials[0]) - len(specials[1])
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
    return [specials[0] + _truncate(ids, budget, truncation) + specials[1] for ids in enc["input_ids"]]


def tokenize(texts: list[str], tokenizer, max_length: int, truncation: Truncation) -> list[list[int]]:
    """Token ids with the model's special tokens, at most max_length long, no padding.

    Runs through datasets.map(batched=True) with a cache file keyed by the texts,
    the tokenizer and the settings, so repeated runs reuse it; trials in one process reuse the ids in memory.
    """
    import datasets

    key = hashlib.sha256()
    for part in (_tokenizer_fingerprint(tokenizer), str(max_length), truncation.value, *texts):
        key.update(part.encode())
        key.update(b"\0")
    if key.hexdigest() in _IDS:
        return _IDS[key.hexdigest()]
    cache = assets.cache_dir() / "tokenized" / f"{key.hexdigest()[:32]}.arrow"
    cache.parent.mkdir(parents=True, exist_ok=True)

    def encode(batch):
        return {"input_ids": encode_texts(batch["text"], tokenizer, max_length, truncation)}

    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(encode, batched=True, batch_size=1000, remove_columns=["text"],
                cache_file_name=str(cache), load_from_cache_file=True, desc="tokenising")
    return _remember(_IDS, key.hexdigest(), ds["input_ids"])


# --------------------------------------------------------------------------- batching
class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, input_ids: list[list[int]], labels: list[int]):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.input_ids[i], self.labels[i]


class PadCollator:
    """Pad to the longest sequence in the batch, not to max_length."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar length: sort within mega-batches of 50 batches, then shuffle the batches."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        mega = 50 * self.batch_size
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start:start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


def make_loader(input_ids: list[list[int]], labels: list[int], batch_size: int, pad_id: int,
                shuffle: bool, seed: int, group_by_length: bool = False) -> DataLoader:
    """Training batches (shuffle=True): random, or length-grouped. Eval batches (shuffle=False): longest first,
    so each batch pads to its own near-equal lengths; the scores do not depend on the order."""
    dataset = EncodedDataset(input_ids, labels)
    collate = PadCollator(pad_id)
    # Its own generator: iterating a loader draws a seed, which must not come from (and shift) the global RNG
    # that dropout uses; an evaluation between steps would otherwise change the training after it.
    generator = torch.Generator().manual_seed(seed)
    if not shuffle:
        by_length = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]), reverse=True)
        return DataLoader(dataset, batch_size=batch_size, sampler=by_length, generator=generator, collate_fn=collate)
    if group_by_length:
        sampler = LengthGroupedBatchSampler([len(x) for x in input_ids], batch_size, seed)
        return DataLoader(dataset, batch_sampler=sampler, generator=generator, collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)
