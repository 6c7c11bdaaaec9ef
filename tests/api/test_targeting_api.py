"""Targeting rules and segments at every evaluation endpoint (OFREP single and bulk, the JSON API), through
Django's views and the lean WSGI path alike, and in the snapshot that serves them."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest

from api.snapshot import decode_copy, encode_copy, store
from flags import evaluation, selectors, services
from flags.models import Flag, Source
from tests.api import bearer

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_transaction")]

FLAG = "patch_mode_enabled"
STAFF = {"id": "staff", "serve": "on",
         "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]}
OLD_APP = {"id": "old-app", "serve": "off",
           "conditions": [{"attribute": "app_version", "operator": "semver_lt", "values": ["2.0.0"]}]}
BETA = {"id": "beta", "serve": "on", "segment": "beta", "conditions": []}


@pytest.fixture
def targeted(flag, actor, django_capture_on_commit_callbacks):
    """patch_mode_enabled on for everyone (100%), except that staff get it by rule and old apps do not."""
    with django_capture_on_commit_callbacks(execute=True):
        services.flag_set_rollout(flag=FLAG, percentage=100, enabled=True, actor=actor, source=Source.CLI)
        services.segment_create(key="beta", name="Beta", included=["b1"], actor=actor, source=Source.CLI)
        services.flag_set_rules(flag=FLAG, rules=[STAFF, OLD_APP, BETA], actor=actor, source=Source.CLI)
    return Flag.objects.get(key=FLAG)


@pytest.fixture
def secret(make_key) -> str:
    return make_key("svc", "evaluate")


def ofrep(call, secret, context):
    return call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", {"context": context}, **bearer(secret))


def test_ofrep_a_rule_match_is_targeting_match_with_our_reason_and_the_rule_id(call, targeted, secret):
    answer = ofrep(call, secret, {"targetingKey": "u1", "email": "ana@ourcompany.com", "app_version": "1.0.0"})
    body = answer.json()
    assert answer.status == 200
    assert (body["value"], body["variant"], body["reason"]) == (True, "on", "TARGETING_MATCH")
    assert (body["metadata"]["reason"], body["metadata"]["ruleId"]) == ("RULE_MATCH", "staff")
    body = ofrep(call, secret, {"targetingKey": "u1", "app_version": "1.9.9"}).json()
    assert (body["value"], body["reason"], body["metadata"]["ruleId"]) == (False, "TARGETING_MATCH", "old-app")


def test_ofrep_without_a_matching_attribute_is_the_default_rollout_and_carries_no_rule(call, targeted, secret):
    for context in ({"targetingKey": "u1"}, {"targetingKey": "u1", "email": None, "app_version": 3},
                    {"targetingKey": "u1", "email": ["ana@ourcompany.com"], "app_version": "not a version"}):
        body = ofrep(call, secret, context).json()
        assert (body["value"], body["reason"], body["metadata"]["reason"]) == (True, "SPLIT", "IN_ROLLOUT")
        assert "ruleId" not in body["metadata"]


def test_ofrep_a_segments_included_user_matches_by_id_alone(call, targeted, secret):
    body = ofrep(call, secret, {"targetingKey": "b1", "app_version": "3.0.0"}).json()
    assert body["metadata"]["ruleId"] == "beta"


def test_ofrep_bulk_applies_the_rules_to_every_flag_with_the_same_context(call, targeted, secret):
    answer = call("POST", "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u1", "app_version": "1.2.0"}},
                  **bearer(secret))
    (item,) = [item for item in answer.json()["flags"] if item["key"] == FLAG]
    assert (item["value"], item["metadata"]["ruleId"]) == (False, "old-app")


def test_a_client_key_sees_the_decision_but_not_which_rule_made_it(call, targeted, make_key, flag, actor,
                                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.flag_update(flag=FLAG, client_side=True, actor=actor, source=Source.CLI)
    body = ofrep(call, make_key("web", "client"), {"targetingKey": "u1", "email": "x@ourcompany.com"}).json()
    assert (body["value"], body["reason"]) == (True, "TARGETING_MATCH") and "metadata" not in body


def test_json_get_takes_attributes_as_a_json_object_in_the_query(call, targeted, secret):
    attributes = quote(json.dumps({"email": "ana@ourcompany.com"}))
    body = call("GET", f"/api/v1/flags/{FLAG}/evaluate?user_id=u1&attributes={attributes}", **bearer(secret)).json()
    assert (body["enabled"], body["reason"], body["rule"]) == (True, "RULE_MATCH", "staff")
    plain = call("GET", f"/api/v1/flags/{FLAG}/evaluate?user_id=u1", **bearer(secret)).json()
    assert plain["reason"] == "IN_ROLLOUT" and "rule" not in plain


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"staff"', "null1"])
def test_json_get_with_attributes_that_are_no_object_is_400_naming_attributes(call, targeted, secret, raw):
    answer = call("GET", f"/api/v1/flags/{FLAG}/evaluate?user_id=u1&attributes={quote(raw)}", **bearer(secret))
    assert answer.status == 400
    assert list(answer.json()["fields"]) == ["attributes"]


def test_json_bulk_takes_one_attributes_object_for_every_user(call, targeted, secret):
    answer = call("POST", "/api/v1/evaluate", {"user_ids": ["u1", "b1"], "flags": [FLAG],
                                               "attributes": {"app_version": "1.0.0"}}, **bearer(secret))
    results = {r["user_id"]: r for r in answer.json()["results"]}
    assert (results["u1"]["enabled"], results["u1"]["rule"]) == (False, "old-app")
    assert (results["b1"]["enabled"], results["b1"]["rule"]) == (False, "old-app")  # rules in order: old-app first
    answer = call("POST", "/api/v1/evaluate", {"user_ids": ["u1"], "attributes": ["x"]}, **bearer(secret))
    assert answer.status == 400 and list(answer.json()["fields"]) == ["attributes"]


def test_a_segment_change_reaches_the_next_evaluation(call, targeted, secret, actor,
                                                      django_capture_on_commit_callbacks):
    assert ofrep(call, secret, {"targetingKey": "b2", "app_version": "3.0.0"}).json()["metadata"]["reason"] == \
        "IN_ROLLOUT"
    with django_capture_on_commit_callbacks(execute=True):
        services.segment_update(segment="beta", included=["b1", "b2"], actor=actor, source=Source.CLI)
    assert ofrep(call, secret, {"targetingKey": "b2", "app_version": "3.0.0"}).json()["metadata"]["ruleId"] == "beta"


def test_the_snapshot_holds_each_flags_rules_with_their_segments(targeted):
    config = store.get().flags[FLAG]
    assert [rule.id for rule in config.rules] == ["staff", "old-app", "beta"]
    assert config.rules[2].segment is not None and config.rules[2].segment.included == {"b1"}
    assert config == selectors.flag_config(targeted)


def test_a_kept_copy_carries_rules_and_segments(targeted):
    snapshot = store.get()
    restored = decode_copy(encode_copy(snapshot))
    assert restored.flags[FLAG] == snapshot.flags[FLAG]
    for user, context in [("u1", {"email": "a@ourcompany.com"}), ("u2", {"app_version": "1.0.0"}), ("b1", {})]:
        assert evaluation.evaluate(restored.flags[FLAG], user, context) == \
            evaluation.evaluate(snapshot.flags[FLAG], user, context)


def test_rules_that_cannot_be_read_serve_the_flag_off_and_say_so(targeted, caplog):
    # Only a write around the services can store this; the snapshot must not then serve users a rule kept out.
    Flag.objects.filter(key=FLAG).update(rules=[{"id": "x", "serve": "sometimes", "conditions": []}], version=99)
    with caplog.at_level(logging.ERROR, logger="flags.selectors"):
        config = selectors.flag_config(Flag.objects.get(key=FLAG))
    assert config.enabled is False and config.rules == ()
    assert evaluation.evaluate(config, "u1").reason == evaluation.Reason.DISABLED
    assert "patch_mode_enabled: its targeting rules cannot be read" in caplog.text


def test_json_bulk_takes_users_each_with_their_own_attributes(call, targeted, secret):
    answer = call("POST", "/api/v1/evaluate", {"flags": [FLAG], "users": [
        {"user_id": "u1", "attributes": {"email": "ana@ourcompany.com"}},
        {"user_id": "u2", "attributes": {"app_version": "1.0.0"}},
        {"user_id": "u3"}]}, **bearer(secret))
    assert answer.status == 200
    results = {r["user_id"]: (r["enabled"], r["reason"], r.get("rule")) for r in answer.json()["results"]}
    assert results == {"u1": (True, "RULE_MATCH", "staff"), "u2": (False, "RULE_MATCH", "old-app"),
                       "u3": (True, "IN_ROLLOUT", None)}


@pytest.mark.parametrize(("body", "fields"), [
    ({"users": [], "flags": [FLAG]}, ["users"]),
    ({"users": "u1"}, ["users"]),
    ({"users": [{"user_id": "u1"}], "user_ids": ["u2"]}, ["users"]),
    ({"users": [{"user_id": "u1"}], "attributes": {"plan": "pro"}}, ["users"]),
    ({"users": [{"user_id": ""}, {"attributes": {}}]}, ["users[0].user_id", "users[1].user_id"]),
    ({"users": [{"user_id": "u1", "attributes": ["x"]}, "u2"]}, ["users[0].attributes", "users[1]"]),
    ({"users": [{"user_id": "u1", "traits": {}}]}, ["users[0].traits"]),
])
def test_json_bulk_users_that_are_malformed_are_400_naming_each(call, targeted, secret, body, fields):
    answer = call("POST", "/api/v1/evaluate", body, **bearer(secret))
    assert answer.status == 400 and sorted(answer.json()["fields"]) == fields
