"""The application under granian (WSGI mode) instead of gunicorn: what the project relies on from its server.

Evaluations answer from the lean path; a worker killed outright is replaced when granian runs with
--respawn-failed-workers (without it granian shuts down entirely). Skipped when granian is not installed.
With PostgreSQL cut, granian and gunicorn are held to the same answers by one test parametrized by server
(tests/test_outage.py, test_a_server_with_postgres_cut_...).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from flags import services
from flags.models import Source

pytest.importorskip("granian")

pytestmark = pytest.mark.django_db(transaction=True)

FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"


@pytest.fixture
def keys(keys, flag, actor) -> dict[str, str]:
    """The keys of tests/conftest.py, with the flag rolled out to everyone (evaluations answer True)."""
    services.flag_set_rollout(flag=flag, percentage=100, enabled=True, actor=actor, source=Source.CLI)
    return keys


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
