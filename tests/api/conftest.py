from __future__ import annotations

import pytest

from tests.api import Answer, via_django, via_wsgi


@pytest.fixture(params=[via_django, via_wsgi], ids=["django", "lean"])
def call(request, client):
    def make(method: str, path: str, body: dict | None = None, **headers: str) -> Answer:
        return request.param(client, method, path, body, headers)

    return make


# --- the management API tests (tests/api/test_manage_*.py; helpers in tests/api/manage.py) ---------------


@pytest.fixture
def keep_the_test_transaction(monkeypatch):
    # The snapshot calls close_old_connections() before it reloads, as a long-running server process must.
    # Inside a test's transaction (autocommit off) Django would take that as a reason to close the very
    # connection holding the transaction, so the tests keep it. Not autouse here: the test_manage_*.py modules
    # ask for it in their pytestmark, other modules keep their own.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)


@pytest.fixture
def manage_secret(make_key) -> str:
    """A key of scope `manage`, named manage.KEY_NAME (the actor its changes are audited under)."""
    from tests.api.manage import KEY_NAME

    return make_key(KEY_NAME, "manage")


@pytest.fixture
def api(client, manage_secret):
    """The management API as the manage_secret key calls it (tests/api/manage.py: Api)."""
    from tests.api.manage import Api

    return Api(client, manage_secret)
