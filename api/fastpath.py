"""The lean WSGI path for the evaluation endpoints.

Django's full request cycle (middleware, URL resolution, HttpRequest) costs more than the evaluation
itself. The hot endpoints run the very same handlers as the Django views (api/hot.py: same
authentication, error format and logging) straight from WSGI; every other path goes to Django.
"""

from __future__ import annotations

import logging
import tempfile
from http import HTTPStatus
from time import perf_counter
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings

from rolloutadmin import health, metrics, outage

from . import cors
from .core import Req, Resp, body_from_environ, max_body_bytes
from .routing import dispatch, is_hot

logger = logging.getLogger("rolloutadmin.api")


def _reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def request_from_environ(environ: dict[str, Any]) -> Req:
    headers = {
        name[5:].replace("_", "-").lower(): value for name, value in environ.items() if name.startswith("HTTP_")
    }
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    body, too_large = body_from_environ(environ, max_body_bytes())
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return Req(environ.get("REQUEST_METHOD", "GET").upper(), environ.get("PATH_INFO", "/"), query, headers, body,
               too_large, environ.get("REMOTE_ADDR") or "")


SPOOL_IN_MEMORY = 1024 * 1024  # a buffered chunked body larger than this waits in a temporary file


def _django_body_limit(path: str) -> int:
    """The most body bytes a request to Django may send: the API's limit under /api/ and /ofrep/, else
    Django's own limit for form data (DATA_UPLOAD_MAX_MEMORY_SIZE)."""
    if path.lstrip("/").startswith(("api/", "ofrep/")):
        return max_body_bytes()
    return int(getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None) or 32 * 1024 * 1024)


def _too_large(environ, start_response):  # type: ignore[no-untyped-def]
    body = b"request body too large"
    start_response(_reason(413), [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]


def buffer_chunked_body(environ: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Give Django a chunked body (no Content-Length) it can read; None, or a WSGI app answering 413.

    Django reads exactly CONTENT_LENGTH bytes and takes a missing one as an empty body. A server that
    de-chunks and marks the stream's end (gunicorn sets `wsgi.input_terminated`) lets us read the body to
    its end first, never more than the path's limit + 1 bytes, and hand Django the buffered bytes with
    their length. Over the limit, API paths get CONTENT_LENGTH = limit + 1 and only those bytes, so the
    view refuses it with its JSON 413 after authentication, exactly as for a Content-Length over the
    limit; other paths get a plain 413 here.
    """
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower() or not environ.get("wsgi.input_terminated"):
        return None
    stream = environ.get("wsgi.input")
    if stream is None:
        return None
    path = environ.get("PATH_INFO", "")
    limit = _django_body_limit(path)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - Django reads it later
    total = 0
    while total <= limit:
        data = stream.read(min(64 * 1024, limit + 1 - total))
        if not data:
            break
        spool.write(data)
        total += len(data)
    if total > limit and not path.lstrip("/").startswith(("api/", "ofrep/")):
        spool.close()
        return _too_large
    spool.seek(0)
    environ["wsgi.input"] = spool
    environ["CONTENT_LENGTH"] = str(total)
    return None


class FastPath:
    def __init__(self, django_app) -> None:  # type: ignore[no-untyped-def]
        self.django_app = django_app

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        path = environ.get("PATH_INFO", "")
        if path in health.PATHS:
            return self.health(environ, start_response, health.PATHS[path])
        if not is_hot(path):
            if not environ.get("CONTENT_LENGTH") and environ.get("HTTP_TRANSFER_ENCODING"):
                refused = buffer_chunked_body(environ)
                if refused is not None:
                    return refused(environ, start_response)
            return self.django_app(environ, start_response)
        started = perf_counter()
        origin = environ.get("HTTP_ORIGIN", "")
        if origin or environ.get("REQUEST_METHOD") == "OPTIONS":
            cross = self.cross_origin(environ, start_response, path, origin)
            if cross is not None:
                return cross
        try:
            req = request_from_environ(environ)
            resp = dispatch(req)
        except Exception as exc:
            if outage.is_database_outage(exc):  # JSON 503 + Retry-After, as under Django (rolloutadmin/outage.py)
                logger.warning("database unavailable: %s %s answered 503 (%s)", environ.get("REQUEST_METHOD"), path,
                               type(exc).__name__)
                resp = outage.api_outage_resp(path)
            else:
                logger.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), path)
                resp = Resp.json(500, {"errorCode": "GENERAL", "error": "internal_error",
                                       "errorDetails": "internal error", "message": "internal error"})
        if resp is None:
            return self.django_app(environ, start_response)
        metrics.evaluation_seconds("ofrep" if "ofrep/" in path else "json", perf_counter() - started)
        resp.headers.extend(cors.headers(environ.get("REQUEST_METHOD", "GET"), path, origin))
        body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else resp.body
        start_response(_reason(resp.status), [*resp.headers, ("Content-Length", str(len(resp.body)))])
        return [body]

    @staticmethod
    def cross_origin(environ, start_response, path: str, origin: str):  # type: ignore[no-untyped-def]
        """A CORS preflight for an evaluation path, answered as django-cors-headers answers it (200, empty,
        the CORS headers when the origin is allowed); None for anything else."""
        method = environ.get("REQUEST_METHOD", "GET")
        if method != "OPTIONS" or "HTTP_ACCESS_CONTROL_REQUEST_METHOD" not in environ or not cors.enabled(path):
            return None
        start_response(_reason(200), [*cors.headers(method, path, origin), ("Content-Length", "0")])
        return [b""]

    @staticmethod
    def health(environ, start_response, name: str):  # type: ignore[no-untyped-def]
        """/healthz and /readyz before Django's middleware (see rolloutadmin/health.py); never a 500."""
        try:
            status, payload, headers = health.answer(name, environ.get("REQUEST_METHOD", "GET").upper())
        except Exception:
            logger.exception("health check %s failed", name)
            status, payload, headers = 503, {"status": "unavailable", "error": "internal_error"}, [
                ("Retry-After", str(health.RETRY_AFTER_SECONDS))]
        body = health.encode(payload)
        start_response(_reason(status), [("Content-Type", "application/json"), *headers,
                                         ("Content-Length", str(len(body)))])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]
