from __future__ import annotations

import pytest

from tests.api import Answer, via_django, via_wsgi


@pytest.fixture(params=[via_django, via_wsgi], ids=["django", "lean"])
def call(request, client):
    def make(method: str, path: str, body: dict | None = None, **headers: str) -> Answer:
        return request.param(client, method, path, body, headers)

    return make
