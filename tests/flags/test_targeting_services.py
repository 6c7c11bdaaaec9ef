"""Storing targeting rules and segments (flags/services/targeting.py): validated, versioned, audited."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from flags import selectors, services
from flags.models import AuditEntry, Flag, Segment, SegmentMember, Source
from flags.services import targeting as rules_services
from flags.services.targeting import SegmentNotFound

STAFF = {"id": "staff", "serve": "on",
         "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]}
BETA = {"id": "beta", "serve": "percentage", "percentage": 12.5, "segment": "beta", "conditions": []}


def _state(flag: Flag) -> tuple:
    flag.refresh_from_db()
    return flag.version, flag.rules, AuditEntry.objects.filter(flag=flag).count()


@pytest.fixture
def beta(db, actor) -> Segment:
    return rules_services.segment_create(key="beta", name="Beta programme", included=["b1", "b2"],
                                         excluded=["b3"], actor=actor, source=Source.CLI, reason="beta opens")


def test_setting_rules_stores_them_bumps_the_version_and_writes_one_audit_entry(flag, beta, actor):
    version = flag.version
    written = rules_services.flag_set_rules(flag=flag, rules=[STAFF, BETA], actor=actor, source=Source.API,
                                            reason="dogfood, then beta", expected_version=version)
    assert written.version == version + 1
    assert [rule["id"] for rule in written.rules] == ["staff", "beta"]
    assert written.rules[1] == {"id": "beta", "serve": "percentage", "percentage": 12.5, "segment": "beta",
                                "conditions": []}
    entry = AuditEntry.objects.filter(flag=flag).latest("id")
    assert (entry.action, entry.source, entry.reason, entry.flag_version) == (
        "rules_update", Source.API, "dogfood, then beta", version + 1)
    assert entry.before == {"rules": [], "version": version}
    assert entry.after == {"rules": written.rules, "version": version + 1}


def test_the_same_rules_again_change_nothing(flag, actor):
    rules_services.flag_set_rules(flag=flag, rules=[STAFF], actor=actor, source=Source.CLI)
    before = _state(flag)
    rules_services.flag_set_rules(flag=flag, rules=[dict(STAFF)], actor=actor, source=Source.CLI)
    assert _state(flag) == before


@pytest.mark.parametrize(("rules", "field"), [
    ([STAFF, {"id": "bad", "serve": "on",
              "conditions": [{"attribute": "v", "operator": "semver_gte", "values": ["two"]}]}],
     "rules[1].conditions[0].values"),
    ([{"id": "r", "serve": "on", "conditions": [{"attribute": "e", "operator": "matches", "values": ["(x"]}]}],
     "rules[0].conditions[0].values"),
    ([{"id": "r", "serve": "on", "conditions": [{"attribute": "e", "operator": "like", "values": ["x"]}]}],
     "rules[0].conditions[0].operator"),
    ([{"id": "r", "serve": "on", "conditions": [{"attribute": "n", "operator": "gt", "values": [5]},
                                                 {"attribute": "n", "operator": "lt", "values": [1]}]}],
     "rules[0].conditions"),
    ([{"id": "r", "serve": "on", "segment": "nobody-made-this"}], "rules[0].segment"),
    ([{"id": "r", "serve": "on", "segment": {"key": "inline", "included": ["u"]}}], "rules[0].segment"),
    ("staff", "rules"),
    ([STAFF] * 2, "rules[1].id"),
])
def test_invalid_rules_are_refused_naming_the_rule_and_field_and_nothing_is_saved(flag, actor, rules, field):
    before = _state(flag)
    with pytest.raises(ValidationError) as refused:
        rules_services.flag_set_rules(flag=flag, rules=rules, actor=actor, source=Source.API)
    assert list(refused.value.message_dict) == [field], refused.value.message_dict
    assert _state(flag) == before


def test_too_many_rules_are_refused(flag, actor):
    rules = [{**STAFF, "id": f"r{i}"} for i in range(rules_services.RULES_MAX + 1)]
    with pytest.raises(ValidationError, match="at most"):
        rules_services.flag_set_rules(flag=flag, rules=rules, actor=actor, source=Source.API)


def test_rules_on_a_stale_version_are_a_conflict(flag, actor):
    with pytest.raises(services.VersionConflict):
        rules_services.flag_set_rules(flag=flag, rules=[STAFF], actor=actor, source=Source.API,
                                      expected_version=flag.version + 5)
    assert _state(flag)[1] == []


def test_a_segment_is_created_with_its_members_and_audited_on_its_own(beta):
    assert set(beta.members.values_list("user_id", "kind")) == {("b1", "included"), ("b2", "included"),
                                                                ("b3", "excluded")}
    entry = AuditEntry.objects.get(segment_key="beta")
    assert (entry.flag, entry.flag_key, entry.action, entry.reason) == (None, "", "segment_create", "beta opens")
    assert entry.after["included"] == ["b1", "b2"] and entry.after["flags"] == []
    assert "segment beta" in str(entry)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"key": "Beta!"}, "key"),
    ({"name": "  "}, "name"),
    ({"included": ["a", "b"], "excluded": ["b"]}, "excluded"),
    ({"included": ["ok", ""]}, "included[1]"),
    ({"included": "b1,b2"}, "included"),
    ({"conditions": [{"attribute": "plan", "operator": "in", "values": []}]}, "conditions[0].values"),
    ({"included": []}, "conditions"),  # no ids and no conditions: it would match nobody
])
def test_a_bad_segment_is_refused_naming_the_field_and_nothing_is_saved(db, actor, kwargs, field):
    values = {"key": "beta", "name": "Beta", "included": ["u1"], **kwargs}
    with pytest.raises(ValidationError) as refused:
        rules_services.segment_create(**values, actor=actor, source=Source.API)
    assert field in refused.value.message_dict, refused.value.message_dict
    assert not Segment.objects.exists() and not SegmentMember.objects.exists()
    assert not AuditEntry.objects.exists()


def test_a_segment_key_is_unique(beta, actor):
    with pytest.raises(ValidationError) as refused:
        rules_services.segment_create(key="beta", name="again", included=["x"], actor=actor, source=Source.API)
    assert "key" in refused.value.message_dict


def test_changing_a_segment_moves_every_flag_that_uses_it_and_lists_them_in_its_entry(make_flag, beta, actor):
    using = make_flag("uses_beta")
    other = make_flag("other_flag")
    rules_services.flag_set_rules(flag=using, rules=[BETA], actor=actor, source=Source.CLI)
    versions = {f.key: Flag.objects.get(pk=f.pk).version for f in (using, other)}
    changed = rules_services.segment_update(segment="beta", included=["b1", "b4"], actor=actor, source=Source.API,
                                            reason="b2 left", expected_version=beta.version)
    assert changed.version == beta.version + 1
    assert set(changed.members.filter(kind="included").values_list("user_id", flat=True)) == {"b1", "b4"}
    assert Flag.objects.get(pk=using.pk).version == versions["uses_beta"] + 1
    assert Flag.objects.get(pk=other.pk).version == versions["other_flag"]
    entry = AuditEntry.objects.filter(segment_key="beta").latest("id")
    assert entry.action == "segment_update" and entry.flag is None
    assert entry.before == {"included": ["b1", "b2"], "version": beta.version}
    assert entry.after == {"included": ["b1", "b4"], "version": beta.version + 1, "flags": ["uses_beta"]}


def test_a_segment_change_that_changes_nothing_writes_nothing(beta, actor):
    count = AuditEntry.objects.count()
    same = rules_services.segment_update(segment=beta, included=["b2", "b1"], actor=actor, source=Source.API)
    assert same.version == beta.version and AuditEntry.objects.count() == count


def test_a_segment_change_on_a_stale_version_or_of_an_unknown_field_is_refused(beta, actor):
    with pytest.raises(ValidationError) as refused:
        rules_services.segment_update(segment=beta, name="x", expected_version=beta.version + 1, actor=actor,
                                      source=Source.API)
    assert "expected_version" in refused.value.message_dict
    with pytest.raises(ValidationError) as refused:
        rules_services.segment_update(segment=beta, key="gamma", actor=actor, source=Source.API)
    assert "key" in refused.value.message_dict
    with pytest.raises(SegmentNotFound):
        rules_services.segment_update(segment="gamma", name="x", actor=actor, source=Source.API)


def test_a_segment_change_that_would_leave_a_flags_rule_unable_to_match_is_refused(flag, actor):
    rules_services.segment_create(key="adults", name="Adults", actor=actor, source=Source.API,
                                  conditions=[{"attribute": "age", "operator": "gte", "values": [18]}])
    rules_services.flag_set_rules(flag=flag, actor=actor, source=Source.API, rules=[
        {"id": "young-adults", "serve": "on", "segment": "adults",
         "conditions": [{"attribute": "age", "operator": "lt", "values": [30]}]}])
    with pytest.raises(ValidationError, match="patch_mode_enabled"):
        rules_services.segment_update(segment="adults", actor=actor, source=Source.API,
                                      conditions=[{"attribute": "age", "operator": "gte", "values": [40]}])
    assert Segment.objects.get(key="adults").conditions[0]["values"] == [18]


def test_a_segment_in_use_cannot_be_deleted_and_an_unused_one_is_deleted_with_an_entry(flag, beta, actor):
    rules_services.flag_set_rules(flag=flag, rules=[BETA], actor=actor, source=Source.CLI)
    with pytest.raises(ValidationError, match="patch_mode_enabled"):
        rules_services.segment_delete(segment="beta", actor=actor, source=Source.API)
    assert Segment.objects.filter(key="beta").exists()
    rules_services.flag_set_rules(flag=flag, rules=[], actor=actor, source=Source.CLI)
    rules_services.segment_delete(segment="beta", actor=actor, source=Source.API, reason="programme over")
    assert not Segment.objects.exists() and not SegmentMember.objects.exists()
    entry = AuditEntry.objects.filter(segment_key="beta").latest("id")
    assert (entry.action, entry.reason, entry.after) == ("segment_delete", "programme over", {"flags": []})
    assert entry.before["included"] == ["b1", "b2"]


def test_segment_configs_are_what_the_evaluation_core_reads(beta, actor):
    rules_services.segment_create(key="staff", name="Staff", actor=actor, source=Source.API,
                                  conditions=[STAFF["conditions"][0]])
    configs = selectors.segment_configs()
    assert set(configs) == {"beta", "staff"}
    assert configs["beta"].included == {"b1", "b2"} and configs["beta"].excluded == {"b3"}
    assert configs["staff"].matches("x", {"email": "a@ourcompany.com"})
    assert not configs["beta"].matches("b3", {})


@pytest.mark.parametrize("conditions", [None, 5, {"attribute": "plan"}, "plan in pro"])
def test_conditions_that_are_no_list_are_refused_naming_conditions(db, actor, conditions):
    with pytest.raises(ValidationError) as refused:
        rules_services.segment_create(key="s", name="S", included=["u"], conditions=conditions, actor=actor,
                                      source=Source.API)
    assert list(refused.value.message_dict) == ["conditions"]
    assert not Segment.objects.exists()


def test_a_segment_change_from_the_dashboard_needs_a_reason_like_every_other(db, actor):
    with pytest.raises(ValidationError) as refused:
        rules_services.segment_create(key="s", name="S", included=["u"], actor=actor, source=Source.UI, reason=" ")
    assert list(refused.value.message_dict) == ["reason"] and not Segment.objects.exists()
    rules_services.segment_create(key="s", name="S", included=["u"], actor=actor, source=Source.UI, reason="beta")
    for write in (lambda: rules_services.segment_update(segment="s", name="T", actor=actor, source=Source.UI),
                  lambda: rules_services.segment_delete(segment="s", actor=actor, source=Source.UI)):
        with pytest.raises(ValidationError) as refused:
            write()
        assert list(refused.value.message_dict) == ["reason"]
    assert Segment.objects.get(key="s").name == "S"
