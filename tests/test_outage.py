"""Clear answers while the database is unreachable (rolloutadmin/outage.py).

Every /api/ and /ofrep/ path answers JSON 503 with an integer Retry-After, the dashboard and /login/ a plain
"database unavailable, retrying" page (503, reloading itself by a refresh meta tag), evaluations keep
answering from the snapshot (marked stale), and the first request after the database returns succeeds.

The database "goes away" in two ways: refused (every connection attempt fails, as with the server down) and
dying mid-request (statements pass until the n-th, then every one fails, as with a dropped connection);
savepoint statements still pass so that the test's own transaction survives. Each test states what was
written and checks it once the database is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connection, connections, transaction
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path

from api.snapshot import ConfigUnavailable, store
from flags import services
from flags.models import AuditEntry, Flag, Source, UserOverride
from monitoring.models import ExecutionRecord, Rollup
from rolloutadmin import outage
from tests.monitoring import record

# Real transactions, as in production (autocommit between requests): inside a test's own transaction a failed
# write would mark that transaction for rollback, which no server ever has to live with.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_the_test_connection")]

REFUSED = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"


@contextlib.contextmanager
def refused(error: Exception | None = None) -> Iterator[None]:
    """No connection to the database can be made or used: every cursor, transaction and savepoint fails."""
    conn = connections[DEFAULT_DB_ALIAS]

    def refuse() -> None:
        raise error or OperationalError(REFUSED)

    conn.ensure_connection = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        del conn.ensure_connection


class _DiesAfter:
    """An execute wrapper: the first `allowed` statements run, then the connection is "lost" for good."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.ran = 0
        self.failed = 0

    def __call__(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if str(sql).lstrip().upper().startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")):
            return execute(sql, params, many, context)  # the test's own transaction must survive
        if self.ran >= self.allowed:
            self.failed += 1
            raise OperationalError("server closed the connection unexpectedly")
        self.ran += 1
        return execute(sql, params, many, context)


@contextlib.contextmanager
def dies_after(allowed: int) -> Iterator[_DiesAfter]:
    wrapper = _DiesAfter(allowed)
    with connection.execute_wrapper(wrapper):
        yield wrapper


@pytest.fixture
def api(client, keys):
    """Requests with a key of the scope named; the first one loads the snapshot while the database is up."""

    def call(method: str, path: str, scope: str = "manage", body=None, **extra):
        kwargs = {"HTTP_AUTHORIZATION": f"Bearer {keys[scope]}", **extra}
        if body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        return getattr(client, method.lower())(path, **kwargs)

    # The snapshot loads, and each key's last use is written now (at most once a minute), not in a test below.
    assert call("GET", f"/api/v1/flags/{FLAG}").status_code == 200
    assert call("POST", "/api/v1/executions", "ingest", {"records": []}).status_code == 400
    assert call("GET", f"/api/v1/flags/{FLAG}/evaluate?user_id=u0", "evaluate").status_code == 200
    return call


def assert_json_503(response, error_format: str = "api") -> dict:
    assert response.status_code == 503, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    assert re.fullmatch(r"[0-9]+", response["Retry-After"]) and int(response["Retry-After"]) > 0
    body = response.json()
    if error_format == "api":
        assert body["error"] == "unavailable" and "database" in body["message"]
    else:
        assert body["errorCode"] == "GENERAL" and "database" in body["errorDetails"]
    assert b"Traceback" not in response.content
    return body


def assert_outage_page(response) -> str:
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert re.fullmatch(r"[0-9]+", response["Retry-After"])
    page = response.content.decode()
    assert "Database unavailable, retrying" in page
    assert re.search(r'<meta http-equiv="refresh" content="[0-9]+">', page)
    assert "Traceback" not in page and "<script" not in page and "OperationalError" not in page
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    return page


def _state() -> tuple:
    flag = Flag.objects.get(key=FLAG)
    return (flag.version, flag.enabled, str(flag.rollout_percentage), AuditEntry.objects.count(),
            UserOverride.objects.count(), ExecutionRecord.objects.count(), Rollup.objects.count())


# --- the API: JSON 503 with Retry-After, nothing written, fine again once the database is back ------------


def test_ingestion_in_an_outage_is_json_503_and_works_again_after(api):
    batch = {"records": [record(user_id=f"u{i}") for i in range(3)]}
    with refused():
        response = api("POST", "/api/v1/executions", "ingest", batch)
    assert_json_503(response)
    assert ExecutionRecord.objects.count() == 0 and Rollup.objects.count() == 0
    response = api("POST", "/api/v1/executions", "ingest", batch)  # the database is back: no restart
    assert response.status_code == 200 and response.json() == {"received": 3, "accepted": 3, "duplicates": 0}
    assert ExecutionRecord.objects.count() == 3 and Rollup.objects.exists()


def test_ingestion_losing_the_database_at_any_statement_is_503_and_writes_nothing(api):
    batch = {"records": [record(user_id=f"u{i}", mode="single" if i % 2 else "patch") for i in range(4)]}
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:  # how many statements it takes
        assert api("POST", "/api/v1/executions", "ingest", batch).status_code == 200
        transaction.set_rollback(True)
    statements = [q for q in queries.captured_queries if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) >= 2 and ExecutionRecord.objects.count() == 0
    for allowed in range(len(statements)):
        with dies_after(allowed) as db:
            response = api("POST", "/api/v1/executions", "ingest", batch)
        assert db.failed >= 1
        assert_json_503(response)
        assert (ExecutionRecord.objects.count(), Rollup.objects.count()) == (0, 0), f"half written at {allowed}"
    assert api("POST", "/api/v1/executions", "ingest", batch).json()["accepted"] == 4


def test_patching_a_flag_in_an_outage_is_json_503_and_changes_nothing(api):
    before = _state()
    change = {"rollout_percentage": 40, "reason": "next stage"}
    with refused():
        response = api("PATCH", f"/api/v1/flags/{FLAG}", body=change)
    assert_json_503(response)
    assert _state() == before
    response = api("PATCH", f"/api/v1/flags/{FLAG}", body=change)
    assert response.status_code == 200 and response.json()["rollout_percentage"] == 40.0
    assert _state()[0] == before[0] + 1 and _state()[3] == before[3] + 1  # a new version and its audit entry


@override_settings(SNAPSHOT_CHECK_INTERVAL=3600)  # no periodic snapshot check among the statements counted
def test_a_patch_losing_the_database_at_any_statement_is_503_and_all_or_nothing(api):
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        assert api("PATCH", f"/api/v1/flags/{FLAG}", body={"rollout_percentage": 5, "reason": "r"}).status_code == 200
        transaction.set_rollback(True)
    statements = [q for q in queries.captured_queries if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) >= 4
    outcomes = []
    for allowed in range(len(statements)):
        assert api("GET", f"/api/v1/flags/{FLAG}").status_code == 200  # the snapshot reloads after a change here
        before = _state()
        percentage = 10 + allowed
        with dies_after(allowed) as db:
            response = api("PATCH", f"/api/v1/flags/{FLAG}", body={"rollout_percentage": percentage, "reason": "r"})
        assert db.failed >= 1
        assert_json_503(response)
        after = _state()
        # The change and its audit entry were committed together, or neither was: the database can go after the
        # commit, while the answer is built, and the client then learns the outcome by reading the flag again.
        done = (before[0] + 1, before[1], f"{percentage}.00", before[3] + 1, *before[4:])
        assert after in (before, done), f"half written when the database went at statement {allowed}"
        outcomes.append(after == done)
    # The first statement never commits; once the change has committed, losing the database at any later
    # statement leaves it committed (never committed, then committed: no interleaving).
    assert not outcomes[0] and outcomes == sorted(outcomes)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", f"/api/v1/flags/{FLAG}/metrics", None),
    ("GET", f"/api/v1/flags/{FLAG}/metrics?series=1&window=7d", None),
    ("GET", "/api/v1/audit", None),
    ("GET", f"/api/v1/audit?flag={FLAG}", None),
    ("GET", "/api/v1/flags", None),
    ("GET", f"/api/v1/flags/{FLAG}", None),
    ("GET", f"/api/v1/flags/{FLAG}/overrides", None),
    ("POST", f"/api/v1/flags/{FLAG}/overrides", {"kind": "allow", "user_ids": ["a", "b"], "reason": "beta"}),
    ("DELETE", f"/api/v1/flags/{FLAG}/overrides", {"user_ids": ["a"], "reason": "done"}),
])
def test_every_management_and_metrics_endpoint_is_json_503_in_an_outage_and_200_after(api, method, path, body):
    before = _state()
    for error in (OperationalError(REFUSED), InterfaceError("connection already closed")):
        with refused(error):
            assert_json_503(api(method, path, body=body))
        assert _state() == before
    response = api(method, path, body=body)
    assert response.status_code == 200, response.content[:300]


