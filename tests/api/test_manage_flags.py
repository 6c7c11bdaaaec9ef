"""The management API's flags (scope `manage`): the list, the detail with its ETag, and PATCH with optimistic
locking (If-Match or expected_version, 409 on a stale version) and its validation."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from flags import services
from flags.models import AuditEntry, Flag, Source, UserOverride
from tests.api.manage import DETAIL, FLAG, KEY_NAME, Api, add, assert_400, state

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_transaction")]


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


def test_patch_over_the_size_limit_is_413_and_changes_nothing(api, flag, settings):
    settings.API_MAX_BODY_BYTES = 1000
    before = state()
    response = api.patch(DETAIL, {"enabled": True, "reason": "x" * 2000})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert state() == before
