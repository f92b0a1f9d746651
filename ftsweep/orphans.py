"""Runs left RUNNING by a process that is gone: killed, or its store was too full to take the run's end.

Every run carries the host and process that own it (`ftsweep.host`, `ftsweep.pid`); each ftsweep start ends
this host's RUNNING runs whose process no longer exists, with the reason it noted (spool.note_end) if any.
Another host's runs and live processes' runs are never touched, nor runs whose end waits in a spool for
`python -m ftsweep.sync`.
"""

from __future__ import annotations

import logging
import os
import socket

from ftsweep import spool as spool_mod

log = logging.getLogger("ftsweep")
HOST_TAG, PID_TAG = "ftsweep.host", "ftsweep.pid"  # which process owns a RUNNING run (end_orphans)


def owner_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def end_orphans(client) -> list[str]:
    """End this host's RUNNING runs whose process is gone (it was killed, or its store was full when it tried
    to end them): FAILED, or the status it noted, with its reason. Never another host's run, nor a live one."""
    host = socket.gethostname()
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = (
            client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
            if experiments
            else []
        )
    except Exception:  # noqa: BLE001 - a store that cannot answer this fails the run's own calls next, clearly
        return []
    ended = []
    for run in runs:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if spool_mod.is_waiting(run.info.run_id):  # its true end waits in a spool for ftsweep.sync
            continue
        note = spool_mod.noted_end(run.info.run_id)
        reason = note.get("error") or f"its process ({pid} on {host}) ended without ending the run"
        try:
            client.set_tag(run.info.run_id, "error", f"orphaned: {reason}")
            client.set_terminated(run.info.run_id, status=note.get("status", "FAILED"))
        except Exception:  # noqa: BLE001 - busy or read-only store: the next start tries again
            continue
        spool_mod.forget_end(run.info.run_id)
        log.warning("ended run %s, left RUNNING by a process that is gone: %s", run.info.run_id, reason)
        ended.append(run.info.run_id)
    return ended
