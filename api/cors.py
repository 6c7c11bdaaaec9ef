"""CORS for the evaluation endpoints: browser apps on other origins (CORS_ALLOWED_ORIGINS) may ask.

Two places answer evaluation requests: Django's views, where django-cors-headers' CorsMiddleware does it,
and the lean WSGI path in front of Django (api/fastpath.py), which no Django middleware sees. This module
gives the lean path the same rules from the same settings: which paths (CORS_URLS_REGEX, the evaluation
endpoints only), which origins (the library's own matching, called here), and which headers. The
management API and the dashboard never answer cross-origin. tests/api/test_ofrep_conformance.py runs
every CORS check through both.

No credentials: the endpoints authenticate with an API key header, never a cookie.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from corsheaders.conf import conf
from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.http import HttpRequest, HttpResponse


def _never_called(request: HttpRequest) -> HttpResponse:
    raise AssertionError("only the library's origin matching is used here, never its middleware")


@lru_cache(maxsize=1)
def _library() -> CorsMiddleware:
    return CorsMiddleware(_never_called)


@lru_cache(maxsize=4)
def _paths(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def enabled(path: str) -> bool:
    return bool(_paths(conf.CORS_URLS_REGEX).match(path))


def configured() -> bool:
    """Whether any origin may ask at all: with none, no answer depends on Origin. Read straight from our
    settings (CORS_ALLOWED_ORIGINS, the one rolloutadmin sets): the library's `conf` looks up each setting
    under its old name too, and the missing ones cost about 10 us on every evaluation, measured."""
    return bool(getattr(settings, "CORS_ALLOWED_ORIGINS", ()))


def _allowed(origin: str) -> bool:
    try:
        url = urlsplit(origin)
    except ValueError:
        return False
    return bool(conf.CORS_ALLOW_ALL_ORIGINS) or _library().origin_found_in_white_lists(origin, url)


def headers(method: str, path: str, origin: str) -> list[tuple[str, str]]:
    """The CORS headers for a response to `method path` from `origin` (empty: not a CORS path, or no
    origin allowed at all, which is the default and costs the evaluation path nothing more)."""
    if not configured() or not enabled(path):
        return []
    found = [("Vary", "Origin")]
    if not origin or not _allowed(origin):
        return found
    found.append(("Access-Control-Allow-Origin", origin))
    if conf.CORS_EXPOSE_HEADERS:
        found.append(("Access-Control-Expose-Headers", ", ".join(conf.CORS_EXPOSE_HEADERS)))
    if method == "OPTIONS":
        found.append(("Access-Control-Allow-Headers", ", ".join(conf.CORS_ALLOW_HEADERS)))
        found.append(("Access-Control-Allow-Methods", ", ".join(conf.CORS_ALLOW_METHODS)))
        if conf.CORS_PREFLIGHT_MAX_AGE:
            found.append(("Access-Control-Max-Age", str(conf.CORS_PREFLIGHT_MAX_AGE)))
    return found
