"""Real gunicorn processes: changes propagate between processes within a second; Redis and the database
can disappear (cut by a TCP proxy, as a network partition would) and evaluation keeps answering."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest

from flags import services
from flags.models import Source
from tests.live import Server, TcpProxy, database_url, redis_url

pytestmark = pytest.mark.django_db(transaction=True)

OFREP = "/ofrep/v1/evaluate/flags/patch_mode_enabled"


def evaluate(server: Server, token: str, user: str = "user_1") -> tuple[int, dict]:
    status, body, _ = server.request("POST", OFREP, {"context": {"targetingKey": user}}, token)
    return status, body


def wait_for(predicate, timeout: float, agree: int = 8) -> float | None:
    """Seconds until predicate() held for `agree` requests in a row, or None if not within the timeout.

    A server has several worker processes, each with its own snapshot, and each request may land on any
    of them: one answer proves one worker; several in a row make it every worker."""
    start = time.monotonic()
    streak = 0
    while time.monotonic() - start < timeout:
        streak = streak + 1 if predicate() else 0
        if streak >= agree:
            return time.monotonic() - start
        if not streak:
            time.sleep(0.02)
    return None


@pytest.fixture
def setup(flag, actor, make_key):
    services.flag_set_rollout(flag=flag, percentage=100, enabled=True, actor=actor, source=Source.CLI)
    return {"evaluate": make_key("svc", "evaluate"), "manage": make_key("ops", "manage")}


def test_a_change_through_one_process_is_seen_by_another_within_a_second(servers, setup):
    a, b = servers(), servers()
    assert evaluate(b, setup["evaluate"])[1]["value"] is True
    status, _, _ = a.request("PATCH", "/api/v1/flags/patch_mode_enabled",
                             {"enabled": False, "reason": "kill switch from process A"}, setup["manage"])
    assert status == 200
    seen_after = wait_for(lambda: evaluate(b, setup["evaluate"])[1]["value"] is False, timeout=5)
    assert seen_after is not None and seen_after < 1.0, f"process B saw the change after {seen_after}s"
    assert evaluate(b, setup["evaluate"])[1]["reason"] == "DISABLED"


def test_a_revoked_key_is_refused_by_every_process_within_a_second(servers, setup):
    from api.keys import api_key_revoke
    from api.models import ApiKey

    a, b = servers(), servers()
    assert evaluate(a, setup["evaluate"])[0] == evaluate(b, setup["evaluate"])[0] == 200
    api_key_revoke(key=ApiKey.objects.get(name="svc"))
    elapsed = wait_for(lambda: evaluate(a, setup["evaluate"])[0] == 401 and evaluate(b, setup["evaluate"])[0] == 401,
                       timeout=5)
    assert elapsed is not None and elapsed < 1.0


def _proxied(url: str, default_port: int) -> TcpProxy:
    parsed = urlparse(url)
    return TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or default_port)


def _with_port(url: str, port: int) -> str:
    parsed = urlparse(url)
    netloc = (f"{parsed.username}@" if parsed.username else "") + f"127.0.0.1:{port}"
    return parsed._replace(netloc=netloc).geturl()


def test_without_redis_evaluation_answers_and_falls_back_to_the_database(servers, setup):
    if not redis_url():
        pytest.skip("runs with REDIS_URL set: without Redis the database is already the only source")
    redis_proxy = _proxied(redis_url(), 6379)
    try:
        a = servers(REDIS_URL=_with_port(redis_url(), redis_proxy.port))
        b = servers(REDIS_URL=_with_port(redis_url(), redis_proxy.port))
        assert evaluate(b, setup["evaluate"])[1]["value"] is True
        redis_proxy.cut()
        status, body = evaluate(b, setup["evaluate"])
        assert status == 200 and body["value"] is True
        status, _, _ = a.request("PATCH", "/api/v1/flags/patch_mode_enabled",
                                 {"rollout_percentage": 0, "reason": "Redis is down"}, setup["manage"])
        assert status == 200
        seen = wait_for(lambda: evaluate(b, setup["evaluate"])[1]["value"] is False, timeout=5)
        assert seen is not None and seen < 1.0
        assert evaluate(b, setup["evaluate"])[1]["metadata"]["stale"] is False
    finally:
        redis_proxy.close()


def test_without_redis_and_database_it_answers_from_the_last_snapshot_marked_stale(servers, setup):
    if not (redis_url() and database_url().startswith("postgres")):
        pytest.skip("needs PostgreSQL and Redis (an embedded SQLite file cannot become unreachable)")
    redis_proxy = _proxied(redis_url(), 6379)
    db_proxy = _proxied(database_url(), 5432)
    try:
        server = servers(REDIS_URL=_with_port(redis_url(), redis_proxy.port),
                         DATABASE_URL=_with_port(database_url(), db_proxy.port))
        status, body = evaluate(server, setup["evaluate"])
        assert status == 200 and body["metadata"]["stale"] is False
        redis_proxy.cut()
        db_proxy.cut()
        became_stale = wait_for(lambda: evaluate(server, setup["evaluate"])[1]["metadata"]["stale"] is True,
                                timeout=5)
        assert became_stale is not None
        status, body = evaluate(server, setup["evaluate"], "someone_else")
        assert status == 200 and body["value"] is True and body["reason"] == "SPLIT"
        # The internal JSON endpoint says so too.
        status, body, _ = server.request("GET", "/api/v1/flags/patch_mode_enabled/evaluate?user_id=u1", None,
                                         setup["evaluate"])
        assert status == 200 and body["stale"] is True
        redis_proxy.restore()
        db_proxy.restore()
        fresh = wait_for(lambda: evaluate(server, setup["evaluate"])[1]["metadata"]["stale"] is False, timeout=10)
        assert fresh is not None
    finally:
        redis_proxy.close()
        db_proxy.close()
