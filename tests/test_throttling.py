"""Throttling: logins lock out after 10 failures for a username (django-axes); API clients that send many
different unknown keys get 429 with Retry-After, on the Django views and on the lean WSGI path alike, while
valid keys are never throttled.

Login time is simulated by moving django-axes' attempt rows back in time (no clock patching); the API
throttle's window and block are shortened through settings where a test needs them to run out.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from api import throttle
from api.fastpath import FastPath
from flags import services
from flags.models import Source
from tests.live import Server, database_url, redis_url

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 42"
WRONG = "not the password"
FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"
LOCKED_TEXT = "Too many failed log-ins"
# Addresses from the documentation ranges (RFC 5737): every API test uses its own, reset around it.
ATTACKER, NEIGHBOUR, PROXY = "198.51.100.7", "198.51.100.8", "198.51.100.9"
CLIENTS = (ATTACKER, NEIGHBOUR, PROXY, "203.0.113.5", "203.0.113.6", "127.0.0.1")


@pytest.fixture(autouse=True)
def fresh_throttle():
    # The cache (local memory or Redis) outlives a test's database transaction: start and end clean, and
    # guess keys no earlier test (or run) has sent.
    GUESSES["salt"] = uuid.uuid4().hex[:12]
    for client in CLIENTS:
        throttle.reset(client)
    yield
    for client in CLIENTS:
        throttle.reset(client)


# --- logins: django-axes ----------------------------------------------------------------------------------


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", password=PASSWORD, is_staff=True, is_superuser=True)


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob", password=PASSWORD, is_staff=True, is_superuser=True)


LOGIN_PAGES = ["/login/", "/admin/login/"]


def log_in(client: Client, page: str, username: str, password: str):
    return client.post(page, {"username": username, "password": password, "next": "/"})


def logged_in_as(client: Client) -> str | None:
    user_id = client.session.get(SESSION_KEY)
    return User.objects.get(pk=user_id).username if user_id else None


def fail(client: Client, page: str, username: str, times: int) -> list[int]:
    return [log_in(client, page, username, WRONG).status_code for _ in range(times)]


def assert_locked_out(response, username: str) -> None:
    assert response.status_code == 429, response.content[:500]
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert LOCKED_TEXT in page and username in page and "even with the right password" in page
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 15 * 60


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_ten_failures_lock_the_account_even_against_the_right_password(client, alice, page):
    assert fail(client, page, "alice", 9) == [200] * 9  # the form again, with its error
    assert logged_in_as(client) is None
    tenth = log_in(client, page, "alice", WRONG)
    assert_locked_out(tenth, "alice")
    right = log_in(client, page, "alice", PASSWORD)
    assert_locked_out(right, "alice")
    assert logged_in_as(client) is None
    # A fresh browser is refused as well: the lockout is the account's, not the session's.
    assert_locked_out(log_in(Client(), page, "alice", PASSWORD), "alice")


def test_failures_on_the_dashboard_count_for_the_admin_login_too(client, alice):
    fail(client, "/login/", "alice", 5)
    fail(client, "/admin/login/", "alice", 4)
    assert logged_in_as(client) is None
    assert_locked_out(log_in(client, "/admin/login/", "alice", WRONG), "alice")
    assert_locked_out(log_in(client, "/login/", "alice", PASSWORD), "alice")
    assert logged_in_as(client) is None


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_another_user_from_the_same_address_is_not_locked_out(client, alice, bob, page):
    fail(client, page, "alice", 12)
    assert_locked_out(log_in(client, page, "alice", PASSWORD), "alice")
    response = log_in(client, page, "bob", PASSWORD)
    assert response.status_code == 302, response.content[:300]
    assert logged_in_as(client) == "bob"
    assert client.get("/").status_code == 200  # the dashboard, as bob


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_after_the_cool_off_the_right_password_works(client, alice, page):
    fail(client, page, "alice", 10)
    # 14 minutes later: still locked, and Retry-After says about a minute is left.
    AccessAttempt.objects.filter(username="alice").update(attempt_time=timezone.now() - timedelta(minutes=14))
    still = log_in(client, page, "alice", PASSWORD)
    assert_locked_out(still, "alice")
    assert 50 <= int(still["Retry-After"]) <= 60
    # 15 minutes and a second later: the right password logs in.
    AccessAttempt.objects.filter(username="alice").update(
        attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    response = log_in(client, page, "alice", PASSWORD)
    assert response.status_code == 302, response.content[:300]
    assert logged_in_as(client) == "alice"


def test_a_failure_during_the_lockout_does_not_extend_it(client, alice):
    fail(client, "/login/", "alice", 10)
    AccessAttempt.objects.filter(username="alice").update(attempt_time=timezone.now() - timedelta(minutes=10))
    assert_locked_out(log_in(client, "/login/", "alice", WRONG), "alice")
    AccessAttempt.objects.filter(username="alice").update(
        attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    assert log_in(client, "/login/", "alice", PASSWORD).status_code == 302


def test_a_successful_login_clears_earlier_failures(client, alice):
    fail(client, "/login/", "alice", 9)
    assert log_in(client, "/login/", "alice", PASSWORD).status_code == 302
    client.post("/logout/")
    assert fail(client, "/login/", "alice", 9) == [200] * 9  # counted from zero again
    assert log_in(client, "/login/", "alice", PASSWORD).status_code == 302
    assert logged_in_as(client) == "alice"


def test_unknown_usernames_lock_out_too_and_no_password_is_recorded(client, alice):
    assert fail(client, "/login/", "nobody", 9) == [200] * 9
    assert_locked_out(log_in(client, "/login/", "nobody", WRONG), "nobody")
    attempt = AccessAttempt.objects.get(username="nobody")
    assert attempt.failures_since_start == 10
    assert attempt.ip_address == "127.0.0.1"
    assert WRONG not in attempt.post_data and PASSWORD not in attempt.post_data


def test_the_lockout_page_escapes_the_username(client):
    name = "<script>x</script>"
    fail(client, "/login/", name, 10)
    response = log_in(client, "/login/", name, WRONG)
    assert response.status_code == 429
    assert b"<script>x</script>" not in response.content
    assert b"&lt;script&gt;x&lt;/script&gt;" in response.content


# --- API keys ------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def keep_the_test_transaction(monkeypatch):
    # As in tests/api: the snapshot's close_old_connections() would close the test's transaction.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)


@pytest.fixture
def keys(flag, actor, make_key) -> dict[str, str]:
    services.flag_set_rollout(flag=flag, percentage=100, enabled=True, actor=actor, source=Source.CLI)
    return {"evaluate": make_key("svc", "evaluate"), "manage": make_key("ops", "manage")}


BODY = json.dumps({"context": {"targetingKey": "user_1"}})


def django_ofrep(client: Client, secret: str, address: str, **extra):
    """The OFREP endpoint through Django (api.views.hot_view)."""
    return client.post(OFREP, BODY, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}",
                       REMOTE_ADDR=address, **extra)


def lean_ofrep(secret: str, address: str, **environ_extra: str) -> tuple[int, dict[str, str], dict]:
    """The OFREP endpoint through the lean WSGI path (api.fastpath, as gunicorn serves it)."""
    body = BODY.encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": OFREP, "QUERY_STRING": "", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": address,
               "HTTP_AUTHORIZATION": f"Bearer {secret}", **environ_extra}
    started: dict = {}

    def start_response(status, headers):
        started.update(status=int(status.split()[0]), headers=dict(headers))

    def django_app(environ, start_response):
        raise AssertionError("the evaluation endpoint fell through to Django")

    answer = b"".join(FastPath(django_app)(environ, start_response))
    return started["status"], started["headers"], json.loads(answer)


GUESSES = {"salt": ""}


def unknown(n: int) -> str:
    """The n-th different wrong key of this test."""
    return f"ra_guess{GUESSES['salt']}{n:04d}"


def assert_throttled_json(status: int, headers, body: dict, *, ofrep: bool) -> int:
    assert status == 429, body
    retry_after = headers["Retry-After"]
    assert retry_after.isdigit(), retry_after  # integer seconds (the OFREP clients reject a date)
    assert 1 <= int(retry_after) <= 60
    if ofrep:
        assert body["errorCode"] == "GENERAL" and "too many" in body["errorDetails"]
    else:
        assert body["error"] == "too_many_requests" and "too many" in body["message"]
    return int(retry_after)


def test_twenty_unknown_keys_then_429_with_retry_after_but_valid_keys_still_answer(client, keys):
    statuses = [django_ofrep(client, unknown(i), ATTACKER).status_code for i in range(20)]
    assert statuses == [401] * 20
    response = django_ofrep(client, unknown(20), ATTACKER)
    retry_after = assert_throttled_json(response.status_code, response, response.json(), ofrep=True)
    assert retry_after == 60
    # Still blocked on the next tries, with the time left counting down (never up).
    again = django_ofrep(client, unknown(21), ATTACKER)
    assert again.status_code == 429 and 1 <= int(again["Retry-After"]) <= retry_after
    # Decision: a valid key is never throttled, from the blocked address itself neither.
    ok = django_ofrep(client, keys["evaluate"], ATTACKER)
    assert ok.status_code == 200 and ok.json()["value"] is True
    # Another address: its valid key answers, and its own unknown key is a plain 401 (counted per address).
    assert django_ofrep(client, keys["evaluate"], NEIGHBOUR).status_code == 200
    assert django_ofrep(client, unknown(99), NEIGHBOUR).status_code == 401


def test_the_lean_path_and_django_share_one_count_and_agree(client, keys):
    # 10 failures through Django, 10 through the lean path: together they reach the limit.
    assert [django_ofrep(client, unknown(i), ATTACKER).status_code for i in range(10)] == [401] * 10
    assert [lean_ofrep(unknown(i), ATTACKER)[0] for i in range(10, 20)] == [401] * 10
    status, headers, body = lean_ofrep(unknown(20), ATTACKER)
    lean_retry = assert_throttled_json(status, headers, body, ofrep=True)
    response = django_ofrep(client, unknown(21), ATTACKER)
    django_retry = assert_throttled_json(response.status_code, response, response.json(), ofrep=True)
    assert abs(lean_retry - django_retry) <= 1
    assert response.json()["errorDetails"] == body["errorDetails"].replace(str(lean_retry), str(django_retry))
    # Valid keys: 200 on both paths, from the blocked address and from another one.
    for address in (ATTACKER, NEIGHBOUR):
        status, _, answer = lean_ofrep(keys["evaluate"], address)
        assert (status, answer["value"]) == (200, True)
        assert django_ofrep(client, keys["evaluate"], address).status_code == 200
    # The other address's first unknown key: 401 on both paths.
    assert lean_ofrep(unknown(50), NEIGHBOUR)[0] == 401
    assert django_ofrep(client, unknown(51), NEIGHBOUR).status_code == 401


def test_the_json_and_management_apis_throttle_with_the_same_rule(client, keys):
    for i in range(20):
        assert client.get(f"/api/v1/flags/{FLAG}/evaluate?user_id=u1", HTTP_AUTHORIZATION=f"Bearer {unknown(i)}",
                          REMOTE_ADDR=ATTACKER).status_code == 401
    evaluate = client.get(f"/api/v1/flags/{FLAG}/evaluate?user_id=u1", HTTP_AUTHORIZATION=f"Bearer {unknown(20)}",
                          REMOTE_ADDR=ATTACKER)
    assert_throttled_json(evaluate.status_code, evaluate, evaluate.json(), ofrep=False)
    manage = client.get("/api/v1/flags", HTTP_AUTHORIZATION=f"Bearer {unknown(21)}", REMOTE_ADDR=ATTACKER)
    assert_throttled_json(manage.status_code, manage, manage.json(), ofrep=False)
    ingest = client.post("/api/v1/executions", "{}", content_type="application/json",
                         HTTP_AUTHORIZATION=f"Bearer {unknown(22)}", REMOTE_ADDR=ATTACKER)
    assert_throttled_json(ingest.status_code, ingest, ingest.json(), ofrep=False)
    # The valid manage key from the same address: its answer, not a 429.
    listed = client.get("/api/v1/flags", HTTP_AUTHORIZATION=f"Bearer {keys['manage']}", REMOTE_ADDR=ATTACKER)
    assert listed.status_code == 200 and [f["key"] for f in listed.json()["results"]] == [FLAG]
    # A valid key without the scope is a 403 that is not counted either.
    wrong_scope = client.get("/api/v1/flags", HTTP_AUTHORIZATION=f"Bearer {keys['evaluate']}", REMOTE_ADDR=NEIGHBOUR)
    assert wrong_scope.status_code == 403


def test_the_same_wrong_key_counts_once_and_a_revoked_key_counts(client, keys):
    from api.keys import api_key_revoke
    from api.models import ApiKey
    from api.snapshot import store

    # A service left with a revoked key retries it: plain 401s (its operator sees why), counted once.
    api_key_revoke(key=ApiKey.objects.get(name="svc"))
    store.reset()
    assert [django_ofrep(client, keys["evaluate"], ATTACKER).status_code for _ in range(50)] == [401] * 50
    assert [lean_ofrep(keys["evaluate"], ATTACKER)[0] for _ in range(10)] == [401] * 10
    # 19 different guesses make 20 different failed keys: still 401; the 21st different one is refused.
    assert [django_ofrep(client, unknown(i), ATTACKER).status_code for i in range(19)] == [401] * 19
    assert django_ofrep(client, unknown(19), ATTACKER).status_code == 429
    # Blocked now: the revoked key gets 429 too (no 401 hint while blocked).
    assert django_ofrep(client, keys["evaluate"], ATTACKER).status_code == 429


def test_missing_keys_and_wrong_scopes_are_not_counted(client, keys):
    for _ in range(30):
        assert client.post(OFREP, BODY, content_type="application/json", REMOTE_ADDR=ATTACKER).status_code == 401
        assert client.get("/api/v1/flags", HTTP_AUTHORIZATION=f"Bearer {keys['evaluate']}",
                          REMOTE_ADDR=ATTACKER).status_code == 403
    assert django_ofrep(client, unknown(0), ATTACKER).status_code == 401


def test_valid_keys_never_touch_the_counter_and_a_broken_cache_fails_open(client, keys, monkeypatch, caplog):
    class BrokenCache:
        calls = 0

        def __getattr__(self, name):
            BrokenCache.calls += 1
            raise ConnectionError("cache down")

    with monkeypatch.context() as patch:
        patch.setattr(throttle, "cache", BrokenCache())
        patch.setattr(throttle, "_cache_retry_at", 0.0)
        for _ in range(50):
            assert django_ofrep(client, keys["evaluate"], ATTACKER).status_code == 200
            assert lean_ofrep(keys["evaluate"], ATTACKER)[0] == 200
        assert BrokenCache.calls == 0  # the valid-key path never asked the cache
        # An unknown key with the cache down: a plain 401; throttling pauses rather than fail each request.
        assert [django_ofrep(client, unknown(i), ATTACKER).status_code for i in range(30)] == [401] * 30
        assert BrokenCache.calls == 1
        assert "throttling is off" in caplog.text


def test_the_window_ends_and_the_block_ends(client, keys, settings):
    settings.API_AUTH_FAILURE_LIMIT = 3
    settings.API_AUTH_FAILURE_WINDOW = 1
    settings.API_AUTH_BLOCK_SECONDS = 1
    assert [django_ofrep(client, unknown(i), ATTACKER).status_code for i in range(3)] == [401] * 3
    time.sleep(1.2)  # the window ran out: counted from zero again
    assert [django_ofrep(client, unknown(i), ATTACKER).status_code for i in range(3)] == [401] * 3
    blocked = django_ofrep(client, unknown(3), ATTACKER)
    assert blocked.status_code == 429 and blocked["Retry-After"] == "1"
    time.sleep(1.2)  # the block ran out
    assert django_ofrep(client, unknown(4), ATTACKER).status_code == 401


def test_x_forwarded_for_is_ignored_unless_proxies_are_trusted(client, keys, settings):
    # No trusted proxy: a client cannot dodge its count by writing another address into the header.
    for i in range(20):
        assert django_ofrep(client, unknown(i), ATTACKER, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code == 401
    assert django_ofrep(client, unknown(20), ATTACKER, HTTP_X_FORWARDED_FOR="203.0.113.99").status_code == 429
    # One trusted proxy (at PROXY): the address it appended is the client; what came before is the client's
    # own writing and is ignored.
    settings.TRUSTED_PROXY_COUNT = 1
    for i in range(10):
        forged = f"10.9.9.{i}, 203.0.113.5"
        assert django_ofrep(client, unknown(100 + i), PROXY, HTTP_X_FORWARDED_FOR=forged).status_code == 401
        assert lean_ofrep(unknown(200 + i), PROXY, HTTP_X_FORWARDED_FOR=forged)[0] == 401
    assert django_ofrep(client, unknown(300), PROXY, HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 429
    assert lean_ofrep(unknown(301), PROXY, HTTP_X_FORWARDED_FOR="203.0.113.5")[0] == 429
    # Another client behind the same proxy is counted on its own.
    assert django_ofrep(client, unknown(0), PROXY, HTTP_X_FORWARDED_FOR="203.0.113.6").status_code == 401
    assert throttle.client_address(PROXY, "not-an-address") == PROXY


@pytest.fixture
def server(tmp_path):
    """gunicorn on this test run's database and Redis (as in tests/api/conftest.py)."""
    started = Server({"DATABASE_URL": database_url(), "REDIS_URL": redis_url()}, tmp_path / "var")
    yield started
    started.stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not redis_url(), reason="needs REDIS_URL: without Redis every gunicorn worker counts alone")
def test_gunicorn_workers_share_the_count_through_redis(keys, server):
    # Two workers, Redis, the lean path in front of Django; the requests come from 127.0.0.1.
    statuses = [server.request("POST", OFREP, json.loads(BODY), unknown(i))[0] for i in range(20)]
    assert statuses == [401] * 20
    status, body, headers = server.request("POST", OFREP, json.loads(BODY), unknown(20))
    assert status == 429 and headers["Retry-After"].isdigit() and body["errorCode"] == "GENERAL"
    for _ in range(6):  # both workers: the valid key answers
        status, body, _ = server.request("POST", OFREP, json.loads(BODY), keys["evaluate"])
        assert (status, body["value"]) == (200, True)
