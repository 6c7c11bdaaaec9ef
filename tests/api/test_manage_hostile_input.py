"""Hostile input at every route of the API (bodies, fields, query parameters, flag keys in the path, headers):
never a server error, always a JSON answer, and nothing written when rejected."""

from __future__ import annotations

import json

import pytest

from flags import services
from flags.models import Source
from tests.api.manage import AUDIT, DETAIL, FLAG, OVERRIDES, ROUTES, Api, add, assert_400, state

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_transaction")]


ENDPOINTS = [
    ("post", f"/ofrep/v1/evaluate/flags/{FLAG}"),
    ("post", "/ofrep/v1/evaluate/flags"),
    ("post", "/api/v1/evaluate"),
    ("get", f"/api/v1/flags/{FLAG}/evaluate?user_id=user_1"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/flags"),
    ("get", DETAIL),
    ("patch", DETAIL),
    ("get", OVERRIDES),
    ("post", OVERRIDES),
    ("delete", OVERRIDES),
    ("get", AUDIT),
    ("get", f"/api/v1/flags/{FLAG}/rules"),
    ("put", f"/api/v1/flags/{FLAG}/rules"),
    ("get", "/api/v1/segments"),
    ("post", "/api/v1/segments"),
    ("get", f"/api/v1/segments/{FLAG}"),
    ("patch", f"/api/v1/segments/{FLAG}"),
    ("delete", f"/api/v1/segments/{FLAG}"),
    ("post", "/api/v1/executions"),
    ("get", f"/api/v1/flags/{FLAG}/metrics"),
]


BODIES = {
    "not_json": b"this is not json",
    "empty": b"",
    "truncated": b'{"context": {"targetingKey": "user_1"',
    "json_array": b'[{"enabled": true}, 1, "two"]',
    "json_string": b'"user_1"',
    "json_null": b"null",
    "nested_10000_unclosed": b"[" * 10000,
    "nested_10000_closed": b"[" * 10000 + b"]" * 10000,
    "nested_objects_10000": b'{"a":' * 10000 + b"1" + b"}" * 10000,
    "invalid_utf8": b'{"\xff\xfe": "\xc3\x28"}',
    "utf16_bom": "\ufeff{}".encode("utf-16"),
    "huge_number": b"1" + b"0" * 5000,
    "huge_float": b"1e400",
    "nan": b"NaN",
}


# Hostile values put into each field of each write endpoint (JSON text).
VALUES = {
    "string": b'"text"',
    "empty_string": b'""',
    "long_string": json.dumps("x" * 100_000).encode(),
    "nul_string": b'"a\\u0000b"',
    "strings_list": b'["user_1", "user_2"]',
    "numbers_list": b"[1, 2.5, -3]",
    "object": b'{"a": {"b": [1]}}',
    "null": b"null",
    "true": b"true",
    "zero": b"0",
    "negative": b"-1",
    "big_int": b"1" + b"0" * 4000,
    "too_big_int": b"1" + b"0" * 5000,
    "huge_float": b"1e400",
    "nan": b"NaN",
    "deep_nesting": b"[" * 500 + b"]" * 500,
    "edge_datetime": b'"0001-01-01T00:00:00+14:00"',
    "bad_utf8_byte": b'"\xff"',
    "utf8_encoded_surrogate": b'"\xed\xa0\x80"',
    "escaped_lone_surrogate": b'"\\udc80"',
}


RECORD = {"id": "r-1", "user_id": "user_1", "mode": "patch", "latency_ms": 12.5, "tokens_used": 100,
          "success": True, "patch_count": 2, "failed_patches": 0, "flag": FLAG,
          "occurred_at": "2026-01-01T00:00:00Z"}


def template(payload: dict, path: tuple) -> bytes:
    """A JSON body with the value at `path` left as a @V@ placeholder."""
    marker = "@V@"
    target = payload
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = marker
    return json.dumps(payload).replace(f'"{marker}"', marker).encode()


OFREP_TEMPLATES = {
    "context": template({"context": None}, ("context",)),
    "targetingKey": template({"context": {"targetingKey": None}}, ("context", "targetingKey")),
    "attribute": template({"context": {"targetingKey": "user_1", "plan": None}}, ("context", "plan")),
    "extra_field": template({"context": {"targetingKey": "user_1"}, "extra": None}, ("extra",)),
}


TEMPLATES = {
    ("post", f"/ofrep/v1/evaluate/flags/{FLAG}"): OFREP_TEMPLATES,
    ("post", "/ofrep/v1/evaluate/flags"): OFREP_TEMPLATES,
    ("post", "/api/v1/evaluate"): {
        "user_ids": template({"user_ids": None}, ("user_ids",)),
        "user_ids[0]": template({"user_ids": [None, "user_1"]}, ("user_ids", 0)),
        "flags": template({"user_ids": ["user_1"], "flags": None}, ("flags",)),
        "flags[0]": template({"user_ids": ["user_1"], "flags": [None]}, ("flags", 0)),
    },
    ("patch", DETAIL): {
        "rollout_percentage": template({"reason": "r", "rollout_percentage": None}, ("rollout_percentage",)),
        "enabled": template({"reason": "r", "enabled": None}, ("enabled",)),
        # The fuzz fixture's flag is enabled: turning it off is a change, so the reason gets written.
        "reason": template({"reason": None, "enabled": False}, ("reason",)),
        "expected_version": template({"reason": "r", "enabled": False, "expected_version": None},
                                     ("expected_version",)),
    },
    ("post", OVERRIDES): {
        "kind": template({"kind": None, "user_ids": ["user_1"]}, ("kind",)),
        "user_ids": template({"kind": "allow", "user_ids": None}, ("user_ids",)),
        "user_ids[0]": template({"kind": "allow", "user_ids": [None]}, ("user_ids", 0)),
        "note": template({"kind": "allow", "user_ids": ["user_1"], "note": None}, ("note",)),
        "reason": template({"kind": "allow", "user_ids": ["user_1"], "reason": None}, ("reason",)),
    },
    ("delete", OVERRIDES): {
        "kind": template({"kind": None, "user_ids": ["user_1"]}, ("kind",)),
        "user_ids": template({"user_ids": None}, ("user_ids",)),
        "user_ids[0]": template({"user_ids": [None]}, ("user_ids", 0)),
        "reason": template({"user_ids": ["user_1"], "reason": None}, ("reason",)),
    },
    ("post", "/api/v1/executions"): {
        "records": template({"records": None}, ("records",)),
        "records[0]": template({"records": [None]}, ("records", 0)),
        **{f"records[0].{name}": template({"records": [dict(RECORD)]}, ("records", 0, name)) for name in RECORD},
    },
}


def test_execution_record_with_a_huge_integer_latency_is_400_naming_it(client, flag, make_key):
    client.raise_request_exception = False
    collector = Api(client, make_key("collector", "ingest"))
    response = collector.post("/api/v1/executions", {"records": [dict(RECORD, latency_ms=10**400)]})
    assert_400(response, "records[0].latency_ms")


def fuzz_cases():
    for endpoint in ENDPOINTS:
        for name, body in BODIES.items():
            yield pytest.param(endpoint, body, id=f"{endpoint[0]} {endpoint[1]} body={name}")
    for endpoint, templates in TEMPLATES.items():
        for field, text in templates.items():
            for name, value in VALUES.items():
                case_id = f"{endpoint[0]} {endpoint[1]} {field}={name}"
                yield pytest.param(endpoint, text.replace(b"@V@", value), id=case_id)


@pytest.fixture
def everything(client, flag, actor, make_key) -> Api:
    """Every scope, an enabled flag with lists, so that requests reach deep into the handlers."""
    services.flag_set_rollout(flag=FLAG, percentage=50, enabled=True, actor=actor, source=Source.CLI)
    add(actor, "user_2", "allow")
    add(actor, "user_3", "deny")
    client.raise_request_exception = False  # a 500 must show as a status here, not as a raised exception
    return Api(client, make_key("everything", "evaluate,ingest,manage"))


def assert_answered_in_json(response) -> None:
    assert response.status_code < 500, response.content[:300]
    if response.status_code != 304:
        assert response["Content-Type"].startswith("application/json")
        assert json.loads(response.content) is not None


def test_every_route_is_fuzzed():
    fuzzed = {path.split("?")[0].replace(FLAG, "{key}") for _method, path in ENDPOINTS}
    assert fuzzed == set(ROUTES)


@pytest.mark.parametrize(("endpoint", "body"), list(fuzz_cases()))
def test_malformed_body_is_never_a_server_error(everything, endpoint, body):
    method, path = endpoint
    before = state()
    response = everything.client.generic(method.upper(), path, body, content_type="application/json",
                                         HTTP_AUTHORIZATION=f"Bearer {everything.secret}")
    assert_answered_in_json(response)
    if response.status_code == 400:
        assert state() == before  # rejected: nothing written
        answer = response.json()
        assert answer.get("fields") or answer.get("errorCode") or answer.get("error") == "invalid_json", answer


EDGE_DATES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
QUERY_VALUES = ["", " ", "abc", "-1", "0", "1.5", "1e3", "9" * 30, "²", "\x00", "x" * 5000, *EDGE_DATES,
                "2026-02-30T00:00:00", "2026-01-01T00:00:00+99:00"]
QUERIES = [
    (f"/api/v1/flags/{FLAG}/evaluate", "user_id"),
    (OVERRIDES, "limit"), (OVERRIDES, "cursor"), (OVERRIDES, "kind"),
    (AUDIT, "limit"), (AUDIT, "cursor"), (AUDIT, "since"), (AUDIT, "until"), (AUDIT, "flag"),
    (f"/api/v1/flags/{FLAG}/metrics", "window"), (f"/api/v1/flags/{FLAG}/metrics", "series"),
]


def query_cases():
    for path, name in QUERIES:
        for value in QUERY_VALUES:
            yield pytest.param(path, name, value, id=f"{path}?{name}={value[:30]!r}")


@pytest.mark.parametrize(("path", "name", "value"), list(query_cases()))
def test_malformed_query_parameter_is_never_a_server_error(everything, path, name, value):
    assert_answered_in_json(everything.get(path, {name: value}))


KEY_ROUTES = [("get", "/api/v1/flags/{}"), ("patch", "/api/v1/flags/{}"), ("get", "/api/v1/flags/{}/overrides"),
              ("post", "/api/v1/flags/{}/overrides"), ("delete", "/api/v1/flags/{}/overrides"),
              ("get", "/api/v1/flags/{}/evaluate?user_id=user_1"), ("get", "/api/v1/flags/{}/metrics"),
              ("post", "/ofrep/v1/evaluate/flags/{}")]
PATH_KEYS = ["%00", "a%00b", "%ED%A0%80", "%FF", "x" * 300, "%2e%2e", "Patch_Mode", "a%20b", "%F0%9F%98%80", "-"]


@pytest.mark.parametrize("path", ["/api/v1/flags/patch%00mode", "/api/v1/flags/patch%00mode/overrides"])
def test_flag_key_with_a_nul_in_the_path_is_404(api, flag, path):
    api.client.raise_request_exception = False
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def path_cases():
    for method, route in KEY_ROUTES:
        for key in PATH_KEYS:
            yield pytest.param(method, route.format(key), id=f"{method} {route.format(key[:20])}")


@pytest.mark.parametrize(("method", "path"), list(path_cases()))
def test_hostile_flag_key_in_the_path_is_never_a_server_error(everything, method, path):
    bodies = {"patch": {"enabled": False, "reason": "r"}, "post": {"kind": "allow", "user_ids": ["u"]},
              "delete": {"user_ids": ["u"]}}
    body = {"context": {"targetingKey": "u"}} if path.startswith("/ofrep/") else bodies.get(method)
    response = everything.request(method, path, body)
    assert_answered_in_json(response)
    assert response.status_code in (400, 404), response.content[:200]  # no such flag, whatever the key


HEADERS = [
    ("patch", DETAIL, "HTTP_IF_MATCH", ['"abc"', "*", "", 'W/"', '"' + "9" * 40 + '"', "1, 2"]),
    ("post", "/ofrep/v1/evaluate/flags", "HTTP_IF_NONE_MATCH", ["*", "", ",,,", 'W/"x"', "x" * 5000]),
    ("get", "/api/v1/flags", "HTTP_AUTHORIZATION", ["Bearer", "Bearer  ", "bearer x", "Bearer " + "x" * 10000,
                                                     "Bearer ra_\x7f", "Bearer \xe9\xe9"]),
    ("get", "/api/v1/flags", "CONTENT_LENGTH", ["abc", "-1", "9" * 30]),
]


@pytest.mark.parametrize(("method", "path", "header", "value"),
                         [(m, p, h, v) for m, p, h, values in HEADERS for v in values])
def test_malformed_header_is_never_a_server_error(everything, method, path, header, value):
    extra = {header: value}
    if header != "HTTP_AUTHORIZATION":
        extra["HTTP_AUTHORIZATION"] = f"Bearer {everything.secret}"
    body = b'{"enabled": true, "reason": "r"}' if method == "patch" else b'{"context": {"targetingKey": "u"}}'
    if method == "get":
        body = b""
    response = everything.client.generic(method.upper(), path, body, content_type="application/json", **extra)
    assert_answered_in_json(response)
