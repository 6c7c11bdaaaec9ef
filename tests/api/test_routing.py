"""One table of hot routes (api/routing.py): Django's URLconf and the lean WSGI path read it, and agree."""

from __future__ import annotations

import contextlib

import pytest
from django.urls import Resolver404, resolve

from api import routing, views
from api.fastpath import FastPath
from api.urls import OFREP_FALLBACK, urlpatterns


def samples(route: routing.Route) -> list[str]:
    """Paths the route answers: plain, with a trailing slash, with a doubled leading slash."""
    path = route.path.replace("{key}", "patch_mode_enabled")
    return [path, path + "/", "/" + path]


ALL = [(route, path) for route in routing.ROUTES for path in samples(route)]


def test_every_hot_url_pattern_is_built_from_the_table():
    hot = [p for p in urlpatterns if p.callback is views.hot_view and p.name != OFREP_FALLBACK]
    assert [p.name for p in hot] == [route.name for route in routing.ROUTES]
    for pattern, route in zip(hot, routing.ROUTES, strict=True):
        assert pattern.pattern.regex.pattern == route.pattern("(?:/)?")


@pytest.mark.parametrize(("route", "path"), ALL, ids=[f"{r.name} {p}" for r, p in ALL])
def test_django_and_the_lean_path_send_a_hot_path_to_the_same_handler(route, path):
    match = resolve(path)
    assert match.func is views.hot_view and match.url_name == route.name
    handler, kwargs = routing.match(route.method, path)
    assert handler is route.handler
    assert kwargs == ({"key": "patch_mode_enabled"} if "{key}" in route.path else {})
    assert routing.is_hot(path)


@pytest.mark.parametrize("path", ["/api/v1/flags", "/api/v1/flags/patch_mode_enabled",
                                  "/api/v1/flags/patch_mode_enabled/overrides", "/api/v1/audit",
                                  "/api/v1/executions", "/api/v1/openapi.json", "/dashboard/"])
def test_other_paths_are_left_to_django(path):
    assert not routing.is_hot(path)
    assert routing.match("GET", path) is None
    with contextlib.suppress(Resolver404):  # /dashboard/ may have no page of its own
        assert resolve(path).func is not views.hot_view


def test_any_other_path_under_ofrep_is_answered_by_the_lean_path_in_ofreps_format():
    assert routing.is_hot("/ofrep/v2/whatever")
    assert resolve("/ofrep/v2/whatever").url_name == OFREP_FALLBACK
    assert routing.match("POST", "/ofrep/v2/whatever").status == 404


@pytest.mark.parametrize(("route", "path"), ALL, ids=[f"{r.name} {p}" for r, p in ALL])
def test_the_wsgi_wrapper_keeps_every_hot_path_from_django(route, path):
    app = FastPath(lambda environ, start_response: pytest.fail("went to Django"))
    seen = []
    environ = {"REQUEST_METHOD": "PUT", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.input": None}
    body = app(environ, lambda status, headers: seen.append(status))
    assert seen == ["405 Method Not Allowed"] and body
