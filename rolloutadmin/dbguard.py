"""How long, and how many at once, web requests may wait for PostgreSQL.

The evaluation endpoints answer from the in-memory snapshot and never touch the database. Everything else
does (the dashboard, ingestion, the management API, /metrics), and a hung database (a server that accepts
bytes and never answers: a frozen VM, a stuck disk, a dead proxy) would hold each such request's thread
for as long as the TCP connection lives. Two bounds keep evaluations answering:

- **Slots.** DatabaseSlotsMiddleware lets at most DB_REQUEST_SLOTS requests per process use Django at
  once. A request that finds them all taken waits up to DB_SLOT_WAIT seconds, or not at all while a slot
  holder has been running for more than DB_SLOT_STUCK seconds (the database is slow: shedding at once is
  kinder than queueing), then answers 503 with Retry-After (rolloutadmin/outage.py's answer). A person's
  change from a page (the kill switch above all) waits up to DB_SLOT_WAIT_CHANGE instead, stuck or not, so
  that the dashboard's own refreshes never shed it. The server's other threads stay free for evaluations:
  gunicorn runs 4 threads per worker, 2 slots by default.
- **A client-side deadline.** PostgreSQL's statement_timeout is enforced by the server, so it cannot end a
  wait on a server that does not answer, and libpq has no timeout for a query. A watchdog thread shuts the
  socket of any query running past its limit (DB_QUERY_DEADLINE, by default DB_STATEMENT_TIMEOUT_MS +
  DEADLINE_GRACE seconds, for requests; the snapshot's own checks use shorter limits through
  time_limit()). libpq then reads the end of the stream, the query fails with OperationalError, and the
  request answers the usual outage 503.

Both apply only in server processes: rolloutadmin/wsgi.py calls install(); Celery tasks keep the
server-side timeout alone (a task may legitimately run long, and holds no web thread).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse

from . import metrics

logger = logging.getLogger("rolloutadmin.dbguard")

DEADLINE_GRACE = 2.0  # past the server's own statement_timeout, which normally fires first
WATCH_INTERVAL = 0.1

# A block limit (time_limit) covers every query inside it; None: each query gets the request limit.
_block_limit: contextvars.ContextVar[bool] = contextvars.ContextVar("dbguard_block", default=False)


def statement_limit() -> float:
    """The longest a query of a request may wait, in seconds: DB_QUERY_DEADLINE when set, else the
    statement timeout plus DEADLINE_GRACE (behind pgbouncer the timeout is set on the role and
    DB_STATEMENT_TIMEOUT_MS is 0: then 10 s plus the grace)."""
    explicit = float(getattr(settings, "DB_QUERY_DEADLINE", 0) or 0)
    if explicit > 0:
        return explicit
    ms = int(getattr(settings, "DB_STATEMENT_TIMEOUT_MS", 10_000) or 0)
    return (ms / 1000 if ms > 0 else 10.0) + DEADLINE_GRACE


class Watchdog:
    """Cuts the connection of any watched query past its deadline."""

    def __init__(self) -> None:
        self._watched: dict[object, tuple[float, Any, float]] = {}  # token -> (deadline, connection, limit)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.cuts = 0

    def watch(self, conn: Any, limit: float) -> object:
        token = object()
        self._watched[token] = (time.monotonic() + limit, conn, limit)
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        return token

    def unwatch(self, token: object) -> None:
        self._watched.pop(token, None)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> int:
        """Cut every watched connection past its deadline; how many were cut."""
        cut = 0
        for token, (deadline, conn, limit) in list(self._watched.items()):
            if now < deadline or self._watched.pop(token, None) is None:
                continue
            if cut_connection(conn):
                cut += 1
                self.cuts += 1
                metrics.db_query_cut()
                logger.warning("a database query waited more than %.1f s without an answer: connection cut", limit)
        return cut


def cut_connection(conn: Any) -> bool:
    """Shut down the socket under a Django PostgreSQL connection; the blocked read then ends at once."""
    raw = getattr(conn, "connection", None)
    if raw is None or getattr(conn, "vendor", "") != "postgresql":
        return False
    try:
        fd = raw.fileno()
        duplicate = socket.socket(fileno=os.dup(fd))
    except Exception:  # closed meanwhile
        return False
    try:
        duplicate.shutdown(socket.SHUT_RDWR)  # acts on the socket itself, whichever descriptor names it
    except OSError:
        return False
    finally:
        duplicate.close()  # only the duplicate descriptor: libpq's stays open until Django closes it
    return True


watchdog = Watchdog()


def _per_query(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    if _block_limit.get():
        return execute(sql, params, many, context)
    token = watchdog.watch(context["connection"], statement_limit())
    try:
        return execute(sql, params, many, context)
    finally:
        watchdog.unwatch(token)


@contextlib.contextmanager
def time_limit(seconds: float, conn: Any = None) -> Iterator[None]:
    """Bound everything inside the block (queries and server-side cursor reads) on this thread's
    connection to `seconds` in all; past that the connection is cut and the query fails."""
    # This thread's own connection object, not django.db.connection: that proxy would resolve to the
    # watchdog thread's connection when the watchdog reads it.
    conn = conn if conn is not None else connections[DEFAULT_DB_ALIAS]
    if getattr(conn, "vendor", "") != "postgresql":
        yield
        return
    token = watchdog.watch(conn, seconds)
    flag = _block_limit.set(True)
    try:
        yield
    finally:
        _block_limit.reset(flag)
        watchdog.unwatch(token)


HEALTH_CHECK_LIMIT = 2.0


def _bounded_health_check(conn: Any) -> Callable[[], bool]:
    """Django's CONN_HEALTH_CHECKS runs `SELECT 1` straight on the driver, past the execute wrappers, at
    the first use of a kept connection in a request: on a hung server that would wait forever."""
    check = conn.is_usable

    def is_usable() -> bool:
        with time_limit(HEALTH_CHECK_LIMIT, conn):
            return bool(check())

    is_usable.rolloutadmin_bounded = True  # type: ignore[attr-defined]
    return is_usable


def _add_wrapper(sender: Any, connection: Any, **_kwargs: Any) -> None:
    if connection.vendor != "postgresql":
        return
    if _per_query not in connection.execute_wrappers:
        connection.execute_wrappers.append(_per_query)
    if not getattr(connection.is_usable, "rolloutadmin_bounded", False):
        connection.is_usable = _bounded_health_check(connection)


def install() -> None:
    """Put every query of this process under the watchdog (called by rolloutadmin/wsgi.py)."""
    connection_created.connect(_add_wrapper, dispatch_uid="rolloutadmin.dbguard")
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _add_wrapper(None, conn)


# --- slots ---------------------------------------------------------------------------------------------


def _exempt(request: HttpRequest) -> bool:
    """Requests that take no slot: those that never need the database (health checks, static files, the
    evaluation endpoints) and /metrics, which bounds its own reads to 2 s and must answer in an outage."""
    from api import routing

    from . import health

    path = request.path_info
    if path in health.PATHS or path == "/metrics" or path.startswith(
            "/" + str(getattr(settings, "STATIC_URL", "static/")).lstrip("/")):
        return True
    return routing.match((request.method or "GET").upper(), path) is not None


def _person_changing(request: HttpRequest) -> bool:
    """A change made from the dashboard or the admin: an unsafe method outside the machine APIs (/api/, where
    ingestion arrives in volume and a client retries on 503 by itself)."""
    return request.method not in {"GET", "HEAD", "OPTIONS", "TRACE"} and not request.path_info.startswith("/api/")


class DatabaseSlotsMiddleware:
    """At most DB_REQUEST_SLOTS database-bound requests per process at once (see the module docstring).
    Place it after DatabaseOutageMiddleware, before anything that reads the session."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.size = int(getattr(settings, "DB_REQUEST_SLOTS", 4))
        self.slots = threading.BoundedSemaphore(self.size) if self.size > 0 else None
        self.wait = float(getattr(settings, "DB_SLOT_WAIT", 0.5))
        self.stuck = float(getattr(settings, "DB_SLOT_STUCK", 1.0))
        self.change_wait = float(getattr(settings, "DB_SLOT_WAIT_CHANGE", 3.0))
        self.holders: dict[int, float] = {}  # thread id -> when it took its slot

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.slots is None or _exempt(request):
            return self.get_response(request)
        if not self._acquire(request):
            from .outage import outage_response

            metrics.db_request_shed()
            logger.warning("database slots full (%s in use, the oldest for %.1f s): %s %s answered 503", self.size,
                           self._oldest_age(), request.method, request.path)
            return outage_response(request)
        ident = threading.get_ident()
        self.holders[ident] = time.monotonic()
        try:
            return self.get_response(request)
        finally:
            self.holders.pop(ident, None)
            self.slots.release()

    def _oldest_age(self) -> float:
        started = min(self.holders.values(), default=None)
        return 0.0 if started is None else time.monotonic() - started

    def _acquire(self, request: HttpRequest) -> bool:
        assert self.slots is not None
        if self.slots.acquire(blocking=False):
            return True
        if _person_changing(request):
            # Someone changing a flag from a page (the kill switch, above all) waits for a slot rather than
            # being shed behind the dashboard's own refreshes; still bounded, so a hung database cannot
            # hold the thread.
            return self.slots.acquire(timeout=self.change_wait)
        if self._oldest_age() > self.stuck:
            return False  # the slots are held by requests stuck on the database: shed at once
        return self.slots.acquire(timeout=self.wait)
