"""Health endpoints for load balancers and orchestrators.

GET /healthz  liveness: the process answers. 200 {"status": "ok"}; touches neither the database nor
              anything else, so it answers while the database is down (restarting the process would
              not help then).
GET /readyz   readiness: 200 {"status": "ok", "checks": {...}} when the database answers a trivial query,
              the Celery broker accepts a connection and this process's evaluation snapshot is loaded (or
              loads now); otherwise 503 {"status": "unavailable", "checks": {name: "ok" | "error: ..."}}
              with a Retry-After header.

Both need no login and no CSRF token and never answer 500. Under gunicorn the lean WSGI path
(api/fastpath.py) answers them before Django's middleware: no host check, no SSL redirect, no session,
so a load balancer's probe by IP address gets the same answer and nothing in the middleware can touch
the database; under runserver and the test client the Django views below give the same answers.

Every readiness check runs in a thread of its own with a deadline (HEALTH_CHECK_TIMEOUT seconds,
default 2), so a hung database or broker makes the answer a 503 within the deadline instead of holding
the worker thread. While an earlier check of the same kind is still stuck, it is reported as failed
instead of being started again, so repeated probes cannot pile up threads or connections.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

logger = logging.getLogger("rolloutadmin.health")

RETRY_AFTER_SECONDS = 5
BROKER_TIMEOUT = 1.0


def _timeout() -> float:
    return float(getattr(settings, "HEALTH_CHECK_TIMEOUT", 2.0))


# --- the checks: each returns normally when fine and raises when not -----------------------------------


def check_database() -> None:
    """A trivial query on a connection of its own, closed afterwards (no connection left to a probe)."""
    conn = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            row = cursor.fetchone()
        if not row or row[0] != 1:
            raise RuntimeError(f"SELECT 1 answered {row!r}")
    finally:
        with contextlib.suppress(Exception):  # closing a broken connection may fail too
            conn.close()


def check_broker() -> None:
    """Connect to the configured Celery broker; for kombu's filesystem broker, its folders must be usable."""
    from kombu import Connection

    url = settings.CELERY_BROKER_URL
    options = dict(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {})
    if urlparse(url).scheme == "filesystem":
        # Connecting to the filesystem transport succeeds whatever the folders are: check them.
        for name in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            folder = options.get(name)
            if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                raise RuntimeError(f"broker folder {name} is missing or not writable")
    with Connection(url, transport_options=options, connect_timeout=BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0,
                               timeout=BROKER_TIMEOUT)  # type: ignore[arg-type]  # a float works; the stubs say int


def check_snapshot() -> None:
    """This process's evaluation snapshot is loaded (or loads now: ConfigUnavailable when it cannot) and
    confirmed current."""
    from api.snapshot import store

    snapshot = getattr(store, "_snapshot", None) or store.get()
    if store.stale:  # answering, but from a snapshot nobody could confirm: a restored copy, or checks failing
        raise RuntimeError(f"stale: answering from config version {snapshot.stamp}, which could not be confirmed "
                           "current")


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "broker": check_broker,
    "snapshot": check_snapshot,
}

_running: dict[str, threading.Thread] = {}
_running_lock = threading.Lock()

_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]*@")


# Addresses of internal servers: IPv4, bracketed IPv6, libpq's `server at "host"`, ports, URL hosts.
_ADDRESSES = re.compile(r'\b(?:\d{1,3}\.){3}\d{1,3}\b|\[[0-9a-fA-F:.]+\]|(?<=server at )"[^"]*"|(?<=port )\d+'
                        r'|(?<=://)[^/\s@]+(?=[:/]|$)|(?<=@)[^/\s:@]+(?::\d+)?|(?<=host )\S+')


def _describe(exc: BaseException) -> str:
    """What failed, for an anonymous caller: the error type and message without passwords, host names,
    addresses or ports (the log has the full message)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _CREDENTIALS.sub(r"\1***@", text)  # never show a password from a URL in an error message
    text = _ADDRESSES.sub("***", text)
    return f"error: {type(exc).__name__}: {text}"[:300]


def _run(name: str, check: Callable[[], None], results: dict[str, str]) -> None:
    try:
        check()
    except BaseException as exc:  # any failure is an answer, never a 500
        results[name] = _describe(exc)
        logger.warning("readiness check %s failed: %s: %s", name, type(exc).__name__,
                       _CREDENTIALS.sub(r"\1***@", " ".join(str(exc).split()))[:500])
    else:
        results[name] = "ok"
    finally:
        connections.close_all()  # this thread's own connections (the snapshot check may open one)


def run_checks(timeout: float | None = None) -> dict[str, str]:
    """Every check's result ("ok" or "error: ..."), each within the deadline."""
    budget = _timeout() if timeout is None else timeout
    deadline = time.monotonic() + budget
    results: dict[str, str] = {}
    started: dict[str, threading.Thread] = {}
    for name, check in CHECKS.items():
        with _running_lock:
            previous = _running.get(name)
            if previous is not None and previous.is_alive():
                results[name] = "error: an earlier check has not finished (hung)"
                continue
            thread = threading.Thread(target=_run, args=(name, check, results), name=f"readyz-{name}",
                                      daemon=True)
            _running[name] = thread
        thread.start()
        started[name] = thread
    for name, thread in started.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            results.setdefault(name, f"error: no answer within {budget:g} s")
    return {name: results.get(name, "error: no result") for name in CHECKS}


# --- the answers, for the Django views and the lean WSGI path ------------------------------------------

Answer = tuple[int, dict[str, Any], list[tuple[str, str]]]
PATHS = {"/healthz": "healthz", "/readyz": "readyz"}


def liveness() -> Answer:
    return 200, {"status": "ok"}, []


def readiness() -> Answer:
    try:
        checks = run_checks()
    except Exception as exc:  # e.g. no thread could be started: still an answer, not a 500
        logger.exception("readiness checks could not run")
        checks = {name: _describe(exc) for name in CHECKS}
    if all(result == "ok" for result in checks.values()):
        return 200, {"status": "ok", "checks": checks}, []
    return 503, {"status": "unavailable", "checks": checks}, [("Retry-After", str(RETRY_AFTER_SECONDS))]


def answer(name: str, method: str) -> Answer:
    """The answer to `GET /healthz` or `GET /readyz` (name "healthz" or "readyz"); 405 for other methods."""
    if method not in ("GET", "HEAD"):
        return 405, {"status": "error", "error": "method_not_allowed", "message": "use GET"}, [("Allow", "GET, HEAD")]
    status, payload, headers = liveness() if name == "healthz" else readiness()
    return status, payload, [*headers, ("Cache-Control", "no-store")]


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _view(name: str) -> Callable[[HttpRequest], HttpResponse]:
    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        status, payload, headers = answer(name, request.method or "GET")
        response = HttpResponse(encode(payload), status=status, content_type="application/json")
        for header, value in headers:
            response[header] = value
        return response

    view.__name__ = view.__qualname__ = name
    return view


healthz = _view("healthz")
readyz = _view("readyz")
