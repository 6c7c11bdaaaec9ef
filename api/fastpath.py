"""The lean WSGI path for the evaluation endpoints.

Django's full request cycle (middleware, URL resolution, HttpRequest) costs more than the evaluation
itself. The hot endpoints run the very same handlers as the Django views (api/hot.py: same
authentication, error format and logging) straight from WSGI; every other path goes to Django.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from urllib.parse import parse_qs

from .core import Req, Resp, max_body_bytes
from .routing import dispatch

logger = logging.getLogger("rolloutadmin.api")


def _reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def request_from_environ(environ: dict) -> Req:
    headers = {
        name[5:].replace("_", "-").lower(): value for name, value in environ.items() if name.startswith("HTTP_")
    }
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    limit = max_body_bytes()
    body = b""
    too_large = False
    raw_length = environ.get("CONTENT_LENGTH") or ""
    try:
        length = int(raw_length) if raw_length.strip() else None
    except ValueError:
        length = None
    stream = environ.get("wsgi.input")
    if length is not None and length > limit:
        too_large = True
    elif stream is not None and length:
        body = stream.read(length)
    elif stream is not None and length is None and environ.get("wsgi.input_terminated"):
        body = stream.read(limit + 1)
        too_large = len(body) > limit
        body = b"" if too_large else body
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return Req(environ.get("REQUEST_METHOD", "GET").upper(), environ.get("PATH_INFO", "/"), query, headers, body,
               too_large)


class FastPath:
    def __init__(self, django_app) -> None:  # type: ignore[no-untyped-def]
        self.django_app = django_app

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        path = environ.get("PATH_INFO", "")
        if not (path.startswith(("/ofrep/", "//ofrep/", "/api/v1/evaluate")) or path.endswith(("/evaluate",
                                                                                                  "/evaluate/"))):
            return self.django_app(environ, start_response)
        try:
            req = request_from_environ(environ)
            resp = dispatch(req)
        except Exception:
            logger.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), path)
            resp = Resp.json(500, {"errorCode": "GENERAL", "error": "internal_error",
                                   "errorDetails": "internal error", "message": "internal error"})
        if resp is None:
            return self.django_app(environ, start_response)
        body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else resp.body
        start_response(_reason(resp.status), [*resp.headers, ("Content-Length", str(len(resp.body)))])
        return [body]
