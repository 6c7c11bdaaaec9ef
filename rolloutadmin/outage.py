"""Clear answers while the database is unreachable: a 503 with an integer Retry-After, never a 500.

Under /api/ and /ofrep/ the answer is JSON in the API's usual error format (`error` and `message`; OFREP's
`errorCode` and `errorDetails`); anywhere else (the dashboard, /login/, the admin) a plain "database
unavailable, retrying" page that reloads itself through <meta http-equiv="refresh"> (no script: the
dashboard sends a strict Content-Security-Policy). Nothing here holds state about the outage: every request
tries the database afresh, so the first request after the database returns succeeds, without a restart.

DatabaseOutageMiddleware does it in two places:

- process_exception: a view (or the template it returns) that fails on the database. Django calls it
  whatever the middleware's position, and the 503 then passes through every other middleware's response
  handling (security headers, CSP, cookies) like any answer.
- __call__: a failure in a middleware inside this one (the session or authentication middleware, say)
  never reaches a view; Django turns it into a 500 on the spot. A receiver of got_request_exception notes
  the cause on the request, and this middleware, placed before SessionMiddleware, swaps that 500 for the
  503. It also adds the Retry-After header to any other 503 under /api/ and /ofrep/ that has none.

The evaluation endpoints never get here for a database outage: they answer from the in-memory snapshot
(marked stale). Each outage is logged once per request at WARNING, with no traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.html import escape

from .csp import STRICT_CSP

logger = logging.getLogger("rolloutadmin.outage")

RETRY_AFTER_SECONDS = 5
API_PREFIXES = ("/api/", "/ofrep/", "//ofrep/")

# SQLite reports some programming errors as OperationalError too: those are bugs, not an outage.
_NOT_AN_OUTAGE = ("no such table", "no such column", "has no column named", "syntax error", "no such function")


def _outage_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OperationalError, InterfaceError]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - SQLite-only installs
        pass
    else:
        types += [psycopg.OperationalError, psycopg.InterfaceError]
    return tuple(types)


_OUTAGE_TYPES = _outage_types()


def is_database_outage(exc: BaseException | None) -> bool:
    """Whether an exception (or what it was raised from) says the database cannot be reached or used now:
    refused or dropped connections, timeouts (connect_timeout, statement_timeout), a locked SQLite file, a
    process with no configuration snapshot because the database never answered."""
    from api.snapshot import ConfigUnavailable

    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ConfigUnavailable):
            return True
        if isinstance(exc, _OUTAGE_TYPES):
            return not any(text in str(exc).lower() for text in _NOT_AN_OUTAGE)
        exc = exc.__cause__
        seen += 1
    return False


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200] or "no message"
    return f"{type(exc).__name__}: {text}"


def _ofrep_key(path: str) -> str | None:
    parts = path.lstrip("/").split("/")
    # ofrep/v1/evaluate/flags/<key>
    if len(parts) >= 5 and parts[:4] == ["ofrep", "v1", "evaluate", "flags"] and parts[4]:
        return parts[4]
    return None


def api_payload(path: str) -> dict[str, Any]:
    """The JSON error body for a path under /api/ or /ofrep/, in that API's format."""
    message = f"the database is unreachable; retry in {RETRY_AFTER_SECONDS} seconds"
    if path.lstrip("/").startswith("ofrep/"):
        body: dict[str, Any] = {"errorCode": "GENERAL", "errorDetails": message}
        key = _ofrep_key(path)
        return {"key": key, **body} if key is not None else body
    return {"error": "unavailable", "message": message}


def api_outage_resp(path: str):  # type: ignore[no-untyped-def]
    """The same 503 as an api.core.Resp, for the lean WSGI path (api/fastpath.py), which has no middleware."""
    from api.core import Resp

    return Resp.json(503, api_payload(path), [("Retry-After", str(RETRY_AFTER_SECONDS)), ("Cache-Control", "no-store")])


_FALLBACK_PAGE = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="refresh" content="{seconds}"><title>Database unavailable</title></head>'
    "<body><h1>Database unavailable, retrying</h1><p>The database cannot be reached right now. This page "
    "tries again every {seconds} seconds.</p></body></html>"
)


def _page() -> str:
    try:
        return render_to_string("outage.html", {"retry_after": RETRY_AFTER_SECONDS})
    except Exception:  # a broken template must not turn the answer into a 500
        logger.exception("the outage page could not be rendered; sending the plain one")
        return _FALLBACK_PAGE.format(seconds=escape(RETRY_AFTER_SECONDS))


def _strict_csp() -> str:
    from django.utils.csp import build_policy

    return build_policy(STRICT_CSP)


def outage_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: JSON under /api/ and /ofrep/, the retrying page elsewhere."""
    path = request.path_info or request.path
    if is_api_path(path):
        resp = api_outage_resp(path)
        response = HttpResponse(resp.body, status=503, content_type="application/json")
    else:
        response = HttpResponse(_page(), status=503, content_type="text/html; charset=utf-8")
        response["Content-Security-Policy"] = _strict_csp()
        response["X-Frame-Options"] = "DENY"
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    response._database_outage = True  # type: ignore[attr-defined]
    # Logged once below (outage_logged); Django's request logger would add an ERROR line per answer.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def _log_once(request: HttpRequest, exc: BaseException) -> None:
    if getattr(request, "_database_outage_logged", False):
        return
    request._database_outage_logged = True  # type: ignore[attr-defined]
    logger.warning("database unavailable: %s %s answered 503 (%s)", request.method, request.path, _describe(exc))


def _remember_outage(sender: Any, request: HttpRequest | None = None, **_kwargs: Any) -> None:
    """got_request_exception: note a database outage on the request so the middleware can answer 503."""
    exc = sys.exc_info()[1]
    if request is not None and is_database_outage(exc):
        request._database_outage = exc  # type: ignore[attr-defined]


class _DropOutageTracebacks(logging.Filter):
    """Django logs the 500 it makes of an exception in a middleware with its traceback; for an outage that
    500 becomes our 503, logged once at WARNING, so the traceback line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and is_database_outage(record.exc_info[1]))


_FILTER = _DropOutageTracebacks()


class DatabaseOutageMiddleware:
    """Put it before SessionMiddleware (after SecurityMiddleware and WhiteNoise): see the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        got_request_exception.connect(_remember_outage, dispatch_uid="rolloutadmin.outage")
        request_logger = logging.getLogger("django.request")
        if _FILTER not in request_logger.filters:
            request_logger.addFilter(_FILTER)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        exc = getattr(request, "_database_outage", None)
        if exc is not None and response.status_code >= 500 and not getattr(response, "_database_outage", False):
            _log_once(request, exc)
            response = outage_response(request)
        elif response.status_code == 503 and is_api_path(request.path_info) and not response.has_header(
                "Retry-After"):
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_outage(exception):
            return None
        _log_once(request, exception)
        return outage_response(request)
