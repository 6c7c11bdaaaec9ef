"""The application under granian (WSGI mode) instead of gunicorn: what the project relies on from its server.

Evaluations answer from the lean path; with PostgreSQL cut by a TCP proxy, DB-bound /api/ paths answer JSON
503 with an integer Retry-After, evaluations keep answering from the snapshot (marked stale), and everything
recovers without a restart; a worker killed outright is replaced when granian runs with
--respawn-failed-workers (without it granian shuts down entirely). Skipped when granian is not installed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from urllib.parse import urlparse

import pytest

from flags import services
from flags.models import Flag, Source
from monitoring.models import ExecutionRecord
from tests.monitoring import record

pytest.importorskip("granian")

pytestmark = pytest.mark.django_db(transaction=True)

FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"


@pytest.fixture
def keys(make_key, flag, actor) -> dict[str, str]:
    services.flag_set_rollout(flag=flag, percentage=100, enabled=True, actor=actor, source=Source.CLI)
    return {"ingest": make_key("ingester", "ingest"), "manage": make_key("ops", "manage"),
            "evaluate": make_key("svc", "evaluate")}


@pytest.fixture
def granian(servers):
    from tests.live import GranianServer

    def start(args: list[str] | None = None, **env: str) -> GranianServer:
        return servers(GranianServer, options={"args": args}, **env)

    return start


def _evaluate(server, token: str, user: str = "u1"):
    return server.request("POST", OFREP, {"context": {"targetingKey": user}}, token)


def test_evaluations_and_django_paths_answer_and_a_change_reaches_every_worker_within_a_second(granian, keys):
    server = granian()
    for i in range(20):  # new connections each time: both workers answer some of them
        status, body, _ = _evaluate(server, keys["evaluate"], f"user-{i}")
        assert status == 200 and body["value"] is True and body["key"] == FLAG, (status, body)
    status, body, _ = server.request("GET", "/api/v1/flags", None, keys["manage"])
    assert status == 200 and FLAG in str(body)
    assert server.request("GET", "/api/v1/flags", None, "not-a-key")[0] == 401
    status, _, _ = server.request("PATCH", f"/api/v1/flags/{FLAG}", {"enabled": False, "reason": "kill switch"},
                                  keys["manage"])
    assert status == 200
    start = time.monotonic()
    streak = 0
    while streak < 10 and time.monotonic() - start < 5:
        streak = streak + 1 if _evaluate(server, keys["evaluate"])[1]["value"] is False else 0
    elapsed = time.monotonic() - start
    assert streak >= 10 and elapsed < 1.5, f"every worker saw the change after {elapsed:.2f}s (streak {streak})"
    assert "Traceback" not in server.log.read_text()


def test_with_postgres_cut_db_paths_answer_json_503_evaluations_stale_and_it_recovers_without_restart(granian,
                                                                                                      keys):
    from tests.live import TcpProxy, database_url, through

    url = database_url()
    if not url.startswith("postgres"):
        pytest.skip("needs PostgreSQL (an embedded SQLite file cannot become unreachable)")
    parsed = urlparse(url)
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    try:
        proxied = through(proxy, url)
        # No Redis: the database is the only source of the config stamp, so evaluations say they are stale.
        server = granian(DATABASE_URL=proxied, REDIS_URL="", SNAPSHOT_CHECK_INTERVAL="0.1")
        pid = server.process.pid
        batch = {"records": [record(user_id=f"u{i}") for i in range(3)]}

        def ingest():
            return server.request("POST", "/api/v1/executions", batch, keys["ingest"])

        # granian has no per-worker start hook: a worker loads its snapshot on its first evaluation. Enough
        # fresh connections that both workers have answered some.
        for i in range(30):
            status, fresh, _ = _evaluate(server, keys["evaluate"], "u1")
            assert status == 200 and fresh["metadata"]["stale"] is False, (i, status, fresh)
        assert ingest()[0] == 200
        written = ExecutionRecord.objects.count()
        assert written == 3
        proxy.cut()
        for _ in range(4):  # each of the two workers, whatever its connection's state
            status, body, headers = ingest()
            headers = {name.lower(): value for name, value in headers.items()}  # granian sends lower case
            assert status == 503 and body["error"] == "unavailable", (status, body)
            assert headers["content-type"].startswith("application/json")
            assert re.fullmatch(r"[0-9]+", headers["retry-after"]) and int(headers["retry-after"]) > 0
            status, body, headers = server.request("PATCH", f"/api/v1/flags/{FLAG}",
                                                   {"enabled": False, "reason": "outage"}, keys["manage"])
            assert status == 503 and body["error"] == "unavailable"
            assert {name.lower(): value for name, value in headers.items()}["retry-after"].isdigit()
            status, body, _ = server.request("GET", f"/api/v1/flags/{FLAG}/metrics", None, keys["manage"])
            assert status == 503 and body["error"] == "unavailable"
        deadline = time.monotonic() + 5
        while (answer := _evaluate(server, keys["evaluate"]))[1]["metadata"]["stale"] is not True \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        answers = [answer] + [_evaluate(server, keys["evaluate"], "u1") for _ in range(20)]
        assert all(status == 200 for status, _, _ in answers), [a[:2] for a in answers if a[0] != 200]
        assert all(body["value"] is fresh["value"] and body["metadata"]["stale"] is True for _, body, _ in answers)
        proxy.restore()
        deadline = time.monotonic() + 10
        while (status := ingest()[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200 and server.process.pid == pid and server.process.poll() is None
        assert ExecutionRecord.objects.count() == written + 3  # nothing from the outage, the batch once after
        deadline = time.monotonic() + 5
        while _evaluate(server, keys["evaluate"])[1]["metadata"]["stale"] is not False and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _evaluate(server, keys["evaluate"])[1]["metadata"]["stale"] is False
        assert Flag.objects.get(key=FLAG).enabled is True  # the PATCHes in the outage changed nothing
        log = server.log.read_text()
        assert log.count("database unavailable") >= 12 and "Traceback" not in log
    finally:
        proxy.close()


def test_a_killed_worker_is_replaced_with_respawn_failed_workers(granian, keys):
    server = granian(args=["--respawn-failed-workers", "--respawn-interval", "0.5"])
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (len(server.worker_pids()) < 2 or victim in server.worker_pids()
           or server.log.read_text().count("Started worker-") < 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim not in server.worker_pids() and server.log.read_text().count("Started worker-") >= 3
    assert server.process.poll() is None
    answers = [_evaluate(server, keys["evaluate"], f"user-{i}")[0] for i in range(20)]
    assert answers == [200] * 20
