"""Data: read a labelled text set, check it and split it (ftsweep/batches.py tokenises and batches it).

Everything a user can get wrong about their data (a missing file or column,
undecodable bytes, one class only, eval labels unseen in training) is found
here, before a model is loaded, and reported as one DataError line.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import datasets
import numpy as np
import pandas as pd

from ftsweep import assets
from ftsweep.config import DataConfig, HubDataConfig, LocalDataConfig
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
# Spelled so that pyarrow can replace in C: no compiled pattern and no \s (RE2's \s lacks \v, so pandas would
# send `\s` through Python's re row by row). 0.10-0.15 s over all of IMDB instead of 0.38-0.46 s, in every
# sweep's check and single run.
_BR = r"(?i)<br[ \t\n\r\f\v]*/?>"


def strip_breaks(texts: pd.Series) -> pd.Series:
    """HTML line breaks (`<br />`, `<BR>`, `<br/>`) as spaces."""
    return texts.str.replace(_BR, " ", regex=True)


def _read_imdb() -> pd.DataFrame:
    df = pd.read_csv(assets.fetch(assets.IMDB))
    df["review"] = strip_breaks(df["review"])
    # 418 reviews occur twice; a copy on each side of the split would leak test answers into training.
    return df.drop_duplicates(subset="review", keep="first").reset_index(drop=True)


def _read_bbc_news() -> pd.DataFrame:
    root = assets.fetch(assets.BBC_NEWS)
    files = sorted(p for p in root.rglob("*.txt"))
    return pd.DataFrame(
        {
            "text": [_decode_bbc(p.read_bytes()) for p in files],
            "label": [p.parent.name for p in files],
        }
    )


def _decode_bbc(raw: bytes) -> str:
    # The corpus is UTF-8 but for one article saved as Latin-1 (a pound sign).
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# A text file may be compressed (train.csv.gz): a data set shipped with the code, or carried to a machine
# that takes few megabytes, is a fraction of its size that way. parquet compresses itself.
_COMPRESSED: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
_FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def _format_of(p: Path) -> tuple[str, str | None]:
    """(the table format's extension, the compression's or None): `d.csv.xz` is (".csv", ".xz")."""
    suffixes = [s.lower() for s in p.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in _COMPRESSED:
        return suffixes[-2], suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def _open(p: Path, compression: str | None) -> IO[bytes]:
    return _COMPRESSED[compression](p, "rb") if compression else open(p, "rb")


def read_table(path: str, encoding: str = "utf-8") -> pd.DataFrame:
    """Read csv, tsv, json, jsonl or parquet, chosen by the file's extension; the text formats may be compressed
    (.gz, .xz, .bz2). Cells are read as written: `NA`, `null` or `None` are values (a class may be called that),
    not missing ones."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data file {path} is a folder; give a .csv, .tsv, .json, .jsonl or .parquet file")
    if not p.is_file():
        raise DataError(f"data file not found: {path}")
    suffix, compression = _format_of(p)
    literal = {"dtype": str, "keep_default_na": False, "na_filter": False, "encoding": encoding}
    readers = {
        ".csv": lambda: pd.read_csv(p, sep=_separator(p, encoding, compression), **literal),
        ".tsv": lambda: pd.read_csv(p, sep="\t", **literal),
        ".json": lambda: _read_json(p, encoding, lines=False, compression=compression),
        ".jsonl": lambda: _read_json(p, encoding, lines=True, compression=compression),
        ".parquet": lambda: pd.read_parquet(p),
    }
    if suffix not in readers or (compression and suffix == ".parquet"):
        raise DataError(
            f"{path}: unsupported extension '{suffix}{compression or ''}'; use one of {', '.join(_FORMATS)} "
            f"(the text formats may end in {', '.join(_COMPRESSED)})"
        )
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
    except (ValueError, pd.errors.ParserError, OSError, EOFError, lzma.LZMAError) as exc:  # EOF: truncated
        first = first_line(exc)
        raise DataError(f"{path} could not be read as {suffix[1:]}{compression or ''}: {first}") from exc
    if len(df) == 0:
        raise DataError(f"{path} has no rows")
    return df


