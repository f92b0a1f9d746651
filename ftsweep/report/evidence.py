"""Every finished trial against the best one, with its uncertainty.

Trials scored on the same eval split (their runs' tag `ftsweep.eval_digest` matches) are compared example by
example from their `predictions.parquet`: a 95 % paired bootstrap interval on the accuracy difference, and
McNemar's exact p-value (ftsweep/stats.py). Runs logged before per-example predictions existed fall back to
an unpaired interval (two independent accuracies, normal approximation) and have no p-value. A trial is
*tied* with the best when its interval covers 0.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ftsweep import stats
from ftsweep.contract import PREDICTIONS
from ftsweep.errors import first_line
from ftsweep.report.rows import Row

log = logging.getLogger("ftsweep.report")


@dataclass(frozen=True)
class Comparison:
    """One trial's accuracy minus another's (the best's, or full fine-tuning's best), in accuracy (0.053 is 5.3
    points), with a 95 % interval."""

    diff: float
    low: float
    high: float
    p_value: Optional[float]  # McNemar's exact test; None for an unpaired comparison
    paired: bool

    @property
    def tied(self) -> bool:
        return self.low <= 0.0 <= self.high

    @classmethod
    def itself(cls) -> "Comparison":
        """A trial or configuration against itself: exactly 0, and the test cannot reject anything."""
        return cls(0.0, 0.0, 0.0, 1.0, True)

    def points(self) -> str:
        """e.g. "-5.3 points [-7.4, -3.2]"."""
        return f"{100 * self.diff:+.1f} points [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def outcomes(client: Any, rows: list[Row]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per finished run, whether it got each eval example right, by example id, and whether the TF-IDF baseline
    did on the same rows; runs without predictions (or whose artifact cannot be read) are left out and
    compared unpaired."""
    found: dict[str, np.ndarray] = {}
    tfidf: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="ftsweep-report-") as tmp:
        for row in rows:
            if not row.ok or not row.run_id:
                continue
            try:
                path = client.download_artifacts(row.run_id, PREDICTIONS, tmp)
                frame = pd.read_parquet(path).sort_values("example_id")
            except Exception as exc:  # an older run, or a store that lost the file: unpaired for this one
                log.debug("no predictions for run %s: %s", row.run_id, first_line(exc))
                continue
            found[row.run_id] = (frame["label"] == frame["predicted"]).to_numpy()
            row.predicted_classes = int(frame["predicted"].nunique())
            if "tfidf_predicted" in frame:
                tfidf[row.run_id] = (frame["label"] == frame["tfidf_predicted"]).to_numpy()
            Path(path).unlink(missing_ok=True)
    return found, tfidf


def compare(row: Row, other: Row, correct: dict[str, np.ndarray], seed: int = 0) -> Comparison:
    """`row` against `other`: paired when both have predictions on the same eval split, else unpaired."""
    a, b = correct.get(row.run_id), correct.get(other.run_id)
    if (
        a is not None
        and b is not None
        and a.shape == b.shape
        and row.eval_digest
        and row.eval_digest == other.eval_digest
    ):
        p = stats.paired_difference(a, b, seed=seed)
        return Comparison(p.diff, p.low, p.high, p.p_value, paired=True)
    return _unpaired(row, other)


def _unpaired(row: Row, other: Row) -> Comparison:
    """Two independent accuracies: their difference ± 1.96 standard errors."""
    p1, p2 = row.accuracy or 0.0, other.accuracy or 0.0
    n1, n2 = row.eval_samples or 0, other.eval_samples or 0
    if n1 <= 0 or n2 <= 0:
        return Comparison(p1 - p2, -1.0, 1.0, None, paired=False)  # nothing to judge by: it cannot tell
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return Comparison(p1 - p2, p1 - p2 - stats.Z95 * se, p1 - p2 + stats.Z95 * se, None, paired=False)


def against_best(rows: list[Row], correct: dict[str, np.ndarray]) -> Optional[Row]:
    """Sets `vs_best` on every finished row (the best's own is exactly 0); returns the best row."""
    ok = [r for r in rows if r.ok]
    if not ok:
        return None
    best = max(ok, key=lambda r: r.accuracy or 0.0)
    for row in ok:
        row.vs_best = Comparison.itself() if row is best else compare(row, best, correct)
    return best


def ties(rows: list[Row], best: Optional[Row]) -> list[str]:
    """How many trials the eval set cannot tell from the best (set by against_best), and on what evidence."""
    others = [r for r in rows if r.ok and r.vs_best is not None and r is not best]
    if best is None or not others:
        return []
    tied = [r for r in others if r.vs_best.tied]
    paired = all(r.vs_best.paired for r in others)
    how = "paired bootstrap over the shared eval examples" if paired else "unpaired: some runs have no predictions"
    lines = [
        "",
        f"**Tied with the best:** {len(tied)} of the {len(others)} other finished trial(s): the 95 % interval of "
        f"their accuracy against the best's covers 0 ({how}).",
    ]
    for axis in ("memory", "time"):  # a front whose members are tied differs in cost only, as far as one can tell
        front = [r for r in rows if axis in r.pareto and r is not best]
        noise = [r for r in front if r.vs_best is not None and r.vs_best.tied]
        if noise:
            lines.append(
                f"On the {axis} front, {len(noise)} of the {len(front)} member(s) besides the best are within noise of "
                f"it (trials {', '.join(str(r.trial) for r in noise)}): along them it costs no measurable accuracy."
            )
    return lines


def baselines(best: Optional[Row], correct: dict[str, np.ndarray], tfidf: dict[str, np.ndarray]) -> dict[str, Any]:
    """Majority class and TF-IDF on the same rows as the best trial, and the best against TF-IDF, paired over the
    eval examples when its predictions say what TF-IDF answered ({} for runs logged without baselines)."""
    if best is None or best.get("baseline/tfidf_accuracy") is None:
        return {}
    figures: dict[str, Any] = {
        "majority_accuracy": best.get("baseline/majority_accuracy"),
        "tfidf_accuracy": best.get("baseline/tfidf_accuracy"),
    }
    a, b = correct.get(best.run_id), tfidf.get(best.run_id)
    if a is not None and b is not None:
        vs = stats.paired_difference(a, b)
        figures["best_vs_tfidf"] = Comparison(vs.diff, vs.low, vs.high, vs.p_value, True)
    return figures


def baseline_lines(figures: dict[str, Any]) -> list[str]:
    """The answer's baseline line, and whether the best beat TF-IDF."""
    if not figures:
        return []
    line = (
        f"**Baselines on the same rows:** majority class {figures['majority_accuracy']:.4f}, TF-IDF + logistic "
        f"regression {figures['tfidf_accuracy']:.4f}."
    )
    vs = figures.get("best_vs_tfidf")
    if vs is None:
        return ["", line]
    verdict = "beats" if vs.low > 0 else ("does not beat" if vs.high < 0 else "is tied with")
    return ["", f"{line} The best {verdict} TF-IDF: {vs.points()}."]
