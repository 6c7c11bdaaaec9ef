"""Chunked request bodies (Transfer-Encoding: chunked, no Content-Length) on every endpoint that reads one.

gunicorn de-chunks such a body and hands it over as wsgi.input without CONTENT_LENGTH, marking that the
stream ends with the body (wsgi.input_terminated). The in-process tests build exactly that environ and
call the production WSGI callable (rolloutadmin.wsgi.application: the lean path in front of Django);
the live tests send real chunked requests to gunicorn with http.client. Every test checks what was
written: the records ingested, the flag changed, or nothing at all on a 413, and that an over-limit
body was not read past the limit.
"""

from __future__ import annotations

import http.client
import io
import json
import sys
from urllib.parse import urlsplit

import pytest
from django.test import override_settings

from flags import services
from flags.models import Flag, Source
from monitoring.models import ExecutionRecord
from tests.wsgi import run

FLAG = "patch_mode_enabled"
RECORD = {"user_id": "user_1", "mode": "patch", "latency_ms": 12.5, "tokens_used": 100, "success": True,
          "patch_count": 2, "failed_patches": 0, "flag": FLAG, "occurred_at": "2026-01-01T00:00:00Z"}


def records(count: int, prefix: str = "r") -> dict:
    return {"records": [dict(RECORD, id=f"{prefix}-{i}", user_id=f"user_{i}") for i in range(count)]}


class CountingStream(io.BytesIO):
    """A de-chunked body as a server hands it over; counts how many bytes the application read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


class UnterminatedStream(io.RawIOBase):
    """A stream from a server that does not promise EOF after the body: reading could block forever."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("read a stream without Content-Length that the server did not terminate")


def call(method: str, path: str, body: bytes, token: str | None = None, *, terminated: bool = True,
         stream: io.IOBase | None = None, content_length: int | None = None) -> tuple[int, dict, bytes, io.IOBase]:
    """rolloutadmin.wsgi.application with a chunked body (no CONTENT_LENGTH unless given)."""
    from rolloutadmin.wsgi import application

    path, _, query = path.partition("?")
    stream = stream if stream is not None else CountingStream(body)
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver", "CONTENT_TYPE": "application/json", "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": stream, "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    if terminated:
        environ["wsgi.input_terminated"] = True
    if content_length is not None:
        environ["CONTENT_LENGTH"] = str(content_length)
        del environ["HTTP_TRANSFER_ENCODING"]
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    status, headers, content = run(application, environ)
    return int(status.split()[0]), dict(headers), content, stream


@pytest.fixture(autouse=True)
def keep_the_test_transaction(monkeypatch):
    # As in tests/api/conftest.py: the snapshot's close_old_connections() must not close the test's transaction.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)


@pytest.fixture
def enabled_flag(flag, actor):
    services.flag_set_rollout(flag=flag, percentage=100, enabled=True, actor=actor, source=Source.CLI)
    return flag


# --- through Django (management and ingestion endpoints) -------------------------------------------------


def test_chunked_executions_are_ingested(db, flag, make_key):
    body = json.dumps(records(3)).encode()
    status, _, content, stream = call("POST", "/api/v1/executions", body, make_key("collector", "ingest"))
    assert status == 200, content
    assert json.loads(content) == {"received": 3, "accepted": 3, "duplicates": 0}
    assert stream.bytes_read == len(body)
    assert sorted(ExecutionRecord.objects.values_list("client_id", flat=True)) == ["r-0", "r-1", "r-2"]


def test_chunked_executions_over_the_limit_are_413_unread_and_write_nothing(db, flag, make_key):
    token = make_key("collector", "ingest")
    body = json.dumps(records(200)).encode()
    limit = 1000
    assert len(body) > 10 * limit
    with override_settings(API_MAX_BODY_BYTES=limit):
        status, headers, content, stream = call("POST", "/api/v1/executions", body, token)
    assert status == 413, content
    assert json.loads(content)["error"] == "payload_too_large"
    assert headers["Content-Type"] == "application/json"
    assert stream.bytes_read == limit + 1  # read to one byte past the limit, no further
    assert ExecutionRecord.objects.count() == 0


def test_a_chunked_body_of_exactly_the_limit_is_accepted(db, flag, make_key):
    token = make_key("collector", "ingest")
    body = json.dumps(records(1)).encode()
    with override_settings(API_MAX_BODY_BYTES=len(body)):
        status, _, content, _ = call("POST", "/api/v1/executions", body, token)
    assert status == 200, content
    assert ExecutionRecord.objects.count() == 1


def test_an_over_limit_chunked_body_without_a_key_is_401_first_as_with_content_length(db, flag):
    body = json.dumps(records(200)).encode()
    with override_settings(API_MAX_BODY_BYTES=1000):
        chunked = call("POST", "/api/v1/executions", body)
        sized = call("POST", "/api/v1/executions", body, content_length=len(body))
    assert chunked[0] == sized[0] == 401
    assert sized[3].bytes_read == 0  # a Content-Length over the limit is still refused unread
    assert ExecutionRecord.objects.count() == 0


