import bz2
import copy
import gzip
import json
import lzma
from collections import Counter

import pandas as pd
import pytest
import torch

from ftsweep import batches
from ftsweep.batches import (
    LengthGroupedBatchSampler,
    PadCollator,
    _tokenizer_fingerprint,
    _truncate,
    make_loader,
    tokenize,
)
from ftsweep.config import LocalDataConfig, Truncation
from ftsweep.data import load_splits, stratified_split, strip_breaks
from ftsweep.errors import DataError
from tests.conftest import toy_rows, write_csv


def local(path, **kw) -> LocalDataConfig:
    return LocalDataConfig(name="local", train_file=str(path), **kw)


@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_every_local_format_loads(tmp_path, ext):
    df = pd.DataFrame(toy_rows(40), columns=["text", "label"])
    path = tmp_path / f"d.{ext}"
    {
        "csv": lambda: df.to_csv(path, index=False),
        "tsv": lambda: df.to_csv(path, sep="\t", index=False),
        "json": lambda: df.to_json(path, orient="records"),
        "jsonl": lambda: df.to_json(path, orient="records", lines=True),
        "parquet": lambda: df.to_parquet(path),
    }[ext]()
    s = load_splits(local(path))
    assert s.label_names == ["neg", "pos"]
    assert len(s.train_texts) + len(s.eval_texts) == 40
    assert len(s.eval_texts) == 8  # eval_fraction 0.2, stratified
    assert Counter(s.eval_labels) == {0: 4, 1: 4}


@pytest.mark.parametrize(
    "ext, compress", [("csv.gz", gzip.compress), ("tsv.xz", lzma.compress), ("jsonl.bz2", bz2.compress)]
)
def test_compressed_text_files_load(tmp_path, ext, compress):
    df = pd.DataFrame(toy_rows(40), columns=["text", "label"])
    plain = tmp_path / f"plain.{ext.split('.')[0]}"
    {"csv": lambda: df.to_csv(plain, index=False), "tsv": lambda: df.to_csv(plain, sep="\t", index=False)}.get(
        ext.split(".")[0], lambda: df.to_json(plain, orient="records", lines=True)
    )()
    path = put(tmp_path / f"d.{ext}", compress(plain.read_bytes()))
    s, reference = load_splits(local(path)), load_splits(local(plain))
    assert (s.train_texts, s.eval_labels, s.label_names) == (
        reference.train_texts,
        reference.eval_labels,
        reference.label_names,
    )


def test_separate_eval_file_and_caps(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_rows(50))
    ev = write_csv(tmp_path / "eval.csv", toy_rows(30, seed=1))
    s = load_splits(local(train, eval_file=str(ev), max_train_samples=20, max_eval_samples=10))
    assert len(s.train_texts) == 20 and len(s.eval_texts) == 10


def test_integer_labels_keep_numeric_order(tmp_path):
    rows = [(t, {"pos": 10, "neg": 2}[label]) for t, label in toy_rows(20)]
    s = load_splits(local(write_csv(tmp_path / "d.csv", rows)))
    assert s.label_names == ["2", "10"]


def put(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope.csv", "data file not found"),
        (lambda p: write_csv(p / "d.csv", toy_rows(10), header=("sentence", "label")), "no text column 'text'"),
        (lambda p: write_csv(p / "d.csv", toy_rows(10), header=("text", "y")), "no label column 'label'"),
        (lambda p: write_csv(p / "d.csv", [(t, "pos") for t, _ in toy_rows(10)]), "only one class"),
        (lambda p: put(p / "d.csv", b""), "is empty"),
        (lambda p: put(p / "d.csv", b"text,label\n"), "no rows"),
        (lambda p: put(p / "d.csv", "text,label\ncaf\xe9 ok,pos\nbad,neg\n".encode("latin-1")), "data.encoding"),
        (lambda p: put(p / "d.json", json.dumps({"a": 1}).encode()), "could not be read as json"),
        (lambda p: put(p / "d.xlsx", b"x"), "unsupported extension"),
        (lambda p: put(p / "d.parquet.gz", gzip.compress(b"x")), "unsupported extension '.parquet.gz'"),
        (lambda p: put(p / "d.csv.xz", lzma.compress(b"text,label\n" * 50)[:40]), "could not be read as csv.xz"),
        (lambda p: put(p / "d.csv.gz", b"not gzip at all"), "could not be read as csv.gz"),
    ],
)
def test_bad_data_gives_one_clear_line(tmp_path, make, message):
    with pytest.raises(DataError, match=message) as info:
        load_splits(local(make(tmp_path)))
    assert "\n" not in str(info.value)


def test_wrong_schema_parquet_names_the_columns(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"body": ["a", "b"], "y": [0, 1]}).to_parquet(path)
    with pytest.raises(DataError, match=r"no text column 'text' \(columns: body, y\)"):
        load_splits(local(path))


