"""The report's PNG plots: accuracy against memory, step time, lr and batch size; importances."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ftsweep.artifacts import save_png
from ftsweep.report.rows import Row, to_float


def memory_label(rows: list[Row]) -> str:
    """What the memory axis measured, said honestly: it differs between a GPU and a CPU."""
    if any(r.get("mem/cuda_peak_allocated_mb") for r in rows):
        return "CUDA peak allocated"
    if any(r.get("mem/footprint_mb") is not None for r in rows):
        return "training state: params + grads + optimizer + saved activations"
    return "CPU RSS peak"


METHOD_MARKERS = "osD^vP*Xh"
POINT = {"s": 55, "alpha": 0.85, "edgecolors": "black", "linewidths": 0.5}


def make_plots(rows: list[Row], importances: dict[str, float], out: Path, title: str) -> list[Path]:
    # Here, not at the top: the Agg backend (files only, never a window) is chosen only when a report is drawn,
    # so that importing ftsweep.report in a notebook leaves its plotting backend alone.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.ok]
    if not ok:
        return []
    canvas = _Canvas(plt, ok, out, title)
    files = [
        canvas.scatter("accuracy_vs_memory", lambda r: r.memory_mb, f"memory, MB ({memory_label(ok)})", front="memory"),
        canvas.scatter(
            "accuracy_vs_step_time", lambda r: r.get("perf/step_time_ms"), "median step time (ms)", front="time"
        ),
        canvas.scatter(
            "accuracy_vs_lr", lambda r: to_float(r.params.get("lr")), "learning rate (log scale)", logx=True
        ),
        canvas.scatter(
            "accuracy_vs_batch_size", lambda r: to_float(r.params.get("batch_size")), "batch size (examples)", logx=True
        ),
    ]
    if importances:
        files.append(_importances(plt, importances, out / "param_importances.png", title))
    return files


class _Canvas:
    """What every scatter plot of one report shares: its trials, a colour and marker per method, the baselines."""

    def __init__(self, plt: Any, ok: list[Row], out: Path, title: str):
        self.plt, self.ok, self.out, self.title = plt, ok, out, title
        self.methods = sorted({r.group or r.method for r in ok})
        self.colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(self.methods)}
        self.markers = {m: METHOD_MARKERS[i % len(METHOD_MARKERS)] for i, m in enumerate(self.methods)}
        self.lines = _baselines(ok)

    def scatter(self, name: str, x_of, xlabel: str, logx: bool = False, front: Optional[str] = None) -> Path:
        fig, ax = self.plt.subplots(figsize=(7, 4.5))
        usable = [r for r in self.ok if x_of(r) is not None]
        for m in self.methods:
            self._points(ax, [r for r in usable if (r.group or r.method) == m], x_of, m)
        if front:
            fr = sorted((x_of(r), r.accuracy) for r in usable if front in r.pareto)
            if fr:
                ax.step(*zip(*fr), where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
        for label, (value, style) in self.lines.items():  # the baselines on the same rows, as reference lines
            ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=label)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval accuracy (bars: 95 % interval)")
        ax.set_title(f"{self.title}: accuracy vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(title="method", fontsize=8)
        fig.tight_layout()
        path = self.out / f"{name}.png"
        save_png(fig, path)
        return path

    def _points(self, ax: Any, mine: list[Row], x_of, method: str) -> None:
        """One method's trials, each accuracy with its 95 % interval as an error bar."""
        bars = [(x_of(r), r.accuracy, _interval(r)) for r in mine if _interval(r) is not None]
        if bars:
            xs, ys, reach = zip(*bars)
            ax.errorbar(xs, ys, yerr=list(zip(*reach)), fmt="none", ecolor=self.colors[method], alpha=0.5, capsize=2)
        if mine:
            pts = [(x_of(r), r.accuracy) for r in mine]
            ax.scatter(*zip(*pts), label=method, color=self.colors[method], marker=self.markers[method], **POINT)


def _importances(plt, importances: dict[str, float], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(importances) + 1.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna PED-ANOVA, normalised)")
    ax.set_title(f"{title}: parameter importances")
    fig.tight_layout()
    save_png(fig, path)
    return path


def _interval(row: Row) -> Optional[tuple[float, float]]:
    """How far the run's 95 % accuracy interval reaches below and above its accuracy (runs that log one)."""
    low, high, acc = row.get("eval/accuracy_ci_low"), row.get("eval/accuracy_ci_high"), row.accuracy
    return None if low is None or high is None or acc is None else (max(acc - low, 0.0), max(high - acc, 0.0))


def _baselines(ok: list[Row]) -> dict[str, tuple[float, str]]:
    """The baselines when every trial ran on the same rows (a sweep over the data has none to draw)."""
    out = {}
    for key, name, style in (
        ("baseline/tfidf_accuracy", "TF-IDF + LR", "--"),
        ("baseline/majority_accuracy", "majority", ":"),
    ):
        values = {r.get(key) for r in ok}
        value = values.pop() if len(values) == 1 else None
        if value is not None:
            out[name] = (value, style)
    return out
