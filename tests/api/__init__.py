"""Helpers for the API tests: one request through Django's views or through the lean WSGI path that servers
use (rolloutadmin.wsgi.application); the `call` fixture (conftest.py) runs a test through both."""

from __future__ import annotations

import io
import json

from django.core.signals import request_finished, request_started
from django.db import close_old_connections


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):  # type: ignore[no-untyped-def]
        return json.loads(self.body)


def via_django(client, method: str, path: str, body: dict | None, headers: dict[str, str]) -> Answer:
    extra = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    response = client.generic(method, path, json.dumps(body) if body is not None else "",
                              content_type="application/json", **extra)
    return Answer(response.status_code, {k.lower(): v for k, v in response.items()}, response.content)


def via_wsgi(client, method: str, path: str, body: dict | None, headers: dict[str, str]) -> Answer:
    from rolloutadmin.wsgi import application

    data = json.dumps(body).encode() if body is not None else b""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data), "REMOTE_ADDR": "127.0.0.1",
               "SERVER_NAME": "testserver", "SERVER_PORT": "80", "HTTP_HOST": "testserver", "wsgi.url_scheme": "http"}
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    answer: dict = {}

    def start_response(status, response_headers, exc_info=None):  # type: ignore[no-untyped-def]
        answer.update(status=int(status.split()[0]), headers={k.lower(): v for k, v in response_headers})

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        result = application(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            result.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return Answer(answer["status"], answer["headers"], content)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