def test_eval_labels_unseen_in_train_are_rejected(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_rows(20))
    ev = write_csv(tmp_path / "eval.csv", [("meh", "neutral"), ("good", "pos")])
    with pytest.raises(DataError, match="never seen in training: neutral"):
        load_splits(local(train, eval_file=str(ev)))


def test_encoding_option_reads_latin1(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncaf\xe9 good,pos\nbad film,neg\nok,pos\nno,neg\n".encode("latin-1"))
    s = load_splits(local(path, encoding="latin-1"))
    assert any("café" in t for t in s.train_texts + s.eval_texts)


def test_stratified_split_is_fixed_and_proportional():
    labels = [0] * 80 + [1] * 20
    a, b = stratified_split(labels, 0.25, seed=7), stratified_split(labels, 0.25, seed=7)
    assert a == b
    train, ev = a
    assert sorted(train + ev) == list(range(100))
    assert Counter(labels[i] for i in ev) == {0: 20, 1: 5}
    assert stratified_split(labels, 0.25, seed=8) != a


def test_truncation_sides():
    ids = list(range(20))
    assert _truncate(ids, 8, Truncation.head) == list(range(8))
    assert _truncate(ids, 8, Truncation.tail) == list(range(12, 20))
    assert _truncate(ids, 8, Truncation.head_tail) == [0, 1] + list(range(14, 20))
    assert _truncate(ids[:5], 8, Truncation.head_tail) == ids[:5]


def test_tokenize_adds_specials_respects_max_length_and_caches(tiny_tokenizer, session_cache):
    texts = ["short one", "a much longer text " * 30]
    ids = tokenize(texts, tiny_tokenizer, 16, Truncation.head_tail)
    assert ids[0][0] == tiny_tokenizer.cls_token_id and ids[0][-1] == tiny_tokenizer.sep_token_id
    assert len(ids[1]) == 16 and len(ids[0]) < 16
    before = set((session_cache / "tokenized").iterdir())
    assert tokenize(texts, tiny_tokenizer, 16, Truncation.head_tail) == ids
    assert set((session_cache / "tokenized").iterdir()) == before  # served from the cache file


def test_a_tokenizer_fingerprint_is_kept_per_object_but_follows_an_added_token(tiny_tokenizer, monkeypatch):
    made = []
    monkeypatch.setattr(batches, "_fingerprint_of", lambda tok: made.append(len(tok)) or f"fp{len(tok)}")
    tok = copy.deepcopy(tiny_tokenizer)  # the process's shared tokenizer is not ours to change
    first = _tokenizer_fingerprint(tok)
    assert _tokenizer_fingerprint(tok) == first and len(made) == 1  # computed once for this object
    tok.add_tokens(["zzqxword"])  # token ids cached under the old fingerprint would now be wrong
    assert _tokenizer_fingerprint(tok) != first and len(made) == 2


def test_html_line_breaks_become_spaces_in_every_spelling():
    texts = pd.Series(["a<br />b", "a<BR>b", "a<br/>b", "a<br\t/>b", "a<bra>b", "no break"])
    assert strip_breaks(texts).tolist() == ["a b", "a b", "a b", "a b", "a<bra>b", "no break"]
    assert strip_breaks(texts.astype(object)).tolist() == strip_breaks(texts).tolist()


def test_dynamic_padding_pads_to_the_longest_in_the_batch():
    batch = PadCollator(pad_id=0)([([101, 5, 102], 1), ([101, 5, 6, 7, 102], 0)])
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["input_ids"][0].tolist() == [101, 5, 102, 0, 0]
    assert batch["labels"].tolist() == [1, 0]


def test_a_batch_width_rounds_up_to_a_multiple_of_16_but_never_past_max_length():
    items = lambda n: [([101] + [5] * (n - 2) + [102], 1)]  # noqa: E731
    assert PadCollator(0, max_width=64)(items(17))["input_ids"].shape == (1, 32)
    assert PadCollator(0, max_width=64)(items(32))["input_ids"].shape == (1, 32)
    assert PadCollator(0, max_width=40)(items(33))["input_ids"].shape == (1, 40)  # 48 would pass max_length
    batch = PadCollator(0, max_width=64)(items(3))
    assert batch["attention_mask"].tolist() == [[1, 1, 1] + [0] * 13]
    widths = {
        b["input_ids"].shape[1]
        for b in make_loader([[1] * n for n in range(3, 100)], [0] * 97, 4, 0, shuffle=True, seed=0, max_width=99)
    }
    assert widths <= {16, 32, 48, 64, 80, 96, 99}


def test_length_grouping_cuts_padding_and_covers_every_example():
    lengths = [(i * 37) % 100 + 3 for i in range(400)]
    ids = [[1] * n for n in lengths]
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=0)
    seen = [i for b in sampler for i in b]
    assert sorted(seen) == list(range(400))
    grouped = make_loader(ids, [0] * 400, 8, 0, shuffle=True, seed=0, group_by_length=True)
    plain = make_loader(ids, [0] * 400, 8, 0, shuffle=True, seed=0)
    padded = lambda loader: sum(b["input_ids"].numel() for b in loader)  # noqa: E731
    assert padded(grouped) < 0.7 * padded(plain)


