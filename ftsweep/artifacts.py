"""Files that runs and sweeps leave behind: written whole or not at all, with the user's umask."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from ftsweep.errors import DiskFullError, causes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: Path, write: Callable[[IO], object], binary: bool = False, need_bytes: int | None = None
) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file, and a
    full disk leaves the previous file as it was (DiskFullError names the path and `need_bytes`).

    NamedTemporaryFile creates 0600 files; the final file gets the mode a plain open() would give it."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode, newline = ("wb", None) if binary else ("w", "")
        text: dict[str, Any] = {} if binary else {"newline": newline, "encoding": "utf-8"}
        with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False, **text) as f:
            tmp = f.name
            write(f)  # a full disk fails here, or in the flush when the file closes
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        full = no_space(exc, path, need_bytes)
        if full is not None:
            raise full from exc
        raise


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(exc: BaseException, path: Path | str, need_bytes: int | None = None) -> DiskFullError | None:
    """The one line for a write that found no space left (None for any other error): the path, the space it
    needs and what is free there. Whatever the write would have replaced is still intact. A library that
    failed on its own cleanup after the disk filled (MLflow's store, "database or disk is full") counts too."""
    cause = _first_no_space(exc)
    if isinstance(cause, DiskFullError) or cause is None:
        return cause
    # A copy's OSError names its source, then its destination (filename2): the full disk is the destination's.
    where = Path(str(getattr(cause, "filename2", None) or getattr(cause, "filename", None) or path))
    existing = next((p for p in [where, *where.parents] if p.exists()), Path("/"))
    free_mb = shutil.disk_usage(existing).free / 2**20
    need = f"needs about {need_bytes / 2**20:,.1f} MB" if need_bytes else "needs more"
    return DiskFullError(f"No space left on device writing {where} ({need}, {free_mb:,.1f} MB free there)")


def _first_no_space(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s chain that says the disk is full: an OSError naming its file if there is one,
    else a database's own words for it."""
    chain = causes(exc)
    for error in chain:
        if isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno in NO_SPACE):
            return error
    if any(DATABASE_FULL in str(error) for error in chain):
        return OSError(errno.ENOSPC, DATABASE_FULL)
    return None


DATABASE_FULL = "database or disk is full"  # sqlite's words, through SQLAlchemy and MLflow


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested state (a checkpoint's dicts and lists): what writing it needs."""
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return obj.element_size() * obj.numel()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=str))


def confusion_matrix_png(cm, label_names: list[str], path: Path) -> None:
    # matplotlib is imported here, not at the top: Hydra's start-up imports this module (the sweeper plugin ->
    # sweep/storage.py -> spool.py), and matplotlib at the top made every command line slower (measured,
    # `ftsweep lrr=1`: 0.9 s instead of 0.6 s). The backend is chosen before pyplot is imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.7 * len(label_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (eval, n={int(cm.sum())})")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    fig.colorbar(im, ax=ax, label="examples")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG written whole (atomic_write), then closed whatever happened."""
    import matplotlib.pyplot as plt  # here, not at the top: see confusion_matrix_png

    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"), binary=True)
    finally:
        plt.close(fig)
