"""One log line per request, and a request id on every log line written while serving it.

`RequestLog` is the outermost WSGI layer (rolloutadmin/wsgi.py), around the lean evaluation path and Django
alike. For each request it takes the caller's `X-Request-ID` when it is sane (1-128 of `A-Za-z0-9._:-`;
anything else, e.g. a header injection attempt, is replaced) or makes one; puts it in
`environ["rolloutadmin.request_id"]` and in a context variable that `RequestIdFilter` copies onto every
log record (the filter sits on the console handler, see LOGGING in settings); answers it in the response's
`X-Request-ID`; and once the response body is closed logs one line on `rolloutadmin.request`:

    GET /api/v1/flags 200 3.1ms 512B 127.0.0.1 rid=5f0c...

(`-` for the bytes when the response has no Content-Length). `/healthz` and `/readyz` are logged at DEBUG,
not INFO: load balancers probe them every few seconds, and a line each would bury the traffic; LOG_LEVEL
=DEBUG shows them. REQUEST_LOG=0 (settings raise the logger to WARNING) drops the lines for deployments
that take access logs from their proxy; the request id is still made, answered and logged with the rest.

The OFREP endpoint serves thousands of requests a second, so the per-request work is kept small: one
object per request that is both the start_response and the body wrapper, and the line's fields are only
computed when the logger would write it.

LOG_FORMAT=json selects `JsonFormatter`: one JSON object per line, the request fields as keys of their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from contextvars import ContextVar
from typing import Any

from rolloutadmin import health

ENVIRON_KEY = "rolloutadmin.request_id"
HEADER = "X-Request-ID"
MAX_ID_LENGTH = 128

logger = logging.getLogger("rolloutadmin.request")
request_id: ContextVar[str | None] = ContextVar("rolloutadmin_request_id", default=None)

_sane_id = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID_LENGTH}}}").fullmatch
# Probed every few seconds by load balancers: DEBUG, so that they do not flood the log at INFO.
QUIET_PATHS = frozenset(health.PATHS)


def new_request_id() -> str:
    # 128 random bits, as uuid4().hex (which spends 6 of them on the version), at a third of the cost.
    return os.urandom(16).hex()


def incoming_request_id(environ: dict) -> str:
    """The caller's X-Request-ID when it is sane, else a new one."""
    given = environ.get("HTTP_X_REQUEST_ID")
    if given is not None and _sane_id(given):
        return given
    return new_request_id()


def _printable(path: str) -> str:
    # PATH_INFO is percent-decoded (as latin-1): "%0A" would start a forged log line in the plain format.
    if path.isascii() and path.isprintable():
        return path
    with contextlib.suppress(UnicodeError):
        path = path.encode("latin-1").decode("utf-8")
    return path if path.isprintable() else path.encode("unicode_escape").decode("ascii")


class _Request:
    """One request: its start_response (adding X-Request-ID) and, per PEP 3333, the wrapper of its body whose
    close() ends the request: the line is logged and the context variable reset then, not when the
    application returns, so that the time and any log written while the body is sent count."""

    __slots__ = ("_closed", "_level", "_start_response", "_started", "_token", "environ", "headers", "result",
                 "rid", "status")

    def __init__(self, environ: dict, start_response: Any, rid: str, level: int) -> None:
        self.environ = environ
        self.rid = rid
        self._start_response = start_response
        self._level = level  # 0: no line to write
        self._started = time.perf_counter() if level else 0.0
        self._token = request_id.set(rid)
        self._closed = False
        self.status = "500 Internal Server Error"  # what the server answers if the application raises
        self.headers: list = []
        self.result: Any = ()

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Any:
        self.status = status
        self.headers = headers
        return self._start_response(status, [*headers, (HEADER, self.rid)], exc_info)

    def __iter__(self) -> Any:
        return iter(self.result)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.finish()

    def finish(self) -> None:
        try:
            if self._level:
                self.log()
        finally:
            try:
                request_id.reset(self._token)
            except ValueError:  # closed from another context than the one that started it
                request_id.set(None)

    def log(self) -> None:
        ms = (time.perf_counter() - self._started) * 1000
        environ = self.environ
        size = None
        for name, value in self.headers:
            if name.lower() == "content-length":
                size = int(value) if value.isdigit() else None
                break
        status = int(self.status[:3]) if self.status[:3].isdigit() else 0
        method = environ.get("REQUEST_METHOD", "")
        # The path only: a query string can hold user ids (e.g. ?user_id=...), which have no place in logs.
        path = _printable(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        remote = environ.get("REMOTE_ADDR") or "-"
        # makeRecord + handle, not logger.log(): the level is known to be on, and logging's search of the stack
        # for the caller's file and line (nobody's format shows them) is a good part of a line's cost.
        logger.handle(logger.makeRecord(
            logger.name, self._level, __file__, 0, "%s %s %s %.1fms %s %s",
            (method, path, status, ms, "-" if size is None else f"{size}B", remote), None, "RequestLog",
            {"request_id": self.rid, "http": {"method": method, "path": path, "status": status,
                                              "duration_ms": round(ms, 3), "bytes": size, "remote_addr": remote}}))


class RequestLog:
    """WSGI middleware: a request id and one log line per request (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        rid = incoming_request_id(environ)
        environ[ENVIRON_KEY] = rid
        level = logging.DEBUG if environ.get("PATH_INFO") in QUIET_PATHS else logging.INFO
        request = _Request(environ, start_response, rid, level if logger.isEnabledFor(level) else 0)
        try:
            result = self.app(environ, request.start_response)
        except BaseException:
            request.finish()
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(result, file_wrapper):
            # The server sends this with sendfile() only if it gets its own file wrapper back: keep it, and
            # end the request when the server closes it (as Django does with the file's own close()).
            inner_close = getattr(result, "close", None)
            request.result = _NoClose if inner_close is None else _Closer(inner_close)
            result.close = request.close
            return result
        request.result = result
        return request


class _Closer:
    __slots__ = ("close",)

    def __init__(self, close: Any) -> None:
        self.close = close


_NoClose = ()


# --- logging: the request id on every record, and the two formats ----------------------------------------------


class RequestIdFilter(logging.Filter):
    """Give every record a `request_id` attribute: the current request's id, or None outside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class PlainFormatter(logging.Formatter):
    """The format given, plus ` rid=<id>` after the message when the record has a request id. A message is
    always one line: carriage returns and line feeds in it are written as \\r and \\n, so that no logger can be
    made to forge a second line by a crafted header, key or path (Django escapes its own request paths). A
    traceback still follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")
        rid = getattr(record, "request_id", None)
        return f"{text} rid={rid}" if rid else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC, ms), level, logger, message, request_id when there is
    one, exception (the traceback) when there is one, and a request line's fields as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        fields = getattr(record, "http", None)  # not "request": django.request puts its HttpRequest there
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)

