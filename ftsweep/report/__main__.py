"""`python -m ftsweep.report`: (re)build a sweep's trade-off report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ftsweep.errors import FtsweepError
from ftsweep.report import __doc__ as DOC
from ftsweep.report import make_report


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ftsweep.report", description=DOC.split("\n\n")[0])
    ap.add_argument("--sweep", help="the sweep's MLflow parent run id (default: the latest sweep)")
    ap.add_argument("--experiment", help="look for the latest sweep in this experiment only")
    ap.add_argument("--out", type=Path, help="output folder (default: the sweep's folder, multirun/<study>)")
    ap.add_argument("--storage", help="the study's Optuna storage URL, when MLflow holds it with a hidden password")
    ap.add_argument("--no-html", action="store_true", help="write report.md only")
    ap.add_argument(
        "--tolerance",
        type=float,
        help="accuracy points a cheaper configuration may lose and still be recommended (default: the sweep's "
        "hydra.sweeper.tolerance, else 0: ties only)",
    )
    args = ap.parse_args(argv)
    if args.tolerance is not None and not 0 <= args.tolerance < 100:
        ap.error(f"--tolerance is in accuracy points, 0 <= t < 100; got {args.tolerance}")
    try:
        path = make_report(
            args.sweep, args.experiment, args.out, not args.no_html, storage=args.storage, tolerance=args.tolerance
        )
    except FtsweepError as exc:  # no such sweep, a tracking store that cannot work
        print(f"ftsweep.report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
