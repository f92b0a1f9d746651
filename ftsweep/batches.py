"""Tokenise, pad, batch: the texts of a split become the batches a run trains and evaluates on."""

from __future__ import annotations

import hashlib
import json
import random
import weakref
from typing import Iterator, Sequence

import datasets
import torch
from torch.utils.data import DataLoader, Sampler

from ftsweep import assets
from ftsweep.config import Truncation
from ftsweep.data import remember

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_IDS: dict[str, list[list[int]]] = {}  # token ids per texts, tokenizer and settings: trials in a process share them


# --------------------------------------------------------------------------- tokenising
def _truncate(ids: list[int], budget: int, side: Truncation) -> list[int]:
    if len(ids) <= budget:
        return ids
    if side == Truncation.head:
        return ids[:budget]
    if side == Truncation.tail:
        return ids[-budget:]
    head = budget // 4  # Sun et al. 2019 kept 128 head + 382 tail tokens of 510
    return ids[:head] + ids[len(ids) - (budget - head) :]


def _tokenizer_fingerprint(tokenizer) -> str:
    # Trials in one process share one tokenizer per folder (model.py), and each tokenize() asked for this: a
    # JSON round trip of the whole vocabulary, ~0.04 s a call. Kept per object; a changed vocabulary (added
    # tokens) changes its length and is fingerprinted again.
    kept = _FINGERPRINTS.get(tokenizer)
    if kept is None or kept[0] != len(tokenizer):
        kept = _FINGERPRINTS[tokenizer] = (len(tokenizer), _fingerprint_of(tokenizer))
    return kept[1]


def _fingerprint_of(tokenizer) -> str:
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
    ds = ds.map(
        encode,
        batched=True,
        batch_size=1000,
        remove_columns=["text"],
        cache_file_name=str(cache),
        load_from_cache_file=True,
        desc="tokenising",
    )
    return remember(_IDS, key.hexdigest(), ds["input_ids"])


# --------------------------------------------------------------------------- batching
class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, input_ids: list[list[int]], labels: list[int]):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.input_ids[i], self.labels[i]


# On a CPU, every new batch width left freed activations that glibc could not reuse for the next width, so a
# default run's RSS grew over training (1.9 GB after 10 steps, 2.7-2.8 GB by the end). Widths rounded up to a
# multiple of 16 repeat, their freed blocks are reused, and the peak stayed at 1.8-2.1 GB for the same step
# time (2-core EPYC, 2026-12-07; docs/benchmarks.md). Padding is masked: the scores do not depend on it.
PAD_MULTIPLE = 16


class PadCollator:
    """Pad to the longest sequence in the batch, not to max_length; with `max_width` (the longest a batch may
    be: data.max_length), that width rounded up to a multiple of PAD_MULTIPLE, never beyond max_width."""

    def __init__(self, pad_id: int, max_width: int | None = None):
        self.pad_id, self.max_width = pad_id, max_width

    def width(self, longest: int) -> int:
        if self.max_width is None:
            return longest
        return max(longest, min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, self.max_width))

    def __call__(self, items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        width = self.width(max(len(ids) for ids, _ in items))
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
            chunk = sorted(order[start : start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


def make_loader(
    input_ids: list[list[int]],
    labels: list[int],
    batch_size: int,
    pad_id: int,
    shuffle: bool,
    seed: int,
    group_by_length: bool = False,
    max_width: int | None = None,
) -> DataLoader:
    """Training batches (shuffle=True): random, or length-grouped. Eval batches (shuffle=False): longest first,
    so each batch pads to its own near-equal lengths; the scores do not depend on the order. `max_width`: see
    PadCollator."""
    dataset = EncodedDataset(input_ids, labels)
    collate = PadCollator(pad_id, max_width)
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
