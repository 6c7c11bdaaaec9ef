from __future__ import annotations

import pytest

from tests.live import Server, database_url, redis_url


@pytest.fixture
def servers(tmp_path):
    """Start real gunicorn processes against this test run's database (and Redis when configured)."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        env.setdefault("DATABASE_URL", database_url())
        if redis_url():
            env.setdefault("REDIS_URL", redis_url())
        server = Server(env, tmp_path / f"var{len(started)}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
