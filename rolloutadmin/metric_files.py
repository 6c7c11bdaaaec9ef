"""The files of prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR), by the process that wrote
them: `counter_<pid>.db`, `histogram_<pid>.db`, `gauge_<mode>_<pid>.db`. Imports nothing at module level,
so that gunicorn's master can use it before any worker exists (rolloutadmin/gunicorn.conf.py)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def files_by_pid(directory: str | Path, pattern: str = "*.db") -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for path in Path(directory).glob(pattern):
        try:
            pid = int(path.stem.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        found.setdefault(pid, []).append(path)
    return found


def remove_gone(directory: str | Path) -> int:
    """Delete every file of a process that no longer exists; how many were deleted. Files of live processes
    (a Celery worker sharing the directory) stay."""
    removed = 0
    for pid, paths in files_by_pid(directory).items():
        if not pid_alive(pid):
            for path in paths:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def forget_gone_live_gauges(directory: str | Path) -> None:
    """Drop the live gauges (snapshot age, staleness) of processes that are gone, as gunicorn's child_exit
    does; for servers without such a hook (granian) and crashed processes."""
    from prometheus_client.multiprocess import mark_process_dead

    for pid in files_by_pid(directory, "gauge_live*_*.db"):
        if not pid_alive(pid):
            mark_process_dead(pid, str(directory))