def _separator(p: Path, encoding: str, compression: str | None = None) -> str:
    """`,` unless the header line has none and has tabs, semicolons or pipes (a TSV or an Excel export saved as
    .csv)."""
    with _open(p, compression) as f:
        header = f.readline().decode(encoding, errors="replace")
    if "," in header:
        return ","
    for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
        if sep in header:
            log.warning("%s has no comma in its header line: read as %s-separated", p, name)
            return sep
    return ","


def _read_json(p: Path, encoding: str, lines: bool, compression: str | None = None) -> pd.DataFrame:
    # Decode ourselves so that a wrong encoding is reported as such, not as bad JSON.
    with _open(p, compression) as f:
        text = f.read().decode(encoding)
    df = pd.read_json(StringIO(text), lines=lines, dtype=False)  # values as written
    if not isinstance(df, pd.DataFrame):
        raise ValueError("expected a list of records")
    return df


def _read_hub(cfg: HubDataConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
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
            raise DataError(
                f"{source}: column '{cfg.label_column}' holds a {type(value).__name__} in row {i + 1}; "
                f"a label must be a single value (one class per row)"
            )
    missing = labels.isna() | labels.map(lambda v: isinstance(v, str) and not v.strip())
    if missing.any():
        raise DataError(
            f"{source}: {int(missing.sum())} rows have no label in column '{cfg.label_column}' "
            f"(first: row {int(np.flatnonzero(missing.to_numpy())[0]) + 1})"
        )
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DataError(
            f"{source}: {len(bad)} rows have an empty or non-text value in column '{cfg.text_column}' "
            f"(first: row {bad[0] + 1})"
        )
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
_KEEP = 8  # entries per memo: a sweep over data settings holds a few at most


def remember(memo: dict, key: str, value):
    if len(memo) >= _KEEP:
        memo.pop(next(iter(memo)))
    memo[key] = value
    return value


def load_splits(cfg: DataConfig) -> TextSplits:
    """Read, check, split and cap the data; labels become ids 0..K-1. Kept per process (see _SPLITS)."""
    files = [getattr(cfg, k, None) for k in ("train_file", "eval_file", "path")]
    key = repr(cfg) + "|" + repr([(f, assets.stamp(f)) for f in files])
    if key not in _SPLITS:
        remember(_SPLITS, key, _load_splits(cfg))
    kept = _SPLITS[key]
    return TextSplits(
        list(kept.train_texts),
        list(kept.train_labels),
        list(kept.eval_texts),
        list(kept.eval_labels),
        list(kept.label_names),
    )


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
            raise DataError(
                f"{source}: too few rows to hold out an eval set ({counts}); the stratified split needs "
                f"at least 2 rows of a class. Add rows, or give an eval set (data.eval_file)"
            )
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
        log.warning(
            "the eval set (%d rows) has no example of class %s: its accuracy says nothing about it",
            min(n_eval, len(eval_texts)),
            ", ".join(absent[:5]),
        )
    return TextSplits(
        train_texts=texts[:n_train],
        train_labels=[label_id[c] for c in raw_labels[:n_train]],
        eval_texts=eval_texts[:n_eval],
        eval_labels=[label_id[c] for c in eval_raw[:n_eval]],
        label_names=[str(c) for c in classes],
    )


def eval_digest(splits: TextSplits) -> str:
    """Names the eval split: its texts, their labels and the label names. Two runs with the same digest were
    scored on the same examples in the same order of example ids, so they compare example by example."""
    h = hashlib.sha256(json.dumps(splits.label_names).encode())
    for text, label in zip(splits.eval_texts, splits.eval_labels):
        h.update(f"{label}\0{text}\0".encode())
    return h.hexdigest()[:16]
