"""gunicorn settings for serving rolloutadmin: `gunicorn -c rolloutadmin/gunicorn.conf.py`.

gthread workers (one per core, a few threads each) keep connections alive: services call us thousands
of times a second. reuse_port gives every worker its own listening socket, so the kernel spreads new
connections over the workers. Without it, measured here (bench/bench_api.py, 16 keep-alive connections
from wrk), one process often accepted nearly every connection while the other idled, capping the
server at one core (about 2,500 requests/s instead of 7,000-8,000). GUNICORN_* variables override.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

# Prometheus counters from every worker (and from the Celery processes given the same directory) are added
# up by GET /metrics (rolloutadmin/metrics.py). prometheus-client reads the variable when it is first
# imported, so it is set here, before any worker starts.
_var_dir = Path(os.environ.get("ROLLOUTADMIN_VAR_DIR", Path(__file__).resolve().parent.parent / "var"))
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_var_dir / "prometheus"))

wsgi_app = "rolloutadmin.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
# 4 threads, of which at most DB_REQUEST_SLOTS (2) may wait on the database at once: the other two always
# answer evaluations from the snapshot, even while PostgreSQL hangs (rolloutadmin/dbguard.py). More threads
# cost evaluation throughput (the GIL): 8 threads answered about 7% fewer requests a second here.
threads = int(os.environ.get("GUNICORN_THREADS", 4))
reuse_port = True
keepalive = 30
# Large allow-list imports through the admin can take seconds; nothing else comes close.
timeout = 60
# Off unless asked for: the application logs one line per request itself, with its request id
# (rolloutadmin/requestlog.py; REQUEST_LOG=0 turns those off), and both would double every line.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


def post_worker_init(worker: Worker) -> None:
    """Load the config snapshot as each worker starts, so that a worker can answer from it even if the
    database becomes unreachable before its first request. If the database is down now, the first request
    tries again."""
    from api.snapshot import store

    try:
        snapshot = store.get()
    except Exception as exc:  # a cold start must not kill the worker
        worker.log.warning("config snapshot not loaded at start: %s", exc)
    else:
        worker.log.info("config snapshot loaded at start: config version %s, %s flag(s)", snapshot.stamp,
                        len(snapshot.flags))


def on_starting(server: Arbiter) -> None:
    """Clear the metric files of processes that are gone (an earlier server's workers), keeping those of
    live processes (a Celery worker sharing the directory keeps its counts)."""
    from rolloutadmin.metric_files import remove_gone

    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    server.log.info("prometheus multiprocess directory %s: %s file(s) of gone processes removed", directory,
                    remove_gone(directory))


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A worker is gone: its live gauges (snapshot age, staleness) must no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
