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


@lru_cache(maxsize=1)
def _library() -> CorsMiddleware:
    return CorsMiddleware(lambda request: None)  # type: ignore[arg-type, return-value]


def enabled(path: str) -> bool:
    return bool(re.match(conf.CORS_URLS_REGEX, path))


def _allowed(origin: str) -> bool:
    try:
        url = urlsplit(origin)
    except ValueError:
        return False
    return bool(conf.CORS_ALLOW_ALL_ORIGINS) or _library().origin_found_in_white_lists(origin, url)


def headers(method: str, path: str, origin: str) -> list[tuple[str, str]]:
    """The CORS headers for a response to `method path` from `origin` (empty: not a CORS path)."""
    if not enabled(path):
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
