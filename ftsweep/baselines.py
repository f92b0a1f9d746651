"""What fine-tuning must beat, on the very rows a run trains and scores on: the majority class, and TF-IDF
(1-2 grams) + logistic regression. Computed once per data split (about a second at the default's 2,500
reviews), kept in memory for a process's trials and on disk in the cache for later runs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from ftsweep import artifacts, assets
from ftsweep.data import TextSplits, eval_digest

_KEPT: dict[str, dict] = {}  # per data split, for the trials of one process


def baselines(splits: TextSplits) -> dict:
    """{"baseline/majority_accuracy", "baseline/tfidf_accuracy", "tfidf_predicted"}: the last, one label id per
    eval example in the split's order, lets a run compare itself with TF-IDF example by example."""
    key = _split_key(splits)
    if key in _KEPT:
        return _KEPT[key]
    path = assets.cache_dir() / "baselines" / f"{key}.json"
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = _compute(splits)
        artifacts.write_json(path, found)
    _KEPT[key] = found
    return found


def _compute(splits: TextSplits) -> dict:
    eval_labels = np.asarray(splits.eval_labels)
    majority = Counter(splits.train_labels).most_common(1)[0][0]
    predicted = _tfidf_predictions(splits) if len(set(splits.train_labels)) > 1 else [majority] * len(eval_labels)
    return {
        "baseline/majority_accuracy": float(np.mean(eval_labels == majority)),
        "baseline/tfidf_accuracy": float(np.mean(eval_labels == np.asarray(predicted))),
        "tfidf_predicted": [int(p) for p in predicted],
    }


def _tfidf_predictions(splits: TextSplits) -> list[int]:
    # min_df=2 drops one-off words; on a very small training set that may leave no vocabulary at all.
    min_df = 2 if len(splits.train_texts) >= 50 else 1
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df)
    classifier = LogisticRegression(C=10.0, max_iter=2000)  # C: the benchmark's choice (benchmarks/runs.py)
    classifier.fit(vectorizer.fit_transform(splits.train_texts), splits.train_labels)
    return [int(p) for p in classifier.predict(vectorizer.transform(splits.eval_texts))]


def _split_key(splits: TextSplits) -> str:
    h = hashlib.sha256(eval_digest(splits).encode())
    for text, label in zip(splits.train_texts, splits.train_labels):
        h.update(f"{label}\0{text}\0".encode())
    return h.hexdigest()[:24]
