from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from flags import services
from flags.actors import Actor
from flags.models import Source

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"

# rolloutadmin/wsgi.py puts the snapshot into serving mode (checks in a background thread, copies kept in
# Redis and on disk). In this process the tests drive the checks themselves and roll back their data, so a
# background thread with its own connection, or a copy from an earlier test, would answer from the wrong
# data. Tests of serving mode turn it on explicitly; the live servers the tests start run it by default.
settings.SNAPSHOT_BACKGROUND = False
settings.SNAPSHOT_PERSIST = False
# The in-process live server (browser tests) is one process serving a whole page's parallel panel loads on a
# noisy CI machine: with production's 2 slots it shed panels at random. Its slots are not under test there;
# tests/test_capacity.py tests the slots with their own settings and real gunicorn servers.
settings.DB_REQUEST_SLOTS = 16
# Hashing a test user's password with production's PBKDF2 (over a million rounds) took about a second per
# user: most of a dashboard test's time. Password storage is Django's, not under test here.
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The production WSGI callable, imported once before any test: the import sets Django up again, logging
# included (dictConfig binds the console handler to the sys.stderr of that moment). Imported in the middle
# of a test, the handler would keep that test's captured stream, closed once the test ends.
import rolloutadmin.wsgi  # noqa: E402, F401


def shared_data(name: str) -> dict:
    """Test vectors: shared/data beside the checkout when present, else the copy kept in tests/data."""
    for path in (SHARED / "data" / name, Path(__file__).resolve().parent / "data" / name):
        if path.exists():
            return json.loads(path.read_text())
    raise FileNotFoundError(name)


@pytest.fixture
def actor() -> Actor:
    return Actor.system("test-suite")


@pytest.fixture
def make_flag(db, actor):
    def make(key: str = "patch_mode_enabled", **kwargs):
        return services.flag_create(key=key, actor=actor, source=Source.CLI, **kwargs)

    return make


@pytest.fixture
def flag(make_flag):
    return make_flag()


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


requires_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
    reason="needs PostgreSQL: run with DATABASE_URL=postgres://...",
)


@pytest.fixture(autouse=True)
def fresh_throttle():
    # Counters of failed API keys live in the cache (Redis in CI) and outlast a test's transaction: one test's
    # deliberate bad keys must not throttle the next test's requests from the same address.
    from api import throttle

    throttle.reset("127.0.0.1")
    yield
    throttle.reset("127.0.0.1")


@pytest.fixture(autouse=True)
def fresh_snapshot():
    # Test transactions roll back, so config stamps repeat between tests: start every test afresh.
    from api.snapshot import store

    store.reset()
    yield
    store.reset()


@pytest.fixture
def make_key(db):
    from api.keys import api_key_create

    def make(name: str = "svc", scopes: str = "evaluate") -> str:
        _key, secret = api_key_create(name=name, scopes=scopes, created_by="test")
        return secret

    return make


@pytest.fixture
def keys(make_key, flag) -> dict[str, str]:
    """A secret for each scope: ingest, manage, evaluate."""
    return {"ingest": make_key("ingester", "ingest"), "manage": make_key("ops", "manage"),
            "evaluate": make_key("svc", "evaluate")}


@pytest.fixture(params=["gunicorn", "granian"])
def server_class(request):
    """Each production server for `servers` (tests/live.py): gunicorn, and granian (skipped when it is not
    installed)."""
    from tests.live import GranianServer, Server

    if request.param == "granian":
        pytest.importorskip("granian")
        return GranianServer
    return Server


@pytest.fixture
def proxied_postgres():
    """(proxy, url): this run's PostgreSQL test database behind a TcpProxy (tests/live.py) that can cut or
    freeze it, and its URL through the proxy. Skipped on SQLite (an embedded file cannot be cut or hang)."""
    from urllib.parse import urlparse

    from tests.live import TcpProxy, database_url, through

    url = database_url()
    if not url.startswith("postgres"):
        pytest.skip("needs PostgreSQL (an embedded SQLite file cannot become unreachable or hang)")
    parsed = urlparse(url)
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    yield proxy, through(proxy, url)
    proxy.close()


@pytest.fixture
def servers(tmp_path):
    """Start real server processes (tests/live.py: gunicorn by default, or GranianServer) against this test
    run's database, and its Redis when configured (REDIS_URL="" for none). `var` names the var directory:
    two servers given the same name share a host's disk. Stopped after the test."""
    from tests.live import Server, database_url, redis_url

    started: list[Server] = []

    def start(server_class: type[Server] = Server, *, var: str | None = None, options: dict | None = None,
              **env: str) -> Server:
        try:
            env.setdefault("DATABASE_URL", database_url())
        except RuntimeError as exc:  # an in-memory SQLite test database cannot be shared with a server
            pytest.skip(str(exc))
        if redis_url():
            env.setdefault("REDIS_URL", redis_url())
        server = server_class(env, tmp_path / (var or f"var{len(started)}"), **(options or {}))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def keep_the_test_connection(monkeypatch):
    """For tests that drive the snapshot inside the test's transaction. The snapshot calls
    close_old_connections() before it reloads, which would close the connection the test is using; after a
    failed check it also drops the connection, as it must with a real outage, where here the connection is
    fine and holds the test's transaction."""
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)
    monkeypatch.setattr("api.snapshot._forget_connection", lambda: None)


@pytest.fixture
def client_in(django_user_model):
    """A logged-in test client for a new user in `group` (None: in no group), named `username` or after the
    group's last word ("user-managers", "user-viewers", "user-nogroup")."""
    from django.contrib.auth.models import Group
    from django.test import Client

    def make(group: str | None, username: str = "") -> Client:
        name = username or f"user-{group.split()[-1].lower() if group else 'nogroup'}"
        user = django_user_model.objects.create_user(name, password="pw")
        if group:
            user.groups.add(Group.objects.get_or_create(name=group)[0])
        client = Client()
        client.force_login(user)
        return client

    return make
