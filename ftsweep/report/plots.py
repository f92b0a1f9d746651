"""The report's PNG plots: accuracy against memory, step time, lr and batch size; importances."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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


def make_plots(rows: list[Row], importances: dict[str, float], out: Path, title: str) -> list[Path]:
    # Here, not at the top: the Agg backend (files only, never a window) is chosen only when a report is drawn,
    # so that importing ftsweep.report in a notebook leaves its plotting backend alone.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.ok]
    if not ok:
        return []
    methods = sorted({r.group or r.method for r in ok})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    markers = {m: METHOD_MARKERS[i % len(METHOD_MARKERS)] for i, m in enumerate(methods)}
    device = memory_label(ok)
    files = []

    def scatter(name: str, x_of, xlabel: str, logx: bool = False, front: Optional[str] = None) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        usable = [r for r in ok if x_of(r) is not None]
        for m in methods:
            pts = [(x_of(r), r.accuracy) for r in usable if (r.group or r.method) == m]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(
                    xs,
                    ys,
                    label=m,
                    color=colors[m],
                    marker=markers[m],
                    s=55,
                    alpha=0.85,
                    edgecolors="black",
                    linewidths=0.5,
                )
        if front:
            fr = sorted((x_of(r), r.accuracy) for r in usable if front in r.pareto)
            if len(fr) >= 1:
                ax.step(*zip(*fr), where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval accuracy")
        ax.set_title(f"{title}: accuracy vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(title="method", fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        save_png(fig, path)
        files.append(path)

    scatter("accuracy_vs_memory", lambda r: r.memory_mb, f"memory, MB ({device})", front="memory")
    scatter("accuracy_vs_step_time", lambda r: r.get("perf/step_time_ms"), "median step time (ms)", front="time")
    scatter("accuracy_vs_lr", lambda r: to_float(r.params.get("lr")), "learning rate (log scale)", logx=True)
    scatter(
        "accuracy_vs_batch_size", lambda r: to_float(r.params.get("batch_size")), "batch size (examples)", logx=True
    )
    if importances:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(importances) + 1.5))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (Optuna PED-ANOVA, normalised)")
        ax.set_title(f"{title}: parameter importances")
        fig.tight_layout()
        path = out / "param_importances.png"
        save_png(fig, path)
        files.append(path)
    return files