def test_the_outage_is_logged_once_per_request_at_warning_without_a_traceback(api, caplog):
    with caplog.at_level(logging.INFO), refused():
        api("GET", "/api/v1/audit")
        api("POST", "/api/v1/executions", "ingest", {"records": [record()]})
    outage_lines = [r for r in caplog.records if r.name == "rolloutadmin.outage"]
    assert [r.levelno for r in outage_lines] == [logging.WARNING, logging.WARNING]
    assert "/api/v1/audit" in outage_lines[0].getMessage() and "OperationalError" in outage_lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_process_that_never_loaded_its_configuration_answers_503_with_retry_after(client, keys):
    store.reset()  # as a worker that started during the outage (no snapshot from elsewhere)
    with refused():
        management = client.get(f"/api/v1/flags/{FLAG}", HTTP_AUTHORIZATION=f"Bearer {keys['manage']}")
        evaluation = client.get(f"/api/v1/flags/{FLAG}/evaluate?user_id=u1",
                                HTTP_AUTHORIZATION=f"Bearer {keys['evaluate']}")
        ofrep = client.post(OFREP, {"context": {"targetingKey": "u1"}}, content_type="application/json",
                            HTTP_AUTHORIZATION=f"Bearer {keys['evaluate']}")
    assert_json_503(management)
    assert_json_503(evaluation)
    assert assert_json_503(ofrep, "ofrep")["key"] == FLAG
    ofrep = client.post(OFREP, {"context": {"targetingKey": "u1"}}, content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {keys['evaluate']}")
    assert ofrep.status_code == 200 and ofrep.json()["metadata"]["stale"] is False


def test_evaluations_keep_answering_from_the_snapshot_marked_stale(api, keys, client, monkeypatch):
    def ofrep():
        return client.post(OFREP, {"context": {"targetingKey": "u1"}}, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {keys['evaluate']}")

    fresh = ofrep()
    assert fresh.status_code == 200 and fresh.json()["metadata"]["stale"] is False
    # With Redis, the stamp kept there still says the snapshot is current: take Redis away too.
    with monkeypatch.context() as patch, refused():
        patch.setattr("api.snapshot.cache.get", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
        store._next_check = store._next_db_check = 0.0  # the periodic check is due
        stale = ofrep()
        internal = api("GET", f"/api/v1/flags/{FLAG}/evaluate?user_id=u1", "evaluate")
        bulk = api("POST", "/api/v1/evaluate", "evaluate", {"user_ids": ["u1", "u2"]})
    assert stale.status_code == 200 and stale.json()["metadata"]["stale"] is True
    assert stale.json()["value"] == fresh.json()["value"]
    assert internal.status_code == 200 and internal.json()["stale"] is True
    assert bulk.status_code == 200 and bulk.json()["stale"] is True and len(bulk.json()["results"]) == 2
    store._next_check = store._next_db_check = store._redis_retry_at = 0.0
    assert ofrep().json()["metadata"]["stale"] is False


# --- the dashboard and /login/: a plain page that retries by itself ---------------------------------------


@pytest.fixture
def viewer(django_user_model, flag) -> Client:
    user = django_user_model.objects.create_user("viewer", password="pw-viewer-1")
    user.groups.add(Group.objects.get_or_create(name="Rollout viewers")[0])
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", ["/", f"/flags/{FLAG}/", "/alerts/", "/login/", "/admin/"])
def test_dashboard_pages_in_an_outage_show_the_retrying_page_then_work_again(viewer, path):
    with refused():
        response = viewer.get(path)
    assert_outage_page(response)
    assert viewer.get(path).status_code in (200, 302)


def test_an_htmx_partial_in_an_outage_is_a_503_too(viewer):
    with refused():
        response = viewer.get(f"/flags/{FLAG}/alerts", HTTP_HX_REQUEST="true")
    assert_outage_page(response)


def test_logging_in_during_an_outage_shows_the_retrying_page_and_logs_nobody_in(django_user_model, client):
    django_user_model.objects.create_user("alice", password="pw-alice-1")
    credentials = {"username": "alice", "password": "pw-alice-1"}
    with refused():
        response = client.post("/login/", credentials)
    assert_outage_page(response)
    assert "_auth_user_id" not in client.session
    response = client.post("/login/", credentials)
    assert response.status_code == 302 and "_auth_user_id" in client.session


def test_a_dashboard_change_losing_the_database_at_any_statement_is_the_page_and_all_or_nothing(
        django_user_model, flag):
    user = django_user_model.objects.create_user("manager", password="pw")
    user.groups.add(Group.objects.get_or_create(name="Rollout managers")[0])
    manager = Client()
    manager.force_login(user)
    before = _state()
    pages = 0
    for allowed in range(60):  # the database goes at statement 0, 1, 2, ... until the change goes through
        with dies_after(allowed) as db:
            response = manager.post(f"/flags/{FLAG}/rollout", {"rollout_percentage": "20", "reason": "up"},
                                    HTTP_HX_REQUEST="true")
        if not db.failed:
            assert response.status_code == 200
            break
        assert_outage_page(response)
        pages += 1
        if _state() != before:
            break  # committed, then the database went while the answer was drawn
        assert _state() == before
    else:
        pytest.fail("the change never went through")
    assert pages >= 3  # the session, the user and the flag were each read before the change
    after = _state()
    assert after[:4] == (before[0] + 1, before[1], "20.00", before[3] + 1) and after[4:] == before[4:]


class TouchesTheDatabase:
    """A middleware inside the outage one that queries the database before any view (as a session or
    throttling middleware may)."""

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response

    def __call__(self, request):  # type: ignore[no-untyped-def]
        Flag.objects.exists()
        return self.get_response(request)


def _with_inner_middleware():  # type: ignore[no-untyped-def]
    from django.conf import settings

    middleware = list(settings.MIDDLEWARE)
    middleware.insert(middleware.index("django.contrib.sessions.middleware.SessionMiddleware") + 1,
                      "tests.test_outage.TouchesTheDatabase")
    assert middleware.index("rolloutadmin.outage.DatabaseOutageMiddleware") < middleware.index(
        "tests.test_outage.TouchesTheDatabase")
    return override_settings(MIDDLEWARE=middleware)


def test_a_middleware_failing_on_the_database_gives_the_503_not_a_500(api, caplog):
    plain = Client(raise_request_exception=False)  # a 500 must show as a status here, not as an exception
    with _with_inner_middleware(), caplog.at_level(logging.INFO), refused():
        page = plain.get("/login/")
        api_answer = plain.get("/api/v1/audit")
        other = plain.get("/no-such-page/")
    assert_outage_page(page)
    assert_json_503(api_answer)
    assert other.status_code == 503
    assert [r.levelno for r in caplog.records if r.name == "rolloutadmin.outage"] == [logging.WARNING] * 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    with _with_inner_middleware():
        assert plain.get("/login/").status_code == 200


def test_other_errors_are_not_taken_for_an_outage():
    assert not outage.is_database_outage(OperationalError("no such table: flags_flag"))  # SQLite: a bug
    assert not outage.is_database_outage(ValueError("x"))
    assert outage.is_database_outage(OperationalError(REFUSED))
    assert outage.is_database_outage(InterfaceError("connection already closed"))
    assert outage.is_database_outage(ConfigUnavailable("never loaded"))
    try:
        try:
            raise OperationalError("canceling statement due to statement timeout")
        except OperationalError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert outage.is_database_outage(wrapped)


def _raises(request):  # type: ignore[no-untyped-def]
    raise OperationalError(request.GET["message"])


urlpatterns = [path("raises", _raises), path("api/raises", _raises)]


@override_settings(ROOT_URLCONF="tests.test_outage")
def test_only_an_outage_becomes_a_503_a_bug_stays_a_500():
    plain = Client(raise_request_exception=False)
    assert plain.get("/raises", {"message": REFUSED}).status_code == 503
    assert plain.get("/api/raises", {"message": REFUSED}).json()["error"] == "unavailable"
    assert plain.get("/raises", {"message": "no such column: nope"}).status_code == 500
    assert plain.get("/api/raises", {"message": "no such table: nope"}).status_code == 500


# --- the lean WSGI path (gunicorn): same answers without Django's middleware ---------------------------------


def _wsgi(app, method: str, path: str, body: bytes = b"", token: str = "") -> tuple[str, dict[str, str], bytes]:
    import io

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "CONTENT_LENGTH": str(len(body)),
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": "127.0.0.1",
               "HTTP_AUTHORIZATION": f"Bearer {token}"}
    answer: dict = {}

    def start_response(status, headers):  # type: ignore[no-untyped-def]
        answer.update(status=status, headers=dict(headers))

    content = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], content


def test_the_lean_path_answers_503_with_retry_after_when_it_cannot_load_the_configuration(keys, monkeypatch):
    from api import fastpath

    app = fastpath.FastPath(lambda environ, start_response: pytest.fail("went to Django"))
    store.reset()
    body = json.dumps({"context": {"targetingKey": "u1"}}).encode()
    with refused():
        status, headers, content = _wsgi(app, "POST", OFREP, body, keys["evaluate"])
    assert status.startswith("503") and re.fullmatch(r"[0-9]+", headers["Retry-After"])
    assert json.loads(content)["errorCode"] == "GENERAL" and json.loads(content)["key"] == FLAG
    # An outage error escaping a handler is a 503 too; any other error stays a 500.
    with monkeypatch.context() as patch:
        patch.setattr(fastpath, "dispatch", lambda req: (_ for _ in ()).throw(OperationalError(REFUSED)))
        status, headers, content = _wsgi(app, "GET", f"/api/v1/flags/{FLAG}/evaluate", b"", keys["evaluate"])
        assert status.startswith("503") and headers["Retry-After"].isdigit()
        assert json.loads(content)["error"] == "unavailable"
        patch.setattr(fastpath, "dispatch", lambda req: (_ for _ in ()).throw(ValueError("bug")))
        status, _, _ = _wsgi(app, "GET", f"/api/v1/flags/{FLAG}/evaluate", b"", keys["evaluate"])
        assert status.startswith("500")
    status, _, content = _wsgi(app, "POST", OFREP, body, keys["evaluate"])
    assert status.startswith("200") and json.loads(content)["metadata"]["stale"] is False


# --- database timeouts: a hung database fails fast instead of holding a worker -------------------------------

OPTIONS_PROBE = ("import django, json; from django.conf import settings; django.setup(); "
                 "print(json.dumps(settings.DATABASES['default'].get('OPTIONS', {}), default=str))")


def _options(tmp_path, **env: str) -> dict:
    from tests.test_settings import run_python

    result = run_python(tmp_path, ["-c", OPTIONS_PROBE], DEBUG="1", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=False)
def test_postgres_gets_a_connect_and_a_statement_timeout_configurable_by_the_environment(tmp_path):
    url = "postgres://u@127.0.0.1:5432/db"
    defaults = _options(tmp_path, DATABASE_URL=url)
    assert defaults["connect_timeout"] == 3 and defaults["options"] == "-c statement_timeout=10000"
    tuned = _options(tmp_path, DATABASE_URL=url, DB_CONNECT_TIMEOUT="7", DB_STATEMENT_TIMEOUT_MS="2500")
    assert tuned["connect_timeout"] == 7 and tuned["options"] == "-c statement_timeout=2500"
    assert "options" not in _options(tmp_path, DATABASE_URL=url, DB_STATEMENT_TIMEOUT_MS="0")
    sqlite = _options(tmp_path)  # SQLite has its own busy timeout and no server to wait for
    assert sqlite["timeout"] == 20 and "connect_timeout" not in sqlite and "options" not in sqlite


def test_on_postgres_a_statement_over_the_timeout_is_cancelled_and_answered_as_an_outage():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://...")
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "10s"  # the setting reached the server through the connection options
    with pytest.raises(OperationalError) as cancelled, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 100")
        cursor.execute("SELECT pg_sleep(5)")
    assert "statement timeout" in str(cancelled.value)
    assert outage.is_database_outage(cancelled.value)


# --- real servers (gunicorn, and granian when installed) on PostgreSQL, the database cut by a TCP proxy ----


def test_a_server_with_postgres_cut_answers_json_503_evaluates_stale_and_recovers_without_restart(
        servers, server_class, keys, proxied_postgres, flag, actor):
    proxy, proxied = proxied_postgres
    # Rolled out to everyone: evaluations answer True, not a default, so a stale answer is the snapshot's.
    services.flag_set_rollout(flag=flag, percentage=100, enabled=True, actor=actor, source=Source.CLI)
    # No Redis: the database is the only source of the config stamp, so evaluations say they are stale
    # (with Redis up they answer as current; tests/api/test_live_servers.py cuts both).
    server = servers(server_class, DATABASE_URL=proxied, REDIS_URL="", SNAPSHOT_CHECK_INTERVAL="0.1")
    pid = server.process.pid
    batch = {"records": [record(user_id=f"u{i}") for i in range(3)]}

    def ingest():
        return server.request("POST", "/api/v1/executions", batch, keys["ingest"])

    def evaluate():
        return server.request("POST", OFREP, {"context": {"targetingKey": "u1"}}, keys["evaluate"])

    def lower(headers: dict[str, str]) -> dict[str, str]:
        return {name.lower(): value for name, value in headers.items()}  # granian sends lower case

    # granian has no per-worker start hook: a worker loads its snapshot on its first evaluation. Enough
    # fresh connections that both workers have answered some.
    for i in range(30):
        status, fresh, _ = evaluate()
        assert status == 200 and fresh["metadata"]["stale"] is False, (i, status, fresh)
    assert fresh["value"] is True
    assert ingest()[0] == 200
    written = ExecutionRecord.objects.count()
    before = _state()
    assert written == 3
    proxy.cut()
    for _ in range(4):  # each of the two workers, whatever its connection's state
        status, body, headers = ingest()
        headers = lower(headers)
        assert status == 503 and body["error"] == "unavailable", (status, body)
        assert headers["content-type"].startswith("application/json")
        assert re.fullmatch(r"[0-9]+", headers["retry-after"]) and int(headers["retry-after"]) > 0
        status, body, headers = server.request("PATCH", f"/api/v1/flags/{FLAG}",
                                               {"enabled": not before[1], "reason": "outage"}, keys["manage"])
        assert status == 503 and body["error"] == "unavailable" and lower(headers)["retry-after"].isdigit()
        status, body, _ = server.request("GET", f"/api/v1/flags/{FLAG}/metrics", None, keys["manage"])
        assert status == 503 and body["error"] == "unavailable"
    deadline = time.monotonic() + 5
    while evaluate()[1]["metadata"]["stale"] is not True and time.monotonic() < deadline:
        time.sleep(0.05)
    # One worker has seen the cut. Another may have confirmed its snapshot just before it and keeps that
    # confirmation until its next check: wait out a few check intervals, so every worker has checked since.
    time.sleep(0.5)
    answers = [evaluate() for _ in range(20)]
    assert all(status == 200 for status, _, _ in answers), [a[:2] for a in answers if a[0] != 200]
    assert all(body["value"] is fresh["value"] and body["metadata"]["stale"] is True for _, body, _ in answers), \
        [body for _, body, _ in answers]
    proxy.restore()
    deadline = time.monotonic() + 10
    while (status := ingest()[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200 and server.process.pid == pid and server.process.poll() is None
    assert ExecutionRecord.objects.count() == written + 3  # nothing from the outage, the batch once after
    deadline = time.monotonic() + 5
    while evaluate()[1]["metadata"]["stale"] is not False and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # as above: one worker has checked since the database came back; let every worker check
    answers = [evaluate() for _ in range(20)]
    assert all(body["metadata"]["stale"] is False for _, body, _ in answers), [body for _, body, _ in answers]
    assert _state()[:5] == before[:5]  # the PATCHes in the outage changed nothing, audited nothing
    log = server.log.read_text()
    assert log.count("rolloutadmin.outage database unavailable") >= 12 and "Traceback" not in log
