"""The management API of targeting (scope `manage`): a flag's rules (GET/PUT /api/v1/flags/{key}/rules) and
segments (/api/v1/segments), written through flags.services (validated, versioned, one audit entry per change),
their entries in the audit log, and what the next evaluation sees."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from flags import services
from flags.models import AuditEntry, Flag, Segment, SegmentMember, Source
from flags.services.targeting import parse_rules
from tests.api.manage import AUDIT, DETAIL, FLAG, KEY_NAME, Api, assert_400

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_transaction")]

RULES = f"/api/v1/flags/{FLAG}/rules"
SEGMENTS = "/api/v1/segments"
BETA_PATH = f"{SEGMENTS}/beta"
STAFF = {"id": "staff", "serve": "on",
         "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]}
OLD_APP = {"id": "old-app", "serve": "off",
           "conditions": [{"attribute": "app_version", "operator": "semver_lt", "values": ["2.0.0"]}]}
BETA_RULE = {"id": "beta", "serve": "percentage", "percentage": 12.5, "segment": "beta", "conditions": []}
NEW_SEGMENT = {"key": "beta", "name": "Beta programme", "description": "early users",
               "conditions": [{"attribute": "plan", "operator": "in", "values": ["pro", "team"]}],
               "included": ["b2", "b1"], "excluded": ["b3"], "reason": "beta opens"}


def put(api: Api, body, **extra):
    return api.request("put", RULES, body, **extra)


def flag_state() -> tuple:
    """Everything a refused rules change must leave alone."""
    flag = Flag.objects.get(key=FLAG)
    return flag.version, flag.rules, AuditEntry.objects.count()


def segments_state() -> tuple:
    """Everything a refused segment change must leave alone."""
    return (sorted(Segment.objects.values_list("key", "name", "description", "conditions", "version")),
            sorted(SegmentMember.objects.values_list("segment__key", "user_id", "kind")),
            AuditEntry.objects.count(), sorted(Flag.objects.values_list("key", "version")))


@pytest.fixture
def beta(db, actor) -> Segment:
    return services.segment_create(key="beta", name="Beta", included=["b1", "b2"], excluded=["b3"], actor=actor,
                                   source=Source.CLI, reason="beta opens")


# --- GET/PUT /api/v1/flags/{key}/rules -----------------------------------------------------------------------


def test_a_flag_without_rules_has_an_empty_list_and_its_version_as_etag(api, flag):
    response = api.get(RULES)
    assert response.status_code == 200
    assert response.json() == {"flag": FLAG, "version": flag.version, "rules": []}
    assert response["ETag"] == f'"{flag.version}"'


def test_put_replaces_the_ordered_rules_and_writes_one_api_audit_entry(api, flag, beta):
    count = AuditEntry.objects.count()
    response = put(api, {"rules": [STAFF, BETA_RULE, OLD_APP], "reason": "dogfood, beta, then old apps off"})
    assert response.status_code == 200, response.content
    stored = Flag.objects.get(key=FLAG)
    assert stored.version == flag.version + 1
    assert response.json() == {"flag": FLAG, "version": stored.version, "rules": [STAFF, BETA_RULE, OLD_APP]}
    assert response["ETag"] == f'"{stored.version}"'
    assert stored.rules == [STAFF, BETA_RULE, OLD_APP]
    assert AuditEntry.objects.count() == count + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.flag_key, entry.action, entry.source, entry.actor, entry.reason, entry.flag_version) == (
        FLAG, "rules_update", "api", KEY_NAME, "dogfood, beta, then old apps off", stored.version)
    assert entry.after == {"rules": [STAFF, BETA_RULE, OLD_APP], "version": stored.version}
    assert api.get(RULES).json()["rules"] == [STAFF, BETA_RULE, OLD_APP]


def test_put_the_rules_read_back_changes_nothing_and_writes_nothing(api, flag):
    put(api, {"rules": [OLD_APP, STAFF], "reason": "order matters"})
    before = flag_state()
    read = api.get(RULES).json()
    response = put(api, {"rules": read["rules"], "reason": "again"}, HTTP_IF_MATCH=f'"{read["version"]}"')
    assert response.status_code == 200
    assert flag_state() == before


def test_put_an_empty_list_removes_every_rule(api, flag):
    put(api, {"rules": [STAFF], "reason": "dogfood"})
    response = put(api, {"rules": [], "reason": "done"})
    assert response.status_code == 200 and response.json()["rules"] == []
    assert Flag.objects.get(key=FLAG).rules == []
    assert AuditEntry.objects.filter(action="rules_update").count() == 2


def test_the_flag_detail_and_list_show_the_rules_as_a_new_key(api, flag):
    put(api, {"rules": [STAFF], "reason": "dogfood"})
    detail = api.get(DETAIL).json()
    assert detail["rules"] == [STAFF]
    assert {"key", "enabled", "rollout_percentage", "version", "allow_count", "deny_count"} <= set(detail)
    (item,) = api.get("/api/v1/flags").json()["results"]
    assert item["rules"] == [STAFF]


@pytest.mark.parametrize("rules", [
    [STAFF, {"id": "bad", "serve": "on",
             "conditions": [{"attribute": "v", "operator": "semver_gte", "values": ["two"]}]}],
    [{"id": "r", "serve": "on", "conditions": [{"attribute": "e", "operator": "matches", "values": ["(x"]}]}],
    [{"id": "r", "serve": "on", "conditions": [{"attribute": "e", "operator": "like", "values": ["x"]}]}],
    [{"id": "r", "serve": "on", "conditions": [{"attribute": "n", "operator": "gt", "values": [5]},
                                                {"attribute": "n", "operator": "lt", "values": [1]}]}],
    [{"id": "r", "serve": "on", "segment": "nobody-made-this"}],
    [{"id": "r", "serve": "on", "segment": {"key": "inline", "included": ["u"]}}],
    [{"id": "r", "serve": "percentage", "percentage": 12.345, "conditions": STAFF["conditions"]}],
    [{"id": "r", "serve": "on", "colour": "red", "conditions": STAFF["conditions"]}],
    [{"id": "r", "serve": "on"}],
    [STAFF, STAFF],
    ["staff"],
    "staff",
    None,
    {"rules": [STAFF]},
])
def test_invalid_rules_are_400_naming_the_rule_and_field_as_the_service_does(api, flag, rules):
    with pytest.raises(ValidationError) as refused:
        parse_rules(rules)
    before = flag_state()
    body = assert_400(put(api, {"rules": rules, "reason": "r"}))
    assert body["fields"] == refused.value.message_dict
    assert flag_state() == before


@pytest.mark.parametrize(("rules", "field"), [
    ([{**STAFF, "id": "st\x00aff"}], "rules[0].id"),
    ([STAFF, {"id": "b", "serve": "on", "segment": "be\x00ta"}], "rules[1].segment"),
    ([{**STAFF, "conditions": [{"attribute": "e", "operator": "in", "values": ["x", "y\x00"]}]}],
     "rules[0].conditions[0].values"),
    ([{**STAFF, "conditions": [{"attribute": "e\x00", "operator": "in", "values": ["x"]}]}],
     "rules[0].conditions[0].attribute"),
])
def test_a_nul_anywhere_in_the_rules_is_400_naming_where(api, flag, rules, field):
    # PostgreSQL stores no NUL: without this refusal it was a 500 there. The core refuses it (flags/targeting.py).
    with pytest.raises(ValidationError) as refused:
        parse_rules(rules)
    before = flag_state()
    body = assert_400(put(api, {"rules": rules, "reason": "r"}))
    assert list(body["fields"]) == [field] and body["fields"] == refused.value.message_dict
    assert flag_state() == before


def test_rules_left_out_are_400_naming_rules(api, flag):
    assert assert_400(put(api, {"reason": "r"}))["fields"] == {"rules": ["must be a list of rules"]}


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"rules": [STAFF], "reason": "r", "priority": 1}, "priority", "unknown field"),
    ({"rules": [STAFF]}, "reason", "is required: say why, it goes into the audit log"),
    ({"rules": [STAFF], "reason": "  "}, "reason", "is required: say why, it goes into the audit log"),
    ({"rules": [STAFF], "reason": "r", "expected_version": "1"}, "expected_version", "must be a positive integer"),
])
def test_put_with_a_bad_body_field_is_400_naming_it_and_changes_nothing(api, flag, body, field, message):
    before = flag_state()
    assert assert_400(put(api, body), field)["fields"][field] == [message]
    assert flag_state() == before


@pytest.mark.parametrize("header", ['"{v}"', 'W/"{v}"', "{v}"])
def test_put_with_if_match_of_the_current_version_applies(api, flag, header):
    response = put(api, {"rules": [STAFF], "reason": "r"}, HTTP_IF_MATCH=header.format(v=flag.version))
    assert response.status_code == 200
    assert response.json()["version"] == flag.version + 1


def test_put_with_a_stale_if_match_is_409_like_the_flag_patch_and_changes_nothing(api, flag, actor):
    stale = flag.version
    services.flag_set_rollout(flag=FLAG, percentage=10, enabled=True, actor=actor, source=Source.CLI)
    before = flag_state()
    response = put(api, {"rules": [STAFF], "reason": "dogfood"}, HTTP_IF_MATCH=f'"{stale}"')
    assert response.status_code == 409
    body = response.json()
    assert set(body) == {"error", "message", "current"} and body["error"] == "conflict"
    assert body["current"] == services.flag_state(Flag.objects.get(key=FLAG))
    assert body["current"]["version"] == stale + 1
    assert flag_state() == before
    # The same shape as the flag PATCH's conflict.
    patch = api.patch(DETAIL, {"enabled": False, "reason": "r"}, HTTP_IF_MATCH=f'"{stale}"').json()
    assert set(patch) == set(body) and patch["current"] == body["current"]


def test_put_with_a_stale_expected_version_in_the_body_is_409(api, flag, actor):
    services.flag_set_rollout(flag=FLAG, percentage=10, actor=actor, source=Source.CLI)
    before = flag_state()
    response = put(api, {"rules": [STAFF], "reason": "r", "expected_version": flag.version})
    assert response.status_code == 409 and response.json()["error"] == "conflict"
    assert flag_state() == before


@pytest.mark.parametrize(("payload", "headers", "field"), [
    ({}, {"HTTP_IF_MATCH": '"abc"'}, "If-Match"),
    ({}, {"HTTP_IF_MATCH": '"²"'}, "If-Match"),
    ({"expected_version": 2}, {"HTTP_IF_MATCH": '"1"'}, "expected_version"),
])
def test_put_with_a_malformed_version_is_400_and_changes_nothing(api, flag, payload, headers, field):
    before = flag_state()
    assert_400(put(api, {"rules": [STAFF], "reason": "r", **payload}, **headers), field)
    assert flag_state() == before


@pytest.mark.parametrize("method", ["get", "put"])
def test_rules_of_an_unknown_flag_are_404(api, flag, method):
    response = api.request(method, "/api/v1/flags/no_such_flag/rules", {"rules": [STAFF], "reason": "r"})
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "unknown flag 'no_such_flag'"}


def test_a_put_of_rules_changes_the_next_ofrep_evaluation(api, flag, actor, make_key,
                                                          django_capture_on_commit_callbacks):
    evaluator = Api(api.client, make_key("svc", "evaluate"))
    ofrep = f"/ofrep/v1/evaluate/flags/{FLAG}"
    context = {"context": {"targetingKey": "user_1", "email": "ana@ourcompany.com"}}
    with django_capture_on_commit_callbacks(execute=True):
        services.flag_set_rollout(flag=FLAG, percentage=0, enabled=True, actor=actor, source=Source.CLI)
    assert evaluator.post(ofrep, context).json()["value"] is False
    with django_capture_on_commit_callbacks(execute=True):
        assert put(api, {"rules": [STAFF], "reason": "dogfood"}).status_code == 200
    body = evaluator.post(ofrep, context).json()
    assert (body["value"], body["reason"], body["metadata"]["ruleId"]) == (True, "TARGETING_MATCH", "staff")
    with django_capture_on_commit_callbacks(execute=True):
        assert put(api, {"rules": [], "reason": "done"}).status_code == 200
    assert evaluator.post(ofrep, context).json()["value"] is False


# --- /api/v1/segments ----------------------------------------------------------------------------------------


def test_post_creates_a_segment_and_writes_one_api_audit_entry_of_its_own(api, flag):
    count = AuditEntry.objects.count()
    response = api.post(SEGMENTS, NEW_SEGMENT)
    assert response.status_code == 200, response.content
    body = response.json()
    assert response["ETag"] == '"1"'
    assert {k: body[k] for k in ("key", "name", "description", "conditions", "included", "excluded", "version",
                                 "included_count", "excluded_count")} == {
        "key": "beta", "name": "Beta programme", "description": "early users",
        "conditions": NEW_SEGMENT["conditions"], "included": ["b1", "b2"], "excluded": ["b3"], "version": 1,
        "included_count": 2, "excluded_count": 1}
    segment = Segment.objects.get(key="beta")
    assert set(segment.members.values_list("user_id", "kind")) == {("b1", "included"), ("b2", "included"),
                                                                   ("b3", "excluded")}
    assert AuditEntry.objects.count() == count + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.flag, entry.flag_key, entry.segment_key, entry.action, entry.source, entry.actor,
            entry.reason) == (None, "", "beta", "segment_create", "api", KEY_NAME, "beta opens")


def test_post_with_conditions_only_or_ids_only_is_enough(api, flag):
    assert api.post(SEGMENTS, {"key": "pro", "name": "Pro", "reason": "r",
                               "conditions": NEW_SEGMENT["conditions"]}).status_code == 200
    response = api.post(SEGMENTS, {"key": "vips", "name": "VIPs", "included": ["v1"], "reason": "r"})
    assert response.status_code == 200
    assert (response.json()["conditions"], response.json()["description"]) == ([], "")


@pytest.mark.parametrize(("change", "field"), [
    ({"key": "Beta!"}, "key"),
    ({"key": "a\u0000b"}, "key"),
    ({"key": 7}, "key"),
    ({"name": "  "}, "name"),
    ({"name": 5}, "name"),
    ({"description": "a\u0000b"}, "description"),
    ({"included": ["a", "b"], "excluded": ["b"]}, "excluded"),
    ({"included": ["ok", ""]}, "included[1]"),
    ({"included": "b1,b2"}, "included"),
    ({"included": {"b1": True}}, "included"),
    ({"excluded": None}, "excluded"),
    ({"conditions": [{"attribute": "plan", "operator": "in", "values": []}]}, "conditions[0].values"),
    ({"conditions": [{"attribute": "plan", "operator": "like", "values": ["x"]}]}, "conditions[0].operator"),
    ({"conditions": "plan=pro"}, "conditions"),
    ({"conditions": [{"attribute": "pl\x00an", "operator": "in", "values": ["x"]}]}, "conditions[0].attribute"),
    ({"conditions": None}, "conditions"),
    ({"included": [], "conditions": []}, "conditions"),  # no ids and no conditions: it would match nobody
    ({"members": ["x"]}, "members"),
    ({"reason": ""}, "reason"),
])
def test_post_of_a_bad_segment_is_400_naming_the_field_and_nothing_is_saved(api, flag, change, field):
    before = segments_state()
    assert_400(api.post(SEGMENTS, {**NEW_SEGMENT, **change}), field)
    assert segments_state() == before


def test_post_without_key_or_name_is_400_saying_they_are_required(api, flag):
    body = assert_400(api.post(SEGMENTS, {"included": ["u1"], "reason": "r"}))
    assert body["fields"] == {"key": ["is required"], "name": ["is required"]}


def test_post_of_an_existing_key_is_400_naming_key(api, beta):
    before = segments_state()
    assert_400(api.post(SEGMENTS, NEW_SEGMENT), "key")
    assert segments_state() == before


def test_the_list_shows_every_segment_with_counts_but_not_the_ids(api, beta, actor):
    services.segment_create(key="alpha", name="Alpha", conditions=NEW_SEGMENT["conditions"], actor=actor,
                            source=Source.CLI)
    response = api.get(SEGMENTS)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [item["key"] for item in results] == ["alpha", "beta"]
    assert set(results[1]) == {"key", "name", "description", "conditions", "included_count", "excluded_count",
                               "version", "updated_at"}
    assert (results[1]["included_count"], results[1]["excluded_count"]) == (2, 1)
    assert (results[0]["included_count"], results[0]["excluded_count"], results[0]["conditions"]) == (
        0, 0, NEW_SEGMENT["conditions"])


def test_the_detail_has_the_full_id_lists_and_its_version_as_etag(api, beta):
    response = api.get(BETA_PATH)
    assert response.status_code == 200
    body = response.json()
    assert (body["included"], body["excluded"], body["version"]) == (["b1", "b2"], ["b3"], beta.version)
    assert response["ETag"] == f'"{beta.version}"'


@pytest.mark.parametrize("path", [f"{SEGMENTS}/no-such-segment", f"{SEGMENTS}/a%00b", f"{SEGMENTS}/{'x' * 300}"])
def test_an_unknown_segment_is_404_in_the_apis_error_body(api, flag, path):
    before = segments_state()
    for method, body in (("get", None), ("patch", {"name": "x", "reason": "r"}), ("delete", {"reason": "r"})):
        response = api.request(method, path, body)
        assert response.status_code == 404, (method, response.content)
        assert response.json()["error"] == "not_found"
        assert response.json()["message"].startswith("unknown segment")
    assert segments_state() == before


def test_patch_changes_a_segment_moves_the_flags_using_it_and_writes_one_audit_entry(api, flag, beta, actor):
    services.flag_set_rules(flag=FLAG, rules=[BETA_RULE], actor=actor, source=Source.CLI)
    flag_version = Flag.objects.get(key=FLAG).version
    count = AuditEntry.objects.count()
    response = api.patch(BETA_PATH, {"name": "Beta 2", "included": ["b1", "b4"], "reason": "b2 left"},
                         HTTP_IF_MATCH=f'"{beta.version}"')
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["name"], body["included"], body["excluded"], body["version"]) == (
        "Beta 2", ["b1", "b4"], ["b3"], beta.version + 1)
    assert response["ETag"] == f'"{beta.version + 1}"'
    assert Flag.objects.get(key=FLAG).version == flag_version + 1
    assert AuditEntry.objects.count() == count + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.segment_key, entry.action, entry.source, entry.actor, entry.reason) == (
        "beta", "segment_update", "api", KEY_NAME, "b2 left")
    assert entry.after == {"name": "Beta 2", "included": ["b1", "b4"], "version": beta.version + 1,
                           "flags": [FLAG]}


def test_patch_that_changes_nothing_writes_nothing(api, beta):
    before = segments_state()
    response = api.patch(BETA_PATH, {"included": ["b2", "b1"], "reason": "same"})
    assert response.status_code == 200 and response.json()["version"] == beta.version
    assert segments_state() == before


def test_patch_with_a_stale_if_match_is_409_with_the_segments_state_and_changes_nothing(api, beta, actor):
    services.segment_update(segment="beta", name="Renamed", actor=actor, source=Source.CLI)
    before = segments_state()
    response = api.patch(BETA_PATH, {"included": ["b9"], "reason": "r"}, HTTP_IF_MATCH=f'"{beta.version}"')
    assert response.status_code == 409
    body = response.json()
    assert set(body) == {"error", "message", "current"} and body["error"] == "conflict"
    assert (body["current"]["key"], body["current"]["name"], body["current"]["version"],
            body["current"]["included_count"]) == ("beta", "Renamed", beta.version + 1, 2)
    assert segments_state() == before


def test_patch_with_a_stale_expected_version_in_the_body_is_409(api, beta, actor):
    services.segment_update(segment="beta", name="Renamed", actor=actor, source=Source.CLI)
    before = segments_state()
    response = api.patch(BETA_PATH, {"name": "Mine", "reason": "r", "expected_version": beta.version})
    assert response.status_code == 409 and response.json()["error"] == "conflict"
    assert segments_state() == before


@pytest.mark.parametrize(("payload", "headers", "field"), [
    ({"reason": "r"}, {}, "body"),
    ({"name": "x"}, {}, "reason"),
    ({"key": "gamma", "reason": "r"}, {}, "key"),
    ({"name": "x", "reason": "r"}, {"HTTP_IF_MATCH": '"abc"'}, "If-Match"),
    ({"name": "x", "reason": "r", "expected_version": 0}, {}, "expected_version"),
    ({"name": "x", "reason": "r", "expected_version": 2}, {"HTTP_IF_MATCH": '"1"'}, "expected_version"),
    ({"name": None, "reason": "r"}, {}, "name"),
    ({"conditions": None, "reason": "r"}, {}, "conditions"),
    ({"conditions": [{"attribute": "plan", "operator": "in"}], "reason": "r"}, {}, "conditions[0].values"),
    ({"included": "b1", "reason": "r"}, {}, "included"),
    ({"excluded": ["b1"], "reason": "r"}, {}, "excluded"),  # b1 is included
    ({"included": [], "reason": "r"}, {}, "conditions"),  # nobody left to match
])
def test_patch_with_bad_input_is_400_naming_the_field_and_changes_nothing(api, beta, payload, headers, field):
    before = segments_state()
    assert_400(api.patch(BETA_PATH, payload, **headers), field)
    assert segments_state() == before


def test_patch_of_a_segment_reaches_the_next_ofrep_evaluation(api, flag, beta, actor, make_key,
                                                              django_capture_on_commit_callbacks):
    evaluator = Api(api.client, make_key("svc", "evaluate"))
    ofrep = f"/ofrep/v1/evaluate/flags/{FLAG}"
    with django_capture_on_commit_callbacks(execute=True):
        services.flag_set_rollout(flag=FLAG, percentage=0, enabled=True, actor=actor, source=Source.CLI)
        services.flag_set_rules(flag=FLAG, rules=[{"id": "beta", "serve": "on", "segment": "beta"}], actor=actor,
                                source=Source.CLI)
    assert evaluator.post(ofrep, {"context": {"targetingKey": "b7"}}).json()["value"] is False
    with django_capture_on_commit_callbacks(execute=True):
        assert api.patch(BETA_PATH, {"included": ["b1", "b7"], "reason": "b7 joins"}).status_code == 200
    body = evaluator.post(ofrep, {"context": {"targetingKey": "b7"}}).json()
    assert (body["value"], body["metadata"]["ruleId"]) == (True, "beta")


def test_delete_removes_an_unused_segment_and_writes_one_audit_entry(api, beta):
    count = AuditEntry.objects.count()
    response = api.delete(BETA_PATH, {"reason": "programme over"})
    assert response.status_code == 200
    assert response.json() == {"key": "beta", "deleted": True}
    assert not Segment.objects.exists() and not SegmentMember.objects.exists()
    assert AuditEntry.objects.count() == count + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.segment_key, entry.action, entry.source, entry.reason, entry.before["included"]) == (
        "beta", "segment_delete", "api", "programme over", ["b1", "b2"])
    assert api.get(BETA_PATH).status_code == 404


def test_delete_of_a_segment_in_use_is_400_naming_the_flags(api, flag, beta, actor):
    services.flag_set_rules(flag=FLAG, rules=[BETA_RULE], actor=actor, source=Source.CLI)
    before = segments_state()
    body = assert_400(api.delete(BETA_PATH, {"reason": "r"}), "segment")
    assert FLAG in body["fields"]["segment"][0]
    assert segments_state() == before


@pytest.mark.parametrize(("payload", "field"), [({}, "reason"), ({"reason": "r", "force": True}, "force")])
def test_delete_with_a_bad_body_is_400_and_deletes_nothing(api, beta, payload, field):
    before = segments_state()
    assert_400(api.delete(BETA_PATH, payload), field)
    assert segments_state() == before


# --- who may: a manage key ------------------------------------------------------------------------------------

OPERATIONS = [
    ("get", RULES, None),
    ("put", RULES, {"rules": [STAFF], "reason": "r"}),
    ("get", SEGMENTS, None),
    ("post", SEGMENTS, {**NEW_SEGMENT, "key": "gamma"}),
    ("get", BETA_PATH, None),
    ("patch", BETA_PATH, {"name": "x", "reason": "r"}),
    ("delete", BETA_PATH, {"reason": "r"}),
]


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
def test_without_a_key_it_is_401_and_with_another_scope_403_and_nothing_is_written(client, flag, beta, make_key,
                                                                                   method, path, body):
    others = {scopes: make_key(f"k-{scopes}", scopes) for scopes in ("evaluate", "ingest", "client")}
    before = (flag_state(), segments_state())
    response = Api(client, None).request(method, path, body)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="rolloutadmin"'
    assert response.json()["error"] == "unauthenticated"
    for scopes, secret in others.items():
        response = Api(client, secret).request(method, path, body)
        assert response.status_code == 403, (scopes, response.content)
        assert response.json()["error"] == "forbidden"
    assert (flag_state(), segments_state()) == before


# --- the audit log ---------------------------------------------------------------------------------------------


def test_the_audit_log_shows_segment_entries_with_segment_set_and_flag_empty(api, flag, beta):
    api.patch(BETA_PATH, {"name": "Beta 2", "reason": "rename"})
    put(api, {"rules": [BETA_RULE], "reason": "beta gets 12.5%"})
    results = api.get(AUDIT, {"limit": 3}).json()["results"]
    assert [(item["action"], item["flag"], item["segment"]) for item in results] == [
        ("rules_update", FLAG, None), ("segment_update", "", "beta"), ("segment_create", "", "beta")]
    assert results[1]["flag_version"] == beta.version + 1
    assert (results[1]["actor"], results[1]["source"], results[1]["reason"]) == (KEY_NAME, "api", "rename")


def test_the_audit_log_filters_by_segment_and_keeps_a_deleted_segments_history(api, flag, beta, actor):
    services.segment_create(key="other", name="Other", included=["o1"], actor=actor, source=Source.CLI)
    api.delete(BETA_PATH, {"reason": "over"})
    results = api.get(AUDIT, {"segment": "beta"}).json()["results"]
    assert [item["action"] for item in results] == ["segment_delete", "segment_create"]
    assert {item["segment"] for item in results} == {"beta"}
    assert api.get(AUDIT, {"segment": "never-was"}).json()["results"] == []
    assert api.get(AUDIT, {"segment": "a\x00b"}).json() == {"results": [], "next_cursor": None}


# --- hostile input: never a server error, nothing written when refused -------------------------------------------

HOSTILE = {
    "string": '"text"', "empty_string": '""', "long_string": json.dumps("x" * 100_000), "nul": '"a\\u0000b"',
    "strings": '["user_1", "user_2"]', "numbers": "[1, 2.5, -3]", "object": '{"a": {"b": [1]}}', "null": "null",
    "true": "true", "zero": "0", "big_int": "1" + "0" * 4000, "huge_float": "1e400", "nan": "NaN",
    "deep": "[" * 500 + "]" * 500, "lone_surrogate": '"\\udc80"', "nul_in_list": '["a", "b\\u0000"]',
    "nul_in_key": '{"a\\u0000": 1}',
}
RULE = {"id": "r", "serve": "percentage", "percentage": 5, "conditions": [dict(STAFF["conditions"][0])]}
FIELDS = {
    ("put", RULES): {
        "rules": {"rules": "@", "reason": "r"},
        "rules[0]": {"rules": ["@"], "reason": "r"},
        "rules[0].id": {"rules": [{**RULE, "id": "@"}], "reason": "r"},
        "rules[0].percentage": {"rules": [{**RULE, "percentage": "@"}], "reason": "r"},
        "rules[0].segment": {"rules": [{**RULE, "segment": "@"}], "reason": "r"},
        "rules[0].conditions": {"rules": [{**RULE, "conditions": "@"}], "reason": "r"},
        "rules[0].conditions[0].attribute": {"rules": [{**RULE, "conditions": [
            {"attribute": "@", "operator": "in", "values": ["x"]}]}], "reason": "r"},
        "rules[0].conditions[0].values": {"rules": [{**RULE, "conditions": [
            {"attribute": "a", "operator": "in", "values": "@"}]}], "reason": "r"},
        "rules[0].conditions[0]": {"rules": [{**RULE, "conditions": ["@"]}], "reason": "r"},
        "reason": {"rules": [RULE], "reason": "@"},
        "expected_version": {"rules": [RULE], "reason": "r", "expected_version": "@"},
    },
    ("post", SEGMENTS): {
        name: {**NEW_SEGMENT, "key": "gamma", name: "@"}
        for name in ("key", "name", "description", "conditions", "included", "excluded", "reason")
    } | {"included[0]": {**NEW_SEGMENT, "key": "gamma", "included": ["@"]},
         "conditions[0].attribute": {**NEW_SEGMENT, "key": "gamma", "conditions": [
             {"attribute": "@", "operator": "in", "values": ["x"]}]},
         "conditions[0].values": {**NEW_SEGMENT, "key": "gamma", "conditions": [
             {"attribute": "plan", "operator": "in", "values": "@"}]}},
    ("patch", BETA_PATH): {
        name: {"name": "n", "reason": "r", name: "@"}
        for name in ("name", "description", "conditions", "included", "excluded", "reason", "expected_version")
    },
    ("delete", BETA_PATH): {"reason": {"reason": "@"}},
}
BODIES = ["", "{", "[1, 2]", '"x"', "null", "[" * 10000, '{"a":' * 10000 + "1" + "}" * 10000]


def hostile_cases():
    for (method, path), fields in FIELDS.items():
        for body in BODIES:
            yield pytest.param(method, path, body.encode(), id=f"{method} {path} body={body[:8]}")
        for field, template in fields.items():
            text = json.dumps(template).replace('"@"', "@V@")
            for name, value in HOSTILE.items():
                yield pytest.param(method, path, text.replace("@V@", value).encode(), id=f"{method} {path} "
                                                                                          f"{field}={name}")


@pytest.mark.parametrize(("method", "path", "raw"), list(hostile_cases()))
def test_hostile_input_is_never_a_server_error_and_a_refusal_writes_nothing(api, flag, beta, method, path, raw):
    api.client.raise_request_exception = False
    before = (flag_state(), segments_state())
    response = api.client.generic(method.upper(), path, raw, content_type="application/json",
                                  HTTP_AUTHORIZATION=f"Bearer {api.secret}")
    assert response.status_code < 500, response.content[:300]
    answer = json.loads(response.content)
    if response.status_code == 400:
        assert answer.get("fields") or answer["error"] == "invalid_json", answer
    if response.status_code >= 400:  # a version of 10**4000 is a 409: stale, like any other wrong version
        assert (flag_state(), segments_state()) == before


@pytest.mark.parametrize(("method", "path", "allowed"), [("post", BETA_PATH, "GET, PATCH, DELETE"),
                                                         ("delete", RULES, "GET, PUT"),
                                                         ("patch", SEGMENTS, "GET, POST")])
def test_a_wrong_method_is_405_in_json_with_allow(api, beta, method, path, allowed):
    response = api.request(method, path, {})
    assert response.status_code == 405
    assert response["Allow"] == allowed
    assert response.json() == {"error": "method_not_allowed", "message": f"use {allowed}"}
