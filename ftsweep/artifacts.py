"""Files that runs and sweeps leave behind: written whole or not at all, with the user's umask."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file.

    NamedTemporaryFile creates 0600 files; the final file gets the mode a plain open() would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode, newline = ("wb", None) if binary else ("w", "")
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     **({} if binary else {"newline": newline, "encoding": "utf-8"})) as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.chmod(f.name, 0o666 & ~_umask())
    os.replace(f.name, path)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=str))


def confusion_matrix_png(cm, label_names: list[str], path: Path) -> None:
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
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax, label="examples")
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"), binary=True)
    finally:
        plt.close(fig)
