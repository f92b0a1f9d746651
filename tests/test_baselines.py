"""ftsweep/baselines.py: the majority class and TF-IDF + logistic regression on constructed splits."""

import pytest

from ftsweep import baselines
from ftsweep.data import TextSplits


def split(train: list[tuple[str, int]], evaluation: list[tuple[str, int]]) -> TextSplits:
    return TextSplits(
        train_texts=[t for t, _ in train],
        train_labels=[y for _, y in train],
        eval_texts=[t for t, _ in evaluation],
        eval_labels=[y for _, y in evaluation],
        label_names=["neg", "pos"],
    )


def test_the_baselines_score_what_they_should_and_are_computed_once(monkeypatch):
    good = [(f"a good fine great film number {i}", 1) for i in range(24)]
    bad = [(f"a bad awful dull film number {i}", 0) for i in range(16)]
    s = split(good + bad, [("good great", 1), ("bad awful", 0), ("fine great", 1), ("dull awful", 0)])
    found = baselines.baselines(s)
    assert found["baseline/majority_accuracy"] == 0.5  # "pos" (24 of 40 training rows) is right on 2 of 4
    assert found["baseline/tfidf_accuracy"] == 1.0 and found["tfidf_predicted"] == [1, 0, 1, 0]

    monkeypatch.setattr(baselines, "_compute", lambda splits: pytest.fail("computed twice"))
    assert baselines.baselines(s) == found  # kept in memory
    baselines._KEPT.clear()
    assert baselines.baselines(s) == found  # and on disk


def test_one_class_in_training_leaves_tfidf_at_the_majority():
    s = split([("only this", 1), ("only that", 1)], [("x", 1), ("y", 0)])
    found = baselines.baselines(s)
    assert found["baseline/tfidf_accuracy"] == found["baseline/majority_accuracy"] == 0.5
