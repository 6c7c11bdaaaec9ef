"""gunicorn settings for serving rolloutadmin: `gunicorn -c rolloutadmin/gunicorn.conf.py`.

gthread workers (one per core, a few threads each) keep connections alive: services call us thousands
of times a second. reuse_port gives every worker its own listening socket, so the kernel spreads new
connections over the workers. Without it, measured here (bench/bench_api.py, 16 keep-alive connections
from wrk), one process often accepted nearly every connection while the other idled, capping the
server at one core (about 2,500 requests/s instead of 7,000-8,000). GUNICORN_* variables override.
"""

import multiprocessing
import os

wsgi_app = "rolloutadmin.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
reuse_port = True
keepalive = 30
# Large allow-list imports through the admin can take seconds; nothing else comes close.
timeout = 60
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


def post_worker_init(worker):  # type: ignore[no-untyped-def]
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
