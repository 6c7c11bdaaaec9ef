"""The hot endpoints: one table that the lean WSGI path (api/fastpath.py), Django's URLconf (api/urls.py)
and the OpenAPI document (api/openapi.py) all read."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import hot
from .core import Req, Resp

Handler = Callable[..., Resp]

# Where the OFREP error format answers whatever no route names (a key with "/", an unknown path).
OFREP_PREFIX = "/ofrep/"


@dataclass(frozen=True)
class Route:
    path: str  # as OpenAPI writes it: /api/v1/flags/{key}/evaluate
    method: str
    handler: Handler
    name: str  # the URL pattern's name and the OpenAPI operation's url_name
    ofrep: bool = False  # errors in OFREP's format
    key: str = r"[^/]+"  # what {key} matches
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern("/")))

    def pattern(self, start: str) -> str:
        """The path as a regular expression; `start` is what matches its leading "/" (Django's resolver
        has already taken it off, and a doubled one is tolerated)."""
        body = re.escape(self.path.lstrip("/")).replace(r"\{key\}", f"(?P<key>{self.key})")
        return f"^{start}{body}/?$"


_ROUTES: tuple[Route, ...] = (
    # Any key, "/" and newlines included (a client's "no%2Fsuch" arrives decoded): an unknown one is OFREP's
    # FLAG_NOT_FOUND, never a page of Django's.
    Route("/ofrep/v1/evaluate/flags/{key}", "POST", hot.ofrep_single, "ofrep-evaluate-flag", ofrep=True,
          key=r"[^/][\s\S]*?"),
    Route("/ofrep/v1/evaluate/flags", "POST", hot.ofrep_bulk, "ofrep-evaluate-flags", ofrep=True),
    Route("/api/v1/flags/{key}/evaluate", "GET", hot.evaluate_one, "api-evaluate-flag"),
    Route("/api/v1/evaluate", "POST", hot.evaluate_many, "api-evaluate"),
)
ROUTES = _ROUTES
BY_NAME = {route.name: route for route in _ROUTES}


def normalise(path: str) -> str:
    # Node's OFREP provider with a trailing slash on its base URL asks for //ofrep/...: tolerate it.
    return "/" + path.lstrip("/") if path.startswith("//") else path


def is_hot(path: str) -> bool:
    """Whether the lean path answers this path (a route of the table, or anything under /ofrep/)."""
    path = normalise(path)
    return path.startswith(OFREP_PREFIX) or any(route.regex.match(path) for route in _ROUTES)


def match(method: str, path: str) -> tuple[Handler, dict[str, str]] | Resp | None:
    """The handler and its arguments; a 405 response for a known path with the wrong method; an OFREP 404
    for any other path under /ofrep/; or None (not an evaluation path)."""
    path = normalise(path)
    for route in _ROUTES:
        found = route.regex.match(path)
        if found is None:
            continue
        if method == route.method or (method == "HEAD" and route.method == "GET"):
            return route.handler, found.groupdict()
        message = f"method {method} is not allowed here; use {route.method}"
        if route.ofrep:
            resp = Resp.json(405, {"key": found.groupdict().get("key"), "errorCode": "GENERAL",
                                   "errorDetails": message})
        else:
            resp = hot.api_error(405, "method_not_allowed", message)
        resp.headers.append(("Allow", route.method))
        return resp
    if path.startswith(OFREP_PREFIX):
        return Resp.json(404, {"errorCode": "GENERAL", "errorDetails": f"no OFREP endpoint at {path[:200]}"})
    return None


def dispatch(req: Req) -> Resp | None:
    found = match(req.method, req.path)
    if found is None or isinstance(found, Resp):
        return found
    handler, kwargs = found
    return handler(req, **kwargs)