def test_loader_order_is_seeded():
    ids = [[1, i] for i in range(50)]

    def order(seed):
        return torch.cat([b["input_ids"][:, 1] for b in make_loader(ids, [0] * 50, 8, 0, True, seed)]).tolist()

    assert order(1) == order(1) and order(1) != order(2)


# --------------------------------------------------------------------------- read literally, name the right file
@pytest.mark.parametrize("ext", ["csv", "tsv"])
def test_label_values_that_look_missing_are_classes_as_written(tmp_path, ext):
    names = ["NA", "null", "None", "nan", "N/A"]
    rows = [(text, names[i % 5]) for i, (text, _) in enumerate(toy_rows(50))] + [("NA", "null"), ("null", "NA")]
    path = tmp_path / f"d.{ext}"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False, sep="," if ext == "csv" else "\t")
    s = load_splits(local(path))
    assert sorted(s.label_names) == sorted(names)  # five classes, none dropped as missing
    assert len(s.train_texts) + len(s.eval_texts) == 52
    assert "NA" in s.train_texts + s.eval_texts and "null" in s.train_texts + s.eval_texts  # texts as written


def test_an_empty_label_cell_is_missing_and_named_with_its_row(tmp_path):
    path = put(tmp_path / "d.csv", b"text,label\ngood,pos\nbad,\nfine,neg\n")
    with pytest.raises(DataError, match=r"1 rows have no label in column 'label' \(first: row 2\)"):
        load_splits(local(path))


def test_an_eval_file_error_names_the_eval_file(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_rows(20))
    ev = write_csv(tmp_path / "eval.csv", toy_rows(10), header=("body", "label"))
    with pytest.raises(DataError, match=f"^{ev}: no text column 'text'"):
        load_splits(local(train, eval_file=str(ev)))
    unseen = write_csv(tmp_path / "unseen.csv", [("meh", "neutral"), ("good", "pos")])
    with pytest.raises(DataError, match=f"^{unseen}: eval labels never seen"):
        load_splits(local(train, eval_file=str(unseen)))


def test_a_folder_given_as_a_data_file_says_it_is_a_folder(tmp_path):
    (tmp_path / "data.csv").mkdir()
    with pytest.raises(DataError, match="data.csv is a folder"):
        load_splits(local(tmp_path / "data.csv"))


def test_a_list_valued_label_column_is_one_line(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [["x"], ["y"], ["x", "y"]]}).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'label' holds a \w+ in row 1; a label must be a single value"):
        load_splits(local(path))


@pytest.mark.parametrize("sep", ["\t", ";"])
def test_a_tab_or_semicolon_file_saved_as_csv_is_detected(tmp_path, sep):
    path = tmp_path / "d.csv"
    pd.DataFrame(toy_rows(40), columns=["text", "label"]).to_csv(path, index=False, sep=sep)
    s = load_splits(local(path))
    assert s.label_names == ["neg", "pos"] and len(s.train_texts) + len(s.eval_texts) == 40


def test_a_data_set_too_small_to_split_says_so_and_what_to_do(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("good", "pos"), ("bad", "neg"), ("meh", "neutral")])
    with pytest.raises(
        DataError,
        match=r"too few rows to hold out an eval set \(neg 1, neutral 1, pos 1\).*"
        r"data.eval_file",
    ):
        load_splits(local(path))


def test_splits_are_read_once_per_process_and_again_when_the_file_changes(tmp_path, monkeypatch):
    import os

    from ftsweep import data as data_mod
    from ftsweep.config import LocalDataConfig

    path = write_csv(tmp_path / "d.csv", toy_rows(40))
    cfg = LocalDataConfig(name="local", train_file=str(path))
    reads = []
    real = data_mod._read
    monkeypatch.setattr(data_mod, "_read", lambda c: reads.append(1) or real(c))
    first = data_mod.load_splits(cfg)
    first.train_texts.clear()  # a caller's copy: what the process keeps is untouched
    again = data_mod.load_splits(cfg)
    assert len(reads) == 1 and len(again.train_texts) > 0
    write_csv(path, toy_rows(60, seed=1))
    os.utime(path, ns=(1, 1))  # a different mtime even within the clock's resolution
    changed = data_mod.load_splits(cfg)
    assert len(reads) == 2 and len(changed.train_texts) + len(changed.eval_texts) == 60
