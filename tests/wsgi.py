"""Calling a WSGI application in the test process the way a server does: start it, read the whole body,
close it (the request log writes its line then). Django's request signals would close the database
connection that holds the test's transaction, so they are held off meanwhile, as Django's test client does."""

from __future__ import annotations

from typing import Any

from django.core.signals import request_finished, request_started
from django.db import close_old_connections


def run(app: Any, environ: dict) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status line, headers, body) of one request."""
    answer: dict[str, Any] = {}

    def start_response(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
        answer.update(status=status, headers=headers)

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        result = app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return answer["status"], answer["headers"], body
