"""GET /healthz (liveness, no database) and GET /readyz (database, broker, snapshot), in process and under
gunicorn; healthy, with the broker unreachable, with the database unreachable, with a check that hangs."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.db import OperationalError, connections
from django.test import Client, override_settings

from flags.models import Flag
from rolloutadmin import health
from tests.live import Server, database_url, free_port, redis_url


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def wsgi_get(path: str, host: str = "10.1.2.3:8000", method: str = "GET") -> tuple[int, dict, bytes]:
    """The production WSGI callable (the lean path in front of Django), as gunicorn calls it."""
    from rolloutadmin.wsgi import application

    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": "",
        "SERVER_NAME": "10.1.2.3", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host,
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    answer: dict = {}

    def start_response(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

    result = application(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()  # as every server does: the request log writes its line and forgets the request id
    return answer["status"], answer["headers"], body


@pytest.fixture
def snapshot_store():
    from api.snapshot import store

    return store


# --- /healthz ---------------------------------------------------------------------------------------------


def test_healthz_answers_without_any_database_access(client):
    # No `db` fixture: pytest-django refuses every database connection in this test (a view that tried
    # one would raise, and the client would re-raise it here).
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}
    assert "no-store" in response["Cache-Control"]


@pytest.mark.django_db
def test_healthz_makes_no_query_and_answers_with_the_database_unreachable(client, django_assert_num_queries,
                                                                         monkeypatch, tmp_path):
    with django_assert_num_queries(0):
        assert client.get("/healthz").json() == {"status": "ok"}
    def refused() -> None:
        raise OperationalError("connection refused")

    unreachable_database(monkeypatch, tmp_path)  # new connections
    monkeypatch.setattr(connections["default"], "ensure_connection", refused)  # this thread's connection
    with pytest.raises(OperationalError):
        Flag.objects.count()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503


def test_healthz_needs_no_login_and_no_csrf_token_and_refuses_other_methods():
    client = Client(enforce_csrf_checks=True)
    assert client.get("/healthz").status_code == 200
    response = client.post("/healthz", data="{}", content_type="application/json")
    assert response.status_code == 405  # not 403 for a missing CSRF token, not a login redirect
    assert response["Allow"] == "GET, HEAD"
    assert response.json()["error"] == "method_not_allowed"


def test_under_the_wsgi_callable_health_answers_before_django(monkeypatch):
    # A load balancer probes by IP address, which ALLOWED_HOSTS does not list: Django would answer 400.
    status, headers, body = wsgi_get("/healthz", host="10.1.2.3:8000")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["Content-Type"] == "application/json"
    assert wsgi_get("/healthz", method="HEAD")[2] == b""
    # And /readyz is answered there too (the database is refused in this test: 503, never a 500).
    status, headers, body = wsgi_get("/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["database"].startswith("error:")
    assert headers["Retry-After"] == "5"


# --- /readyz ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_is_200_when_database_broker_and_snapshot_are_fine(client, flag, snapshot_store):
    assert snapshot_store._snapshot is None  # this test's process has not loaded one yet
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "snapshot": "ok"}}
    assert not response.has_header("Retry-After")
    assert snapshot_store._snapshot is not None  # the check loaded it


@pytest.mark.django_db
def test_readyz_is_503_naming_the_broker_when_it_is_unreachable(client):
    url = f"redis://127.0.0.1:{closed_port()}/9"
    started = time.monotonic()
    with override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={}):
        response = client.get("/readyz")
    assert time.monotonic() - started < 3
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok" and body["checks"]["snapshot"] == "ok"
    assert body["checks"]["broker"].startswith("error: ")
    assert "refused" in body["checks"]["broker"].lower()
    assert int(response["Retry-After"]) > 0


@pytest.mark.django_db
def test_readyz_hides_broker_credentials(client):
    url = f"redis://user:hunter2@127.0.0.1:{closed_port()}/9"
    with override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={}):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "hunter2" not in response.content.decode()


@pytest.mark.django_db
def test_readyz_is_503_when_the_filesystem_broker_folder_is_gone(client, tmp_path):
    options = {"data_folder_in": str(tmp_path / "missing"), "data_folder_out": str(tmp_path / "missing")}
    with override_settings(CELERY_BROKER_URL="filesystem://", CELERY_BROKER_TRANSPORT_OPTIONS=options):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "data_folder_in" in response.json()["checks"]["broker"]
    (tmp_path / "missing").mkdir()
    with override_settings(CELERY_BROKER_URL="filesystem://", CELERY_BROKER_TRANSPORT_OPTIONS=options):
        assert client.get("/readyz").status_code == 200


def unreachable_database(monkeypatch, tmp_path) -> None:
    """New connections (the checks open their own) go to a database that does not answer."""
    broken = dict(connections.settings["default"])
    if broken["ENGINE"].endswith("sqlite3"):
        broken["NAME"] = str(tmp_path / "no-such-dir" / "db.sqlite3")
    else:
        broken.update(HOST="127.0.0.1", PORT=str(closed_port()))
    monkeypatch.setitem(connections.settings, "default", broken)


@pytest.mark.django_db
def test_readyz_is_503_when_the_database_is_unreachable_and_healthz_still_200(client, monkeypatch, tmp_path):
    unreachable_database(monkeypatch, tmp_path)
    response = client.get("/readyz")
    assert response.status_code == 503, response.content
    checks = response.json()["checks"]
    assert checks["database"].startswith("error: OperationalError")
    assert checks["snapshot"].startswith("error: ConfigUnavailable")  # a worker with no snapshot yet
    assert checks["broker"] == "ok"
    assert int(response["Retry-After"]) > 0
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_a_loaded_snapshot_stays_ok_while_the_database_is_down(client, flag, monkeypatch, tmp_path,
                                                               snapshot_store):
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)
    assert "patch_mode_enabled" in snapshot_store.get().flags
    unreachable_database(monkeypatch, tmp_path)
    checks = client.get("/readyz").json()["checks"]
    assert checks["snapshot"] == "ok"  # evaluations keep answering from it
    assert checks["database"].startswith("error:")


def test_a_hung_check_answers_503_within_the_deadline_and_is_not_started_twice(client, monkeypatch):
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> None:
        calls.append(1)
        release.wait(10)

    monkeypatch.setitem(health.CHECKS, "database", hangs)
    monkeypatch.setitem(health.CHECKS, "broker", lambda: None)
    monkeypatch.setitem(health.CHECKS, "snapshot", lambda: None)
    try:
        with override_settings(HEALTH_CHECK_TIMEOUT=0.3):
            started = time.monotonic()
            first = client.get("/readyz")
            elapsed = time.monotonic() - started
            second = client.get("/readyz")
        assert first.status_code == 503 and elapsed < 2
        assert first.json()["checks"] == {"database": "error: no answer within 0.3 s", "broker": "ok",
                                          "snapshot": "ok"}
        assert second.status_code == 503
        assert "has not finished" in second.json()["checks"]["database"]
        assert len(calls) == 1  # the stuck check was not started again
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while health._running["database"].is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.get("/readyz").status_code == 200  # recovered, no restart needed
    assert len(calls) == 2


def test_readyz_never_answers_500(client, monkeypatch):
    def explode(timeout=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("cannot start a thread")

    monkeypatch.setattr(health, "run_checks", explode)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "error: RuntimeError: cannot start a thread"
    monkeypatch.setattr(health, "answer", lambda name, method: 1 / 0)
    status, headers, body = wsgi_get("/readyz")
    assert status == 503 and json.loads(body)["status"] == "unavailable" and headers["Retry-After"] == "5"


# --- under gunicorn -----------------------------------------------------------------------------------


def fetch(server: Server, path: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(server.url + path, headers={"Host": "10.9.8.7"})  # a probe by IP
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.fixture
def live(tmp_path):
    started: list[Server] = []

    def start(**env: str) -> Server:
        env.setdefault("DATABASE_URL", database_url())
        if redis_url():
            env.setdefault("REDIS_URL", redis_url())
        server = Server({"GUNICORN_WORKERS": "1", **env}, tmp_path / f"var{len(started)}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_under_gunicorn_healthy_then_broker_down_then_database_down(live, tmp_path):
    server = live()
    assert fetch(server, "/healthz")[:2] == (200, {"status": "ok"})
    status, body, _ = fetch(server, "/readyz")
    assert (status, body) == (200, {"status": "ok", "checks": {"database": "ok", "broker": "ok", "snapshot": "ok"}})

    no_broker = live(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/9")
    status, body, headers = fetch(no_broker, "/readyz")
    assert status == 503 and body["checks"]["broker"].startswith("error:")
    assert body["checks"]["database"] == "ok" and headers["Retry-After"] == "5"

    if database_url().startswith("sqlite"):
        down = f"sqlite:///{tmp_path}/no-such-dir/db.sqlite3"
    else:
        down = f"postgres://postgres@127.0.0.1:{closed_port()}/h8"
    # No Redis and a var directory of its own: no snapshot copy kept by the servers above to start from (a
    # copy that Redis's config stamp confirms rightly reads as current: tests/test_capacity.py).
    no_database = live(DATABASE_URL=down, REDIS_URL="")
    assert fetch(no_database, "/healthz")[:2] == (200, {"status": "ok"})
    status, body, headers = fetch(no_database, "/readyz")
    assert status == 503
    assert body["checks"]["database"].startswith("error:") and body["checks"]["snapshot"].startswith("error:")
    assert headers["Retry-After"] == "5"


def test_a_failed_check_names_no_internal_host_address_or_port_but_the_log_does(caplog):
    from rolloutadmin import health

    failure = RuntimeError('connection to server at "db-primary.internal" (10.1.2.3), port 6432 failed: '
                           "Connection refused; redis://:pw@cache.internal:6379/0 [fd00::1]")
    described = health._describe(failure)
    assert described.startswith("error: RuntimeError: connection to server at") and "refused" in described
    for secret in ("db-primary.internal", "10.1.2.3", "6432", "cache.internal", "6379", "pw", "fd00::1"):
        assert secret not in described, secret

    def failing() -> None:
        raise failure

    results: dict[str, str] = {}
    with caplog.at_level("WARNING", logger="rolloutadmin.health"):
        health._run("database", failing, results)
    assert results["database"] == described
    assert "db-primary.internal" in caplog.text and ":pw@" not in caplog.text
