from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.db import connection

from flags import services
from flags.actors import Actor
from flags.models import Source

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


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
