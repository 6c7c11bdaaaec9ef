"""The management API (scope `manage`): flags, PATCH with optimistic locking, allow/deny lists, the audit log,
the OpenAPI document; and, for every route, hostile input that must never produce a server error."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern
from django.urls.resolvers import RoutePattern
from django.utils import timezone

from api.urls import OFREP_FALLBACK, urlpatterns
from flags import services
from flags.models import AuditEntry, Flag, Source, UserOverride

pytestmark = pytest.mark.django_db

FLAG = "patch_mode_enabled"
DETAIL = f"/api/v1/flags/{FLAG}"
OVERRIDES = f"/api/v1/flags/{FLAG}/overrides"
AUDIT = "/api/v1/audit"
KEY_NAME = "ops-bot"
ON_SQLITE = not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


@pytest.fixture(autouse=True)
def keep_the_test_transaction(monkeypatch):
    # The snapshot calls close_old_connections() before it reloads, as a long-running server process must.
    # Inside a test's transaction (autocommit off) Django would take that as a reason to close the very
    # connection holding the transaction, so the tests keep it.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)


@pytest.fixture
def secret(make_key) -> str:
    return make_key(KEY_NAME, "manage")


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


@pytest.fixture
def api(client, secret) -> Api:
    return Api(client, secret)


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


# --- GET /api/v1/flags and /api/v1/flags/{key} ----------------------------------------------------------


def test_flag_list_shows_every_flag_with_its_state(api, flag, make_flag, actor):
    make_flag("beta_search")
    services.flag_set_rollout(flag="beta_search", percentage="12.5", enabled=True, actor=actor, source=Source.CLI)
    add(actor, "vip", "allow", "beta_search")
    add(actor, "blocked", "deny", "beta_search")
    add(actor, "blocked-2", "deny", "beta_search")
    response = api.get("/api/v1/flags")
    assert response.status_code == 200
    results = {item["key"]: item for item in response.json()["results"]}
    assert set(results) == {FLAG, "beta_search"}
    for key, item in results.items():
        db = Flag.objects.get(key=key)
        assert (item["enabled"], item["rollout_percentage"], item["version"]) == (
            db.enabled, float(db.rollout_percentage), db.version)
        assert item["allow_count"] == UserOverride.objects.filter(flag=db, kind="allow").count()
        assert item["deny_count"] == UserOverride.objects.filter(flag=db, kind="deny").count()
    assert (results["beta_search"]["rollout_percentage"], results["beta_search"]["allow_count"],
            results["beta_search"]["deny_count"]) == (12.5, 1, 2)


@override_settings(SNAPSHOT_CHECK_INTERVAL=3600)  # no periodic snapshot check among the queries counted
def test_flag_list_runs_the_same_number_of_queries_for_any_number_of_flags(api, flag, make_flag, actor,
                                                                          django_assert_max_num_queries):
    add(actor, "vip", "allow")
    assert api.get("/api/v1/flags").status_code == 200  # the first request may do one-off work (the key's use)
    with CaptureQueriesContext(connection) as one_flag:
        assert len(api.get("/api/v1/flags").json()["results"]) == 1
    for n in range(8):
        make_flag(f"more_flag_{n}")
        add(actor, f"user-{n}", "deny", f"more_flag_{n}")
    with django_assert_max_num_queries(len(one_flag)):
        results = api.get("/api/v1/flags").json()["results"]
    assert len(results) == 9
    assert {item["key"]: (item["allow_count"], item["deny_count"]) for item in results}["more_flag_3"] == (0, 1)


def test_flag_detail_has_an_etag_of_its_version_in_quotes(api, flag, actor):
    services.flag_set_rollout(flag=FLAG, percentage=5, enabled=True, actor=actor, source=Source.CLI)
    response = api.get(DETAIL)
    assert response.status_code == 200
    body = response.json()
    version = Flag.objects.get(key=FLAG).version
    assert response["ETag"] == f'"{version}"'
    assert (body["key"], body["enabled"], body["rollout_percentage"], body["version"]) == (FLAG, True, 5.0, version)


def test_unknown_flag_detail_is_404(api, flag):
    response = api.get("/api/v1/flags/no_such_flag")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/flags", DETAIL, OVERRIDES, AUDIT])
def test_management_reads_need_a_manage_key(client, flag, make_key, path):
    secrets = [make_key(f"k-{scopes.replace(',', '-')}", scopes) for scopes in ("evaluate", "ingest",
                                                                                 "evaluate,ingest")]
    assert Api(client, None).get(path).status_code == 401
    for other in secrets:
        response = Api(client, other).get(path)
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"


# --- PATCH /api/v1/flags/{key} ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [{"enabled": True}, {"enabled": True, "reason": ""},
                                     {"enabled": True, "reason": "   "}, {"enabled": True, "reason": None},
                                     {"rollout_percentage": 50, "reason": 5},
                                     {"rollout_percentage": 50, "reason": ["why"]}])
def test_patch_without_a_reason_is_400_naming_reason_and_changes_nothing(api, flag, payload):
    before = state()
    assert_400(api.patch(DETAIL, payload), "reason")
    assert state() == before


def test_patch_changes_enabled_and_rollout_and_writes_one_api_audit_entry(api, flag):
    before = state()
    response = api.patch(DETAIL, {"enabled": True, "rollout_percentage": 25, "reason": "week 1"})
    assert response.status_code == 200
    db = Flag.objects.get(key=FLAG)
    assert (db.enabled, float(db.rollout_percentage), db.version) == (True, 25.0, before[0] + 1)
    body = response.json()
    assert (body["enabled"], body["rollout_percentage"], body["version"]) == (True, 25.0, db.version)
    assert response["ETag"] == f'"{db.version}"'
    assert AuditEntry.objects.count() == before[3] + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.source, entry.actor, entry.actor_kind) == ("api", KEY_NAME, "api_key")
    assert (entry.flag_key, entry.reason, entry.flag_version) == (FLAG, "week 1", db.version)
    assert (entry.before["enabled"], entry.after["enabled"]) == (False, True)
    assert entry.after["rollout_percentage"] == "25.00"


def test_patch_with_only_enabled_flips_the_kill_switch(api, flag):
    assert api.patch(DETAIL, {"enabled": True, "reason": "go"}).status_code == 200
    assert api.patch(DETAIL, {"enabled": False, "reason": "stop"}).status_code == 200
    assert Flag.objects.get(key=FLAG).enabled is False
    actions = list(AuditEntry.objects.filter(flag_key=FLAG, source="api").order_by("id").values_list("action",
                                                                                                        flat=True))
    assert actions == ["enable", "disable"]


def test_patch_changes_are_seen_by_evaluation(api, flag, make_key, django_capture_on_commit_callbacks):
    evaluate_secret = make_key("svc", "evaluate")
    user = {"context": {"targetingKey": "user_1"}}  # bucket 155 (shared vectors)
    ofrep = f"/ofrep/v1/evaluate/flags/{FLAG}"
    assert Api(api.client, evaluate_secret).post(ofrep, user).json()["reason"] == "DISABLED"
    with django_capture_on_commit_callbacks(execute=True):
        assert api.patch(DETAIL, {"enabled": True, "rollout_percentage": 1.56, "reason": "r"}).status_code == 200
    assert Api(api.client, evaluate_secret).post(ofrep, user).json()["value"] is True
    with django_capture_on_commit_callbacks(execute=True):
        assert api.patch(DETAIL, {"rollout_percentage": 1.55, "reason": "r"}).status_code == 200
    assert Api(api.client, evaluate_secret).post(ofrep, user).json()["value"] is False


@pytest.mark.parametrize("header", ['"{v}"', 'W/"{v}"', "{v}"])
def test_patch_with_if_match_of_the_current_version_applies(api, flag, header):
    version = Flag.objects.get(key=FLAG).version
    response = api.patch(DETAIL, {"enabled": True, "reason": "r"}, HTTP_IF_MATCH=header.format(v=version))
    assert response.status_code == 200
    assert Flag.objects.get(key=FLAG).version == version + 1


def test_patch_with_a_stale_if_match_is_409_with_current_state_and_changes_nothing(api, flag, actor):
    stale = Flag.objects.get(key=FLAG).version
    services.flag_set_rollout(flag=FLAG, percentage=10, enabled=True, actor=actor, source=Source.CLI)
    before = state()
    response = api.patch(DETAIL, {"rollout_percentage": 90, "reason": "raise"}, HTTP_IF_MATCH=f'"{stale}"')
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "conflict"
    assert body["current"] == services.flag_state(Flag.objects.get(key=FLAG))
    assert (body["current"]["version"], body["current"]["rollout_percentage"]) == (stale + 1, "10.00")
    assert state() == before


def test_patch_with_a_stale_expected_version_is_409_and_changes_nothing(api, flag, actor):
    stale = Flag.objects.get(key=FLAG).version
    services.flag_set_rollout(flag=FLAG, percentage=10, enabled=True, actor=actor, source=Source.CLI)
    before = state()
    response = api.patch(DETAIL, {"enabled": False, "reason": "stop", "expected_version": stale})
    assert response.status_code == 409
    assert response.json()["current"] == services.flag_state(Flag.objects.get(key=FLAG))
    assert state() == before


def test_patch_with_the_current_expected_version_applies(api, flag):
    version = Flag.objects.get(key=FLAG).version
    response = api.patch(DETAIL, {"enabled": True, "reason": "go", "expected_version": version})
    assert response.status_code == 200
    assert response.json()["version"] == version + 1


@pytest.mark.parametrize(("payload", "headers", "field"), [
    ({"expected_version": 0}, {}, "expected_version"),
    ({"expected_version": -3}, {}, "expected_version"),
    ({"expected_version": "1"}, {}, "expected_version"),
    ({"expected_version": True}, {}, "expected_version"),
    ({"expected_version": 1.5}, {}, "expected_version"),
    ({}, {"HTTP_IF_MATCH": '"abc"'}, "If-Match"),
    ({"expected_version": 2}, {"HTTP_IF_MATCH": '"1"'}, "expected_version"),
])
def test_patch_with_a_malformed_version_is_400_and_changes_nothing(api, flag, payload, headers, field):
    before = state()
    assert_400(api.patch(DETAIL, {"enabled": True, "reason": "r", **payload}, **headers), field)
    assert state() == before


def test_patch_with_a_superscript_digit_if_match_is_400(api, flag):
    # str.isdigit() accepts '²', int() does not: this used to be a 500.
    before = state()
    assert_400(api.patch(DETAIL, {"enabled": True, "reason": "r"}, HTTP_IF_MATCH='"²"'), "If-Match")
    assert state() == before


@pytest.mark.parametrize("value", [-1, 100.01, 101, 10.555, "ten", "", None, True, [50], {"value": 50}, "NaN",
                                   "Infinity", 1e300])
def test_patch_with_a_bad_percentage_is_400_naming_rollout_percentage(api, flag, value):
    before = state()
    assert_400(api.patch(DETAIL, {"rollout_percentage": value, "reason": "r"}), "rollout_percentage")
    assert state() == before


@pytest.mark.parametrize("raw", [b'{"rollout_percentage": NaN, "reason": "r"}',
                                 b'{"rollout_percentage": 1e400, "reason": "r"}',
                                 b'{"rollout_percentage": -Infinity, "reason": "r"}'])
def test_patch_with_a_non_finite_percentage_is_400(api, flag, raw):
    before = state()
    assert_400(api.patch(DETAIL, raw), "rollout_percentage")
    assert state() == before


@pytest.mark.parametrize("value", ["true", 1, 0, None, [True]])
def test_patch_with_a_non_boolean_enabled_is_400_naming_enabled(api, flag, value):
    before = state()
    assert_400(api.patch(DETAIL, {"enabled": value, "reason": "r"}), "enabled")
    assert state() == before


@pytest.mark.parametrize("name", ["salt", "bucketing", "name", "key", "version", "Enabled", "rollout"])
def test_patch_with_an_unknown_field_is_400_naming_it_and_changes_nothing(api, flag, name):
    before = state()
    body = assert_400(api.patch(DETAIL, {"enabled": True, "reason": "r", name: "x"}), name)
    assert body["fields"][name] == ["unknown field"]
    assert state() == before


def test_patch_without_any_change_field_is_400(api, flag):
    before = state()
    assert_400(api.patch(DETAIL, {"reason": "nothing to say"}), "body")
    assert state() == before


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"enabled"', b"null", b"\xff\xfe"])
def test_patch_with_a_body_that_is_no_json_object_is_400(api, flag, raw):
    before = state()
    response = api.patch(DETAIL, raw)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_json", "validation_failed")
    assert state() == before


def test_patch_with_a_nul_in_the_reason_is_400_and_changes_nothing(api, flag):
    # PostgreSQL cannot store NUL in text: refused for every database alike.
    before = state()
    assert_400(api.patch(DETAIL, {"enabled": True, "reason": "why\x00not"}), "reason")
    assert state() == before


@pytest.mark.parametrize("raw", [b'{"enabled": true, "reason": "\\ud800"}',
                                 b'{"enabled": true, "reason": "\xed\xa0\x80"}'])
def test_patch_with_a_lone_surrogate_is_400_invalid_json_and_changes_nothing(api, flag, raw):
    before = state()
    response = api.patch(DETAIL, raw)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert state() == before


def test_patch_with_an_escaped_surrogate_pair_in_the_reason_is_stored_as_the_character(api, flag):
    response = api.patch(DETAIL, b'{"enabled": true, "reason": "ship it \\ud83d\\ude80"}')
    assert response.status_code == 200
    assert AuditEntry.objects.latest("id").reason == "ship it \U0001f680"


def test_patch_of_an_unknown_flag_is_404(api, flag):
    response = api.patch("/api/v1/flags/no_such_flag", {"enabled": True, "reason": "r"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_patch_with_an_evaluate_only_key_is_403_and_changes_nothing(client, flag, make_key):
    before = state()
    response = Api(client, make_key("svc", "evaluate")).patch(DETAIL, {"enabled": True, "reason": "r"})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert state() == before


def test_patch_without_a_key_is_401_and_changes_nothing(client, flag):
    before = state()
    response = Api(client, None).patch(DETAIL, {"enabled": True, "reason": "r"})
    assert response.status_code == 401
    assert state() == before


def test_patch_over_the_size_limit_is_413_and_changes_nothing(api, flag, settings):
    settings.API_MAX_BODY_BYTES = 1000
    before = state()
    response = api.patch(DETAIL, {"enabled": True, "reason": "x" * 2000})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert state() == before


@pytest.mark.parametrize(("method", "path"), [("put", DETAIL), ("post", DETAIL), ("delete", DETAIL),
                                              ("post", "/api/v1/flags"), ("put", OVERRIDES), ("post", AUDIT)])
def test_wrong_method_on_a_management_endpoint_is_405_json(api, flag, method, path):
    response = api.request(method, path, {})
    assert response.status_code == 405
    assert response["Allow"]
    assert response.json()["error"] == "method_not_allowed"


# --- overrides --------------------------------------------------------------------------------------------


def test_post_overrides_reports_added_already_listed_duplicates_and_conflicts(api, flag, actor):
    add(actor, "carol", "allow")
    add(actor, "dave", "deny")
    before = state()
    response = api.post(OVERRIDES, {"kind": "allow", "user_ids": ["alice", "bob", "bob", "carol", "dave"],
                                    "note": "beta testers", "reason": "beta"})
    assert response.status_code == 200
    body = response.json()
    assert (body["added"], body["already_listed"], body["duplicates"]) == (2, 1, 1)
    assert body["conflicts"] == [{"user_id": "dave", "list": "deny"}]
    lists = dict(UserOverride.objects.filter(flag__key=FLAG).values_list("user_id", "kind"))
    assert lists == {"alice": "allow", "bob": "allow", "carol": "allow", "dave": "deny"}  # dave not moved
    assert body["version"] == Flag.objects.get(key=FLAG).version == before[0] + 1
    assert AuditEntry.objects.count() == before[3] + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.source, entry.actor, entry.actor_kind, entry.reason) == ("api", KEY_NAME, "api_key", "beta")
    assert sorted(entry.after["added"]) == ["alice", "bob"]
    alice = UserOverride.objects.get(flag__key=FLAG, user_id="alice")
    assert (alice.note, alice.added_by) == ("beta testers", KEY_NAME)


def test_post_overrides_that_change_nothing_write_no_audit_entry(api, flag, actor):
    add(actor, "carol", "allow")
    before = state()
    body = api.post(OVERRIDES, {"kind": "allow", "user_ids": ["carol"]}).json()
    assert (body["added"], body["already_listed"]) == (0, 1)
    assert state() == before


def test_posted_overrides_take_effect_in_evaluation(api, flag, actor, make_key, django_capture_on_commit_callbacks):
    services.flag_set_rollout(flag=FLAG, percentage=0, enabled=True, actor=actor, source=Source.CLI)
    evaluator = Api(api.client, make_key("svc", "evaluate"))
    url = f"/api/v1/flags/{FLAG}/evaluate"
    assert evaluator.get(url, {"user_id": "alice"}).json()["reason"] == "OUT_OF_ROLLOUT"
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(OVERRIDES, {"kind": "allow", "user_ids": ["alice"]}).status_code == 200
    assert evaluator.get(url, {"user_id": "alice"}).json()["reason"] == "ALLOW_LIST"


@pytest.mark.parametrize(("user_ids", "index"), [
    (["alice", 7], 1),
    ([None, "alice"], 0),
    (["alice", "bob", "x" * 256], 2),
    (["alice", "a\x00b"], 1),
    ([["alice"]], 0),
    (["alice", {"id": "bob"}, "carol"], 1),
])
def test_post_overrides_with_an_invalid_id_is_400_naming_its_index_and_writes_nothing(api, flag, user_ids, index):
    before = state()
    body = assert_400(api.post(OVERRIDES, {"kind": "allow", "user_ids": user_ids}), f"user_ids[{index}]")
    assert list(body["fields"]) == [f"user_ids[{index}]"]
    assert state() == before


@pytest.mark.parametrize(("payload", "field"), [
    ({"kind": "allow"}, "user_ids"),
    ({"kind": "allow", "user_ids": []}, "user_ids"),
    ({"kind": "allow", "user_ids": "alice,bob"}, "user_ids"),
    ({"user_ids": ["alice"]}, "kind"),
    ({"kind": "block", "user_ids": ["alice"]}, "kind"),
    ({"kind": ["allow"], "user_ids": ["alice"]}, "kind"),
    ({"kind": "allow", "user_ids": ["alice"], "note": 5}, "note"),
    ({"kind": "allow", "user_ids": ["alice"], "note": "n" * 501}, "note"),
    ({"kind": "allow", "user_ids": ["alice"], "reason": ["r"]}, "reason"),
    ({"kind": "allow", "user_ids": ["alice"], "users": ["bob"]}, "users"),
])
def test_post_overrides_with_bad_fields_is_400_naming_the_field_and_writes_nothing(api, flag, payload, field):
    before = state()
    assert_400(api.post(OVERRIDES, payload), field)
    assert state() == before


@pytest.mark.parametrize("field", ["note", "reason"])
def test_post_overrides_with_a_nul_in_free_text_is_400_and_writes_nothing(api, flag, field):
    before = state()
    assert_400(api.post(OVERRIDES, {"kind": "allow", "user_ids": ["alice"], field: "a\x00b"}), field)
    assert state() == before


@pytest.mark.parametrize("raw", [b'{"kind": "allow", "user_ids": ["\\udc80"]}',
                                 b'{"kind": "allow", "user_ids": ["\xed\xa0\x80"]}'])
def test_post_overrides_with_a_lone_surrogate_is_400_and_writes_nothing(api, flag, raw):
    before = state()
    response = api.post(OVERRIDES, raw)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert state() == before


def test_overrides_of_an_unknown_flag_are_404(api, flag):
    path = "/api/v1/flags/no_such_flag/overrides"
    before = AuditEntry.objects.count()
    assert api.get(path).status_code == 404
    assert api.post(path, {"kind": "allow", "user_ids": ["alice"]}).status_code == 404
    assert api.delete(path, {"user_ids": ["alice"]}).status_code == 404
    assert AuditEntry.objects.count() == before


def test_get_overrides_pages_newest_first_with_next_cursor(api, flag, actor):
    users = [f"user_{i}" for i in range(5)]
    for user in users:
        add(actor, user)
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        body = api.get(OVERRIDES, query).json()
        seen += [item["user_id"] for item in body["results"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == users[::-1]
    assert pages == 3
    assert api.get(OVERRIDES).json()["next_cursor"] is None


def test_get_overrides_filters_by_kind(api, flag, actor):
    for user in ("a1", "a2"):
        add(actor, user, "allow")
    for user in ("d1", "d2", "d3"):
        add(actor, user, "deny")
    deny = api.get(OVERRIDES, {"kind": "deny"}).json()["results"]
    assert [item["user_id"] for item in deny] == ["d3", "d2", "d1"]
    assert {item["kind"] for item in deny} == {"deny"}
    allow = api.get(OVERRIDES, {"kind": "allow"}).json()["results"]
    assert [item["user_id"] for item in allow] == ["a2", "a1"]
    assert len(api.get(OVERRIDES).json()["results"]) == 5


@pytest.mark.parametrize(("query", "field"), [({"kind": "block"}, "kind"), ({"limit": 0}, "limit"),
                                              ({"limit": 1001}, "limit"), ({"limit": "ten"}, "limit"),
                                              ({"limit": -1}, "limit"), ({"cursor": "abc"}, "cursor"),
                                              ({"cursor": -5}, "cursor")])
def test_get_overrides_with_bad_query_is_400_naming_it(api, flag, query, field):
    assert_400(api.get(OVERRIDES, query), field)


@pytest.mark.parametrize("name", ["limit", "cursor"])
def test_get_overrides_with_a_superscript_digit_page_parameter_is_400(api, flag, name):
    assert_400(api.get(OVERRIDES, {name: "²"}), name)


def test_delete_overrides_removes_and_reports_not_listed_with_one_audit_entry(api, flag, actor):
    for user in ("alice", "bob"):
        add(actor, user, "allow")
    add(actor, "dave", "deny")
    before = state()
    response = api.delete(OVERRIDES, {"kind": "allow", "user_ids": ["alice", "zed", "dave"], "reason": "done"})
    assert response.status_code == 200
    body = response.json()
    assert (body["removed"], body["not_listed"]) == (1, 1)
    assert body["conflicts"] == [{"user_id": "dave", "list": "deny"}]
    assert dict(UserOverride.objects.filter(flag__key=FLAG).values_list("user_id", "kind")) == {"bob": "allow",
                                                                                                 "dave": "deny"}
    assert body["version"] == Flag.objects.get(key=FLAG).version == before[0] + 1
    assert AuditEntry.objects.count() == before[3] + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.source, entry.actor, entry.actor_kind, entry.action) == ("api", KEY_NAME, "api_key",
                                                                             "overrides_bulk_remove")


def test_delete_overrides_without_kind_removes_from_either_list(api, flag, actor):
    add(actor, "alice", "allow")
    add(actor, "dave", "deny")
    body = api.delete(OVERRIDES, {"user_ids": ["alice", "dave"]}).json()
    assert (body["removed"], body["conflicts"]) == (2, [])
    assert not UserOverride.objects.filter(flag__key=FLAG).exists()


@pytest.mark.parametrize(("payload", "field"), [({"user_ids": ["alice", 3]}, "user_ids[1]"),
                                                ({"user_ids": []}, "user_ids"),
                                                ({"kind": "both", "user_ids": ["alice"]}, "kind"),
                                                ({"user_ids": ["alice"], "note": "n"}, "note")])
def test_delete_overrides_with_bad_input_is_400_and_removes_nothing(api, flag, actor, payload, field):
    add(actor, "alice", "allow")
    before = state()
    assert_400(api.delete(OVERRIDES, payload), field)
    assert state() == before


# --- GET /api/v1/audit ------------------------------------------------------------------------------------


def change(actor, percentage, flag: str = FLAG) -> None:
    services.flag_set_rollout(flag=flag, percentage=percentage, actor=actor, source=Source.CLI)


def test_audit_is_newest_first(api, flag, actor):
    for percentage in (1, 2, 3):
        change(actor, percentage)
    results = api.get(AUDIT).json()["results"]
    ids = [item["id"] for item in results]
    assert ids == sorted(ids, reverse=True)
    assert ids == list(AuditEntry.objects.order_by("-id").values_list("id", flat=True))
    assert results[0]["after"]["rollout_percentage"] == "3.00"
    assert results[0]["flag_version"] == Flag.objects.get(key=FLAG).version


def test_audit_filters_by_flag(api, flag, make_flag, actor):
    make_flag("beta_search")
    change(actor, 5, "beta_search")
    change(actor, 7)
    results = api.get(AUDIT, {"flag": "beta_search"}).json()["results"]
    assert results and {item["flag"] for item in results} == {"beta_search"}
    assert len(results) == AuditEntry.objects.filter(flag_key="beta_search").count() == 2


def test_audit_of_an_unknown_flag_is_404(api, flag):
    response = api.get(AUDIT, {"flag": "no_such_flag"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_audit_since_and_until_split_at_a_moment(api, flag, actor):
    change(actor, 1)
    early = set(AuditEntry.objects.values_list("id", flat=True))
    time.sleep(0.01)
    cut = timezone.now()
    time.sleep(0.01)
    change(actor, 2)
    change(actor, 3)
    late = set(AuditEntry.objects.values_list("id", flat=True)) - early
    assert len(late) == 2
    since = api.get(AUDIT, {"since": cut.isoformat()}).json()["results"]
    until = api.get(AUDIT, {"until": cut.isoformat()}).json()["results"]
    assert {item["id"] for item in since} == late
    assert {item["id"] for item in until} == early
    both = api.get(AUDIT, {"since": cut.isoformat(), "until": timezone.now().isoformat()}).json()["results"]
    assert {item["id"] for item in both} == late


def test_audit_since_takes_a_z_suffix_and_a_naive_time_as_utc(api, flag, actor):
    change(actor, 1)
    future = (timezone.now() + timedelta(hours=1)).astimezone(UTC)
    assert api.get(AUDIT, {"since": future.strftime("%Y-%m-%dT%H:%M:%SZ")}).json()["results"] == []
    assert api.get(AUDIT, {"since": future.strftime("%Y-%m-%dT%H:%M:%S")}).json()["results"] == []
    past = future - timedelta(hours=2)
    results = api.get(AUDIT, {"since": past.strftime("%Y-%m-%dT%H:%M:%SZ")}).json()["results"]
    assert len(results) == AuditEntry.objects.count() == 2  # the flag's creation and the change


@pytest.mark.parametrize(("query", "field"), [
    ({"since": "yesterday"}, "since"),
    ({"since": "2026-02-30T00:00:00Z"}, "since"),
    ({"since": "2026-01-01T00:00:00+25:00"}, "since"),
    ({"until": "26/11/2026"}, "until"),
    ({"since": "2026-11-27T00:00:00Z", "until": "2026-11-26T00:00:00Z"}, "since"),
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"cursor": "next"}, "cursor"),
])
def test_audit_with_a_bad_filter_is_400_naming_it(api, flag, query, field):
    assert_400(api.get(AUDIT, query), field)


@pytest.mark.parametrize(("query", "field"), [({"since": "0001-01-01T00:00:00+14:00"}, "since"),
                                              ({"until": "9999-12-31T23:59:59-14:00"}, "until")])
def test_audit_with_a_date_at_the_edge_of_the_calendar_is_400_naming_it(api, flag, query, field):
    # Shifted to UTC these leave the calendar (year 0 or 10000): this used to be a 500 on SQLite.
    assert_400(api.get(AUDIT, query), field)


def test_audit_flag_filter_with_a_nul_is_an_unknown_flag(api, flag):
    response = api.get(AUDIT, {"flag": "patch\x00mode"})
    assert response.status_code in (400, 404)
    assert response.json()["error"] in ("not_found", "validation_failed")


@pytest.mark.parametrize("name", ["limit", "cursor"])
def test_audit_with_a_superscript_digit_page_parameter_is_400(api, flag, name):
    assert_400(api.get(AUDIT, {name: "²"}), name)


def test_audit_pages_with_limit_and_cursor_cover_every_entry_once(api, flag, actor):
    for percentage in range(1, 8):
        change(actor, percentage)
    expected = list(AuditEntry.objects.order_by("-id").values_list("id", flat=True))
    assert len(expected) == 8
    seen, cursor = [], None
    while True:
        query = {"limit": 3} if cursor is None else {"limit": 3, "cursor": cursor}
        body = api.get(AUDIT, query).json()
        assert len(body["results"]) <= 3
        seen += [item["id"] for item in body["results"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected


def test_audit_entries_carry_who_what_and_why(api, flag):
    api.patch(DETAIL, {"rollout_percentage": 4, "reason": "ramp"})
    item = api.get(AUDIT, {"limit": 1}).json()["results"][0]
    assert (item["flag"], item["actor"], item["actor_kind"], item["source"], item["reason"]) == (
        FLAG, KEY_NAME, "api_key", "api", "ramp")
    assert (item["before"]["rollout_percentage"], item["after"]["rollout_percentage"]) == ("0.00", "4.00")


# --- the OpenAPI document ---------------------------------------------------------------------------------


def documented_path(pattern: URLPattern) -> str:
    """A URL pattern of api/urls.py as an OpenAPI path: api/v1/flags/<str:key> -> /api/v1/flags/{key}."""
    route = str(pattern.pattern)
    if isinstance(pattern.pattern, RoutePattern):
        return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
    route = route.removeprefix("^").removeprefix("(?:/)?").removesuffix("$").removesuffix("/?")
    return "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)


# The OFREP fallback answers what no route names (tests/api/test_ofrep_conformance.py); it is no operation.
ROUTES = sorted(documented_path(p) for p in urlpatterns if p.name != OFREP_FALLBACK)


def test_route_list_read_from_api_urls_is_clean():
    assert "/api/v1/flags/{key}/overrides" in ROUTES
    assert "/ofrep/v1/evaluate/flags/{key}" in ROUTES and "/ofrep/v1/evaluate/flags" in ROUTES
    assert len(set(ROUTES)) == len(ROUTES)
    for route in ROUTES:
        assert route.startswith(("/api/v1/", "/ofrep/v1/"))
        assert not re.search(r"[\\^$?()\[\]<>]", route), route  # nothing of a regex or a converter left


def test_openapi_is_valid_json_of_version_3_1(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    document = json.loads(response.content)
    assert document["openapi"] == "3.1.0"
    assert document["paths"] and document["info"]["title"]


@pytest.mark.parametrize("route", ROUTES)
def test_openapi_documents_every_route(client, route):
    assert route in client.get("/api/v1/openapi.json").json()["paths"]


def test_every_documented_operation_is_routed(client, flag, make_key):
    everything = Api(client, make_key("all", "evaluate,ingest,manage"))
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method in operations:
            response = everything.request(method, path.replace("{key}", FLAG), {})
            assert response.status_code not in (404, 405), (method, path, response.status_code)


def test_every_authenticated_operation_documents_the_outage_503_with_retry_after(client):
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    checked = 0
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "401" not in operation["responses"]:
                continue  # the OpenAPI document itself needs no key and no database
            answer = operation["responses"].get("503")
            assert answer is not None, (method, path)
            assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer", (method, path)
            checked += 1
    assert checked >= 10


def test_openapi_refs_resolve(client):
    document = client.get("/api/v1/openapi.json").json()
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document)))
    assert refs and refs <= set(document["components"]["schemas"])


# --- hostile input at every route: never a 500, always a JSON answer -------------------------------------

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


