"""Helpers for the management API tests (tests/api/test_manage_*.py): the paths, a test client with a bearer
token and JSON bodies, the state a rejected request must leave alone, and the routes of api/urls.py as the
OpenAPI document names them. Their fixtures (`api`, `keep_the_test_transaction`) are in tests/api/conftest.py."""

from __future__ import annotations

import json
import re

from django.urls import URLPattern
from django.urls.resolvers import RoutePattern

from api.urls import OFREP_FALLBACK, urlpatterns
from flags import services
from flags.models import AuditEntry, Flag, Source, UserOverride

FLAG = "patch_mode_enabled"
DETAIL = f"/api/v1/flags/{FLAG}"
OVERRIDES = f"/api/v1/flags/{FLAG}/overrides"
AUDIT = "/api/v1/audit"
KEY_NAME = "ops-bot"


class Api:
    """The test client with a bearer token and JSON bodies."""

    def __init__(self, client, secret: str | None) -> None:
        self.client = client
        self.secret = secret

    def request(self, method: str, path: str, payload=None, query: dict | None = None, **extra):
        if self.secret is not None:
            extra.setdefault("HTTP_AUTHORIZATION", f"Bearer {self.secret}")
        if method == "get":
            return self.client.get(path, query or {}, **extra)
        body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
        return self.client.generic(method.upper(), path, body, content_type="application/json", **extra)

    def get(self, path: str, query: dict | None = None, **extra):
        return self.request("get", path, query=query, **extra)

    def patch(self, path: str, payload, **extra):
        return self.request("patch", path, payload, **extra)

    def post(self, path: str, payload, **extra):
        return self.request("post", path, payload, **extra)

    def delete(self, path: str, payload, **extra):
        return self.request("delete", path, payload, **extra)


def state(key: str = FLAG) -> tuple:
    """Everything a rejected request must leave alone."""
    flag = Flag.objects.get(key=key)
    return (flag.version, flag.enabled, flag.rollout_percentage, AuditEntry.objects.count(),
            sorted(UserOverride.objects.filter(flag=flag).values_list("user_id", "kind")))


def assert_400(response, *fields: str) -> dict:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "validation_failed"
    for name in fields:
        assert body["fields"].get(name), body
    return body


def add(actor, user_id: str, kind: str = "allow", flag: str = FLAG) -> None:
    services.override_add(flag=flag, user_id=user_id, kind=kind, actor=actor, source=Source.CLI)


def documented_path(pattern: URLPattern) -> str:
    """A URL pattern of api/urls.py as an OpenAPI path: api/v1/flags/<str:key> -> /api/v1/flags/{key}."""
    route = str(pattern.pattern)
    if isinstance(pattern.pattern, RoutePattern):
        return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
    route = route.removeprefix("^").removeprefix("(?:/)?").removesuffix("$").removesuffix("/?")
    return "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)


# The OFREP fallback answers what no route names (tests/api/test_ofrep_conformance.py); it is no operation.
ROUTES = sorted(documented_path(p) for p in urlpatterns if p.name != OFREP_FALLBACK)
