"""`python -m ftsweep.sync RUN_DIR`: upload what a run (or a sweep, and each of its trials) could not deliver to
MLflow, from the spools it left (ftsweep/spool.py), each write once.

RUN_DIR is a run's output folder or a sweep folder (multirun/<study>). A run the store still has gets the
writes it lacks; a run the store does not have (another store, or one that lost it) is created again, with
its tags, params, metrics, artifacts and end, and the tag `ftsweep.synced_from` naming the original id. A
sweep's parent goes first, so that its trials nest under it either way. Running it twice sends nothing twice.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from ftsweep import spool as spool_mod
from ftsweep.artifacts import write_json
from ftsweep.errors import FtsweepError, first_line
from ftsweep.locks import redact
from ftsweep.report import make_report
from ftsweep.tracking import Tracker, deliver


def spools_under(folder: Path) -> list[spool_mod.Spool]:
    """Every spool in a run or sweep folder: the sweep's own (its parent run) first, then its trials'."""
    found = sorted(
        {p.parent for p in Path(folder).glob(f"**/{spool_mod.FOLDER}*/{spool_mod.OPS}")},
        key=lambda p: (len(p.relative_to(folder).parts), str(p)),
    )
    return [spool_mod.Spool(p) for p in found]


def sync_one(spool: spool_mod.Spool, tracking_uri: str | None, renamed: dict[str, str]) -> str:
    """Deliver one spool's waiting writes; returns a line saying what happened. `renamed` maps the original run
    ids of runs created again to their new ids (a trial's parent link follows its parent)."""
    run = spool.run
    tracker = Tracker(tracking_uri or run["tracking_uri"])
    run_id = run["run_id"]
    try:
        if run_id in renamed:  # another worker's spool of this sweep's parent run made it again already
            write_json(spool.folder / spool_mod.RUN, {**run, "run_id": renamed[run_id], "synced_from": run_id})
            run_id, start = renamed[run_id], 0
        else:
            tracker.client.get_run(run_id)
            start = spool.delivered
        where = f"run {run_id}"
    except MlflowException:
        tags = {k: v for k, v in run.get("tags", {}).items() if not k.startswith("mlflow.")}
        parent = run.get("tags", {}).get("mlflow.parentRunId")
        new_id = tracker.start(
            run["experiment"],
            run["run_name"],
            {**tags, "ftsweep.synced_from": run_id},
            parent_run_id=renamed.get(parent, parent) if parent else None,
        )
        renamed[run_id], run_id, start = new_id, new_id, 0
        write_json(spool.folder / spool_mod.RUN, {**run, "run_id": run_id, "synced_from": run["run_id"]})
        where = f"new run {run_id} (for {run['run_id']}, which {redact(tracker.tracking_uri)} does not have)"
    ops = spool.ops()
    for i in range(start, len(ops)):
        deliver(tracker.client, run_id, ops[i])
        spool.mark(i + 1)
    spool_mod.unregister(run["run_id"])
    return f"{spool.folder}: {len(ops) - start} write(s) delivered to {where}"


def sync(folder: Path, tracking_uri: str | None = None) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FtsweepError(f"{folder} is not a folder; give a run's output folder or a sweep folder")
    spools = spools_under(folder)
    if not spools:
        raise FtsweepError(
            f"{folder} holds no ftsweep tracking spool ({spool_mod.FOLDER}/{spool_mod.OPS}): nothing to upload"
        )
    renamed: dict[str, str] = {}
    lines = []
    for spool in spools:
        try:
            lines.append(sync_one(spool, tracking_uri, renamed))
        except FtsweepError:
            raise
        except Exception as exc:  # the store is still away, or refused a write: what was sent is marked
            raise FtsweepError(
                f"{spool.folder}: {first_line(exc)} (sent so far: {spool.delivered} of "
                f"{len(spool.ops())} writes; run it again)"
            ) from exc
    parent = spools[0].run
    if parent.get("tags", {}).get("ftsweep.role") == "sweep":  # a sweep's report needs its runs in the store
        lines.append(_report(folder, parent["run_id"], tracking_uri or parent["tracking_uri"]))
    return lines


def _report(folder: Path, parent_run_id: str, tracking_uri: str) -> str:
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # make_report reads the store the sweep was synced to
    try:
        return f"report: {make_report(parent_run_id, out=folder)}"
    except Exception as exc:  # the results are in the store now: the report can be made again at any time
        return f"report not written ({first_line(exc)}); python -m ftsweep.report --sweep {parent_run_id}"
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ftsweep.sync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run's output folder, or a sweep folder (multirun/<study>)")
    parser.add_argument("--tracking-uri", help="upload into this store instead of the one the run used")
    args = parser.parse_args(argv)
    try:
        for line in sync(args.run_dir, args.tracking_uri):
            print(line)
    except FtsweepError as exc:
        print(f"ftsweep.sync: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
