"""One log line per request with a request id, and LOG_FORMAT=json (rolloutadmin/requestlog.py).

In-process tests call the real WSGI application (`rolloutadmin.wsgi.application`: RequestLog around the lean
path and Django) as a server would, closing the body; one test reads the output of a real gunicorn.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections

from rolloutadmin import requestlog
from tests.wsgi import run

pytestmark = pytest.mark.usefixtures("keep_the_test_connection")

FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"
GENERATED = re.compile(r"[0-9a-f]{32}")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def production_application():
    # Importing rolloutadmin.wsgi sets Django up again, and with it logging (dictConfig replaces the root
    # handlers): done before a test's log capture starts, not in its middle.
    from rolloutadmin import wsgi

    return wsgi.application


def _wsgi(method: str, path: str, body: bytes = b"", token: str = "", query: str = "",
          headers: dict[str, str] | None = None, app=None) -> tuple[str, dict[str, str], bytes]:
    """One request through the WSGI application, as a server makes it: iterate the body, then close it."""
    if app is None:
        from rolloutadmin.wsgi import application as app
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_LENGTH": str(len(body)),
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": "127.0.0.1",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http", "HTTP_HOST": "127.0.0.1"}
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    status, headers, content = run(app, environ)
    names = [name.lower() for name, _ in headers]
    assert len(names) == len(set(names)), headers  # e.g. no second X-Request-ID
    return status, dict(headers), content


def _evaluate_body(user: str = "u1") -> bytes:
    return json.dumps({"context": {"targetingKey": user}}).encode()


def request_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rolloutadmin.request"]


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO)
    return caplog


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """The console handler configured by settings.LOGGING, writing into a buffer for the test."""
    handler = next(h for h in logging.getLogger().handlers if h.name == "console")
    buffer = io.StringIO()
    # Not setStream(): it flushes the old stream, which may be a closed capture of an earlier test (Celery's
    # Django fixup sets Django up again inside a test, and logging with it, bound to that test's stderr).
    with handler.lock:
        previous, handler.stream = handler.stream, buffer
    try:
        yield buffer
    finally:
        with handler.lock:
            handler.stream = previous


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """A handler set up as LOG_FORMAT=json sets up the console one: the JSON formatter and the request id filter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(requestlog.JsonFormatter())
    handler.addFilter(requestlog.RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# --- the request id ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_sane_request_id_is_echoed_and_on_the_one_line_of_the_request(keys, lines):
    given = "edge-7f3a.b:42"
    status, headers, _ = _wsgi("POST", OFREP, _evaluate_body(), keys["evaluate"], headers={"X-Request-ID": given})
    assert status.startswith("200") and headers["X-Request-ID"] == given
    [line] = request_lines(lines)
    assert line.request_id == given and line.http["path"] == OFREP


@pytest.mark.django_db
@pytest.mark.parametrize("given", [
    "x" * 129,  # too long
    "has space",
    "semi;colon",
    "ok\r\nSet-Cookie: sessionid=stolen",  # header injection
    "",
    "caf\xe9",
])
def test_an_insane_request_id_is_replaced_by_a_fresh_one(keys, lines, given):
    status, headers, _ = _wsgi("POST", OFREP, _evaluate_body(), keys["evaluate"], headers={"X-Request-ID": given})
    assert status.startswith("200")
    assert headers["X-Request-ID"] != given and GENERATED.fullmatch(headers["X-Request-ID"])
    assert "Set-Cookie" not in headers
    [line] = request_lines(lines)
    assert line.request_id == headers["X-Request-ID"]
    if given:
        assert given not in lines.text


@pytest.mark.django_db
def test_the_longest_sane_request_id_is_kept():
    given = "A1._:-" * 21 + "xy"  # 128 characters
    assert len(given) == 128
    assert _wsgi("GET", "/healthz", headers={"X-Request-ID": given})[1]["X-Request-ID"] == given


@pytest.mark.django_db
def test_without_a_request_id_every_request_gets_a_fresh_one_in_the_environ_too(keys):
    seen = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen.append(environ[requestlog.ENVIRON_KEY])
        start_response("204 No Content", [])
        return []

    ids = [_wsgi("GET", "/anything", app=requestlog.RequestLog(app))[1]["X-Request-ID"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(GENERATED.fullmatch(rid) for rid in ids)
    assert seen == ids


# --- one line per request ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_one_line_for_a_lean_evaluation_and_one_for_each_django_request(keys, lines, client):
    assert client.get("/login/").status_code == 200  # warm up anything Django does on a first request
    lines.clear()
    answers = [
        _wsgi("POST", OFREP, _evaluate_body(), keys["evaluate"]),
        _wsgi("GET", "/api/v1/flags", token=keys["manage"]),
        _wsgi("GET", "/login/"),
    ]
    records = request_lines(lines)
    assert [(r.http["method"], r.http["path"], r.http["status"]) for r in records] == [
        ("POST", OFREP, 200), ("GET", "/api/v1/flags", 200), ("GET", "/login/", 200)]
    for record, (_, headers, content) in zip(records, answers, strict=True):
        assert record.levelno == logging.INFO
        assert record.request_id == headers["X-Request-ID"]
        assert record.http["remote_addr"] == "127.0.0.1" and record.http["duration_ms"] >= 0
        if "Content-Length" in headers:
            assert record.http["bytes"] == int(headers["Content-Length"]) == len(content)
        else:
            assert record.http["bytes"] is None and " - 127.0.0.1" in record.getMessage()
    assert re.fullmatch(rf"POST {OFREP} 200 [0-9]+\.[0-9]ms {len(answers[0][2])}B 127\.0\.0\.1",
                        records[0].getMessage())


@pytest.mark.django_db
def test_the_line_has_the_status_and_path_of_a_401_and_a_404(keys, lines):
    assert _wsgi("GET", "/api/v1/flags")[0].startswith("401")
    assert _wsgi("POST", "/ofrep/v1/evaluate/flags/no_such_flag", _evaluate_body(), keys["evaluate"])[0].startswith(
        "404")
    assert _wsgi("GET", "/no/such/page/")[0].startswith("404")
    assert [(r.http["path"], r.http["status"]) for r in request_lines(lines)] == [
        ("/api/v1/flags", 401), ("/ofrep/v1/evaluate/flags/no_such_flag", 404), ("/no/such/page/", 404)]
    assert [r.getMessage().split()[:3] for r in request_lines(lines)] == [
        ["GET", "/api/v1/flags", "401"], ["POST", "/ofrep/v1/evaluate/flags/no_such_flag", "404"],
        ["GET", "/no/such/page/", "404"]]


@pytest.mark.django_db
def test_the_query_string_never_reaches_the_log(keys, lines, json_lines):
    status, _, content = _wsgi("GET", f"/api/v1/flags/{FLAG}/evaluate", token=keys["evaluate"],
                               query="user_id=secret-user-77")
    assert status.startswith("200") and json.loads(content)["user_id"] == "secret-user-77"  # it was read
    assert _wsgi("GET", "/api/v1/flags", token=keys["manage"], query="user=secret-user-77")[0].startswith("200")
    records = request_lines(lines)
    assert [r.http["path"] for r in records] == [f"/api/v1/flags/{FLAG}/evaluate", "/api/v1/flags"]
    assert "secret-user-77" not in lines.text and "secret-user-77" not in json_lines.getvalue()
    assert "secret-user-77" not in repr([r.__dict__ for r in records])


@pytest.mark.django_db
def test_a_newline_in_the_path_cannot_forge_a_second_line(console):
    # (Django's own "Not Found: <path>" warning would write it raw, so a plain application serves the path.)
    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [])
        return []

    _wsgi("GET", "/x\n2026-01-01 00:00:00,000 INFO rolloutadmin.request GET /admin/ 200",
          app=requestlog.RequestLog(app))
    lines = console.getvalue().splitlines()
    assert len(lines) == 1 and " GET /x\\n2026-01-01 " in lines[0]


def test_in_the_plain_format_no_message_spans_two_lines_but_a_traceback_does(console):
    # Whatever a logger is given (a header, a key, a path from a caller), one record is one line.
    log = logging.getLogger("rolloutadmin.api")
    log.warning("refused key %s", "abc\r\n2026-01-01 00:00:00,000 INFO rolloutadmin.request GET /admin/ 200")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = console.getvalue().splitlines()
    assert "refused key abc\\r\\n2026-01-01" in lines[0]
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)
    assert lines[1].endswith("failed") and lines[2] == "Traceback (most recent call last):"


@pytest.mark.django_db
def test_health_probes_are_logged_at_debug_not_info(caplog):
    caplog.set_level(logging.INFO)
    assert _wsgi("GET", "/healthz")[0].startswith("200")
    assert request_lines(caplog) == []
    caplog.set_level(logging.DEBUG, logger="rolloutadmin.request")
    _wsgi("GET", "/healthz")
    [line] = request_lines(caplog)
    assert line.levelno == logging.DEBUG and line.http["path"] == "/healthz"


@pytest.fixture
def request_lines_off() -> Iterator[None]:
    previous = requestlog.logger.level
    requestlog.logger.setLevel(logging.WARNING)  # what REQUEST_LOG=0 sets (tested below)
    try:
        yield
    finally:
        requestlog.logger.setLevel(previous)


@pytest.mark.django_db
def test_with_the_lines_off_the_id_is_still_made_answered_and_on_other_lines(caplog, request_lines_off):
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(requestlog.RequestIdFilter())
    inner_rids = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        logging.getLogger("rolloutadmin.api").info("inside")
        inner_rids.append(environ[requestlog.ENVIRON_KEY])
        start_response("200 OK", [])
        return [b"ok"]

    _, headers, _ = _wsgi("GET", "/x", app=requestlog.RequestLog(app), headers={"X-Request-ID": "given-1"})
    assert headers["X-Request-ID"] == "given-1" == inner_rids[0]
    assert request_lines(caplog) == []
    assert [(r.name, r.request_id) for r in caplog.records] == [("rolloutadmin.api", "given-1")]


def test_an_application_that_raises_is_logged_as_a_500_and_leaves_no_request_id_behind(caplog):
    caplog.set_level(logging.INFO)

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        _wsgi("GET", "/boom", app=requestlog.RequestLog(app), headers={"X-Request-ID": "r-500"})
    [line] = request_lines(caplog)
    assert (line.http["status"], line.request_id) == (500, "r-500")
    assert requestlog.request_id.get() is None


def test_the_line_is_written_when_the_body_is_closed_and_the_body_is_closed_once():
    events = []

    class Body:
        def __iter__(self):  # type: ignore[no-untyped-def]
            events.append(("iter", requestlog.request_id.get()))
            yield b"a"
            yield b"b"

        def close(self) -> None:
            events.append(("close", requestlog.request_id.get()))

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Length", "2")])
        return Body()

    handler = logging.Handler()
    handler.emit = lambda record: events.append(("line", record.http["bytes"]))  # type: ignore[method-assign]
    requestlog.logger.addHandler(handler)
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/stream", "REMOTE_ADDR": "127.0.0.1"}
        result = requestlog.RequestLog(app)(environ, lambda status, headers, exc_info=None: None)
        rid = environ[requestlog.ENVIRON_KEY]
        assert b"".join(result) == b"ab" and events == [("iter", rid)]  # no line before the close
        result.close()
        result.close()
    finally:
        requestlog.logger.removeHandler(handler)
    assert events == [("iter", rid), ("close", rid), ("line", 2)]
    assert requestlog.request_id.get() is None


def test_the_servers_file_wrapper_is_handed_back_so_sendfile_still_works():
    class FileWrapper:
        def __init__(self, filelike) -> None:  # type: ignore[no-untyped-def]
            self.filelike = filelike
            self.close = filelike.close

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter([self.filelike.read()])

    closed = []
    file = io.BytesIO(b"static")
    file.close = lambda: closed.append(True)  # type: ignore[method-assign]
    wrapper = FileWrapper(file)

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Length", "6")])
        return wrapper  # what environ["wsgi.file_wrapper"](file) gives

    records = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    requestlog.logger.addHandler(handler)
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/static/app.js", "wsgi.file_wrapper": FileWrapper}
        result = requestlog.RequestLog(app)(environ, lambda status, headers, exc_info=None: None)
        assert result is wrapper and records == []
        result.close()
    finally:
        requestlog.logger.removeHandler(handler)
    assert closed == [True] and [r.http["path"] for r in records] == ["/static/app.js"]


# --- the request id on the other lines of the request ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_outage_warning_carries_the_request_id_of_its_request(keys, console, monkeypatch):
    assert _wsgi("GET", "/api/v1/audit", token=keys["manage"])[0].startswith("200")  # key and snapshot loaded
    conn = connections[DEFAULT_DB_ALIAS]

    def refuse() -> None:
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    console.truncate(0)
    console.seek(0)
    conn.ensure_connection = refuse  # type: ignore[method-assign]
    try:
        status, headers, _ = _wsgi("GET", "/api/v1/audit", token=keys["manage"],
                                   headers={"X-Request-ID": "outage-1"})
    finally:
        del conn.ensure_connection
    assert status.startswith("503") and headers["X-Request-ID"] == "outage-1"
    text = console.getvalue().splitlines()
    outage = [line for line in text if " rolloutadmin.outage " in line]
    request = [line for line in text if " rolloutadmin.request " in line]
    assert len(outage) == 1 and "WARNING" in outage[0] and outage[0].endswith(" rid=outage-1")
    assert len(request) == 1 and " GET /api/v1/audit 503 " in request[0] and request[0].endswith(" rid=outage-1")
    # After the request, lines carry no request id.
    logging.getLogger("rolloutadmin.api").warning("between requests")
    assert console.getvalue().splitlines()[-1].endswith("between requests")


@pytest.mark.django_db
def test_json_lines_parse_with_the_request_fields_and_the_exception(keys, json_lines):
    _, headers, content = _wsgi("POST", OFREP, _evaluate_body(), keys["evaluate"])

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        try:
            raise ValueError("broken on purpose")
        except ValueError:
            logging.getLogger("rolloutadmin.api").exception("unhandled error")
        start_response("500 Internal Server Error", [("Content-Length", "0")])
        return [b""]

    _, failed, _ = _wsgi("GET", "/fails", app=requestlog.RequestLog(app))
    entries = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    by_logger = [(e["logger"], e.get("request_id")) for e in entries]
    assert by_logger == [("rolloutadmin.request", headers["X-Request-ID"]),
                         ("rolloutadmin.api", failed["X-Request-ID"]), ("rolloutadmin.request", failed["X-Request-ID"])]
    line, error, _ = entries
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert (line["level"], line["method"], line["path"], line["status"], line["bytes"], line["remote_addr"]) == (
        "INFO", "POST", OFREP, 200, len(content), "127.0.0.1")
    assert isinstance(line["duration_ms"], float) and line["message"].startswith(f"POST {OFREP} 200 ")
    assert error["level"] == "ERROR" and "ValueError: broken on purpose" in error["exception"]
    assert "method" not in error and "exception" not in line
    assert entries[2]["status"] == 500


# --- settings: LOG_FORMAT and REQUEST_LOG ----------------------------------------------------------------------

PROBE = ("import django, logging; django.setup(); from rolloutadmin.requestlog import request_id; "
         "request_id.set('probe-1'); logging.getLogger('rolloutadmin.api').warning('hello'); "
         "print(logging.getLogger('rolloutadmin.request').isEnabledFor(logging.INFO))")


def _settings_probe(tmp_path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in {"LOG_FORMAT", "REQUEST_LOG", "LOG_LEVEL"}}
    full.update(DJANGO_SETTINGS_MODULE="rolloutadmin.settings", DEBUG="1", ROLLOUTADMIN_VAR_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=60)


def test_log_format_json_and_plain_and_request_log_off_from_the_environment(tmp_path):
    plain = _settings_probe(tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert re.fullmatch(r"\S+ \S+ WARNING rolloutadmin\.api hello rid=probe-1", plain.stderr.strip())
    assert plain.stdout.strip() == "True"
    as_json = _settings_probe(tmp_path, LOG_FORMAT="JSON")
    assert as_json.returncode == 0, as_json.stderr
    entry = json.loads(as_json.stderr.strip())
    assert {k: entry[k] for k in ("level", "logger", "message", "request_id")} == {
        "level": "WARNING", "logger": "rolloutadmin.api", "message": "hello", "request_id": "probe-1"}
    off = _settings_probe(tmp_path, REQUEST_LOG="0")
    assert off.returncode == 0 and off.stdout.strip() == "False"


@pytest.mark.parametrize(("name", "value"), [("LOG_FORMAT", "xml"), ("REQUEST_LOG", "maybe")])
def test_an_unknown_log_setting_stops_the_start_with_one_clear_line(tmp_path, name, value):
    failed = _settings_probe(tmp_path, **{name: value})
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ") and name in last and repr(value) in last


# --- under gunicorn ----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_gunicorn_writes_one_json_line_per_request_with_the_id_it_answered(keys, tmp_path):
    from tests.live import Server, database_url, redis_url

    env = {"DATABASE_URL": database_url(), "LOG_FORMAT": "json", "GUNICORN_WORKERS": "1"}
    if redis_url():
        env["REDIS_URL"] = redis_url()
    server = Server(env, tmp_path / "var")
    try:
        answers = [
            server.request("POST", OFREP, {"context": {"targetingKey": "u1"}}, keys["evaluate"],
                           headers={"X-Request-ID": "live-given-1"}),
            server.request("POST", OFREP, {"context": {"targetingKey": "u2"}}, keys["evaluate"]),
            server.request("GET", "/api/v1/flags?user=secret-user-77", None, keys["manage"]),
            server.request("GET", "/api/v1/flags"),
        ]
    finally:
        server.stop()
    ids = [headers["X-Request-ID"] for _, _, headers in answers]
    assert ids[0] == "live-given-1" and all(GENERATED.fullmatch(rid) for rid in ids[1:]) and len(set(ids)) == 4
    output = server.log.read_text()
    assert "secret-user-77" not in output
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    request_entries = [e for e in entries if e["logger"] == "rolloutadmin.request" and e["request_id"] in ids]
    assert [(e["request_id"], e["method"], e["path"], e["status"]) for e in request_entries] == [
        (ids[0], "POST", OFREP, 200), (ids[1], "POST", OFREP, 200), (ids[2], "GET", "/api/v1/flags", 200),
        (ids[3], "GET", "/api/v1/flags", 401)]
    assert all(e["remote_addr"] == "127.0.0.1" and e["level"] == "INFO" for e in request_entries)
    # gunicorn's own access log stays off: no second line per request.
    assert not [line for line in output.splitlines() if not line.startswith("{") and "/api/v1/flags" in line]

