"""Helpers for the API tests: one request through Django's views or through the lean WSGI path that servers
use (rolloutadmin.wsgi.application); the `call` fixture (conftest.py) runs a test through both."""

from __future__ import annotations

import io
import json

from tests.wsgi import run


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
    path, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data), "REMOTE_ADDR": "127.0.0.1",
               "SERVER_NAME": "testserver", "SERVER_PORT": "80", "HTTP_HOST": "testserver", "wsgi.url_scheme": "http"}
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    status, response_headers, content = run(application, environ)
    return Answer(int(status.split()[0]), {k.lower(): v for k, v in response_headers}, content)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