def test_chunked_patch_changes_the_flag(db, flag, make_key):
    body = json.dumps({"rollout_percentage": 40, "reason": "sent chunked"}).encode()
    status, _, content, _ = call("PATCH", f"/api/v1/flags/{FLAG}", body, make_key("ops", "manage"))
    assert status == 200, content
    assert Flag.objects.get(key=FLAG).rollout_percentage == 40


def test_a_server_that_does_not_terminate_the_stream_is_not_read(db, flag, make_key):
    # Without Content-Length and without wsgi.input_terminated (wsgiref, runserver) reading to EOF could
    # hang the worker: the body is taken as empty, as before, instead.
    status, _, content, _ = call("POST", "/api/v1/executions", b"", make_key("collector", "ingest"),
                                 terminated=False, stream=UnterminatedStream())
    assert status == 400
    assert "empty" in json.loads(content)["message"]
    assert ExecutionRecord.objects.count() == 0


def test_a_chunked_form_post_outside_the_api_over_djangos_limit_is_413(db):
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100):
        status, _, content, stream = call("POST", "/login/", b"username=x&password=" + b"y" * 5000)
    assert status == 413
    assert b"too large" in content
    assert stream.bytes_read == 101


# --- the lean path (api/fastpath.py + api/hot.py) ---------------------------------------------------------


def test_chunked_ofrep_evaluation_reads_the_context(db, enabled_flag, make_key):
    token = make_key("svc", "evaluate")
    body = json.dumps({"context": {"targetingKey": "user_7"}}).encode()
    status, _, content, stream = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", body, token)
    assert status == 200, content
    answer = json.loads(content)
    assert answer["value"] is True and answer["reason"] == "SPLIT"
    assert stream.bytes_read == len(body)
    # Without the context the same request is a 400: the chunked body really was read.
    status, _, content, _ = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", b"{}", token)
    assert status == 400 and json.loads(content)["errorCode"] == "TARGETING_KEY_MISSING"


def test_chunked_bulk_evaluation_over_the_limit_is_413_and_read_no_further(db, enabled_flag, make_key):
    token = make_key("svc", "evaluate")
    body = json.dumps({"user_ids": [f"user_{i}" for i in range(2000)]}).encode()
    with override_settings(API_MAX_BODY_BYTES=500):
        status, _, content, stream = call("POST", "/api/v1/evaluate", body, token)
    assert status == 413, content
    assert json.loads(content)["error"] == "payload_too_large"
    assert stream.bytes_read == 501
    status, _, content, _ = call("POST", "/api/v1/evaluate", json.dumps({"user_ids": ["a", "b"]}).encode(), token)
    assert status == 200, content
    assert [r["user_id"] for r in json.loads(content)["results"]] == ["a", "b"]


# --- real chunked requests to gunicorn ------------------------------------------------------------------


def chunked_request(server, method: str, path: str, body: bytes, token: str) -> tuple[int, bytes]:
    """A real `Transfer-Encoding: chunked` request (no Content-Length), in 1 KiB chunks."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=(body[i:i + 1024] for i in range(0, len(body), 1024)),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                     encode_chunked=True)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.django_db(transaction=True)
def test_gunicorn_accepts_chunked_bodies_with_the_same_limit(servers, make_flag, actor, make_key):
    flag = make_flag()
    services.flag_set_rollout(flag=flag, percentage=100, enabled=True, actor=actor, source=Source.CLI)
    ingest, evaluate = make_key("collector", "ingest"), make_key("svc", "evaluate")
    server = servers(API_MAX_BODY_BYTES="4000")

    body = json.dumps(records(5)).encode()
    assert 1024 < len(body) < 4000  # several chunks, under the limit
    status, content = chunked_request(server, "POST", "/api/v1/executions", body, ingest)
    assert status == 200, content
    assert json.loads(content)["accepted"] == 5
    assert ExecutionRecord.objects.count() == 5

    big = json.dumps(records(100, prefix="big")).encode()
    assert len(big) > 4000
    status, content = chunked_request(server, "POST", "/api/v1/executions", big, ingest)
    assert status == 413, content
    assert json.loads(content)["error"] == "payload_too_large"
    assert ExecutionRecord.objects.count() == 5  # nothing of the big batch

    status, content = chunked_request(server, "POST", f"/ofrep/v1/evaluate/flags/{FLAG}",
                                      json.dumps({"context": {"targetingKey": "user_9", "pad": "x" * 2000}}).encode(),
                                      evaluate)
    assert status == 200, content
    assert json.loads(content)["value"] is True
    status, content = chunked_request(server, "POST", f"/ofrep/v1/evaluate/flags/{FLAG}",
                                      json.dumps({"context": {"targetingKey": "user_9", "pad": "x" * 5000}}).encode(),
                                      evaluate)
    assert status == 413, content
