"""Which hot endpoint a method and path name, for both the lean WSGI path and the Django views."""

from __future__ import annotations

import re
from collections.abc import Callable

from . import hot
from .core import Req, Resp

Handler = Callable[..., Resp]

_ROUTES: list[tuple[re.Pattern[str], str, Handler, bool]] = [
    # pattern, method, handler, OFREP error format
    # Any key, "/" included (a client's "no%2Fsuch" arrives decoded): an unknown one is OFREP's
    # FLAG_NOT_FOUND, never a page of Django's.
    (re.compile(r"^/ofrep/v1/evaluate/flags/(?P<key>[^/].*?)/?$", re.S), "POST", hot.ofrep_single, True),
    (re.compile(r"^/ofrep/v1/evaluate/flags/?$"), "POST", hot.ofrep_bulk, True),
    (re.compile(r"^/api/v1/flags/(?P<key>[^/]+)/evaluate/?$"), "GET", hot.evaluate_one, False),
    (re.compile(r"^/api/v1/evaluate/?$"), "POST", hot.evaluate_many, False),
]


def normalise(path: str) -> str:
    # Node's OFREP provider with a trailing slash on its base URL asks for //ofrep/...: tolerate it.
    return "/" + path.lstrip("/") if path.startswith("//") else path


def match(method: str, path: str) -> tuple[Handler, dict[str, str]] | Resp | None:
    """The handler and its arguments; a 405 response for a known path with the wrong method; an OFREP 404
    for any other path under /ofrep/; or None (not an evaluation path)."""
    path = normalise(path)
    for pattern, allowed, handler, ofrep in _ROUTES:
        found = pattern.match(path)
        if found is None:
            continue
        if method == allowed or (method == "HEAD" and allowed == "GET"):
            return handler, found.groupdict()
        message = f"method {method} is not allowed here; use {allowed}"
        if ofrep:
            resp = Resp.json(405, {"key": found.groupdict().get("key"), "errorCode": "GENERAL",
                                   "errorDetails": message})
        else:
            resp = hot.api_error(405, "method_not_allowed", message)
        resp.headers.append(("Allow", allowed))
        return resp
    if path.startswith("/ofrep/"):
        return Resp.json(404, {"errorCode": "GENERAL", "errorDetails": f"no OFREP endpoint at {path[:200]}"})
    return None


def dispatch(req: Req) -> Resp | None:
    found = match(req.method, req.path)
    if found is None or isinstance(found, Resp):
        return found
    handler, kwargs = found
    return handler(req, **kwargs)
