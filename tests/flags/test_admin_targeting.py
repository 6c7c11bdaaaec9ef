"""The admin for segments and a flag's targeting rules: every save goes through flags.services, whose refusals
are shown on the form's fields with nothing saved."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from flags import services
from flags.models import AuditEntry, Flag, Segment, SegmentMember, Source

from .test_admin import change_url, flag_form

pytestmark = pytest.mark.django_db

COUNTRY = [{"attribute": "country", "operator": "in", "values": ["FR", "BE"]}]
STAFF = {"id": "staff", "serve": "on",
         "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]}


def segment_form(**changes: str) -> dict[str, str]:
    data = {"key": "beta", "name": "Beta programme", "description": "", "conditions": "", "included": "",
            "excluded": "", "reason": ""}
    data.update(changes)
    return data


def members(segment: Segment, kind: str) -> list[str]:
    return sorted(segment.members.filter(kind=kind).values_list("user_id", flat=True))


@pytest.fixture
def beta(db, actor) -> Segment:
    return services.segment_create(key="beta", name="Beta programme", conditions=COUNTRY, included=["b1", "b2"],
                                   excluded=["b3"], actor=actor, source=Source.CLI)


def segment_url(segment: Segment) -> str:
    return reverse("admin:flags_segment_change", args=[segment.pk])


def test_add_creates_the_segment_through_the_service_with_ids_by_line_and_comma(admin_client):
    response = admin_client.post(reverse("admin:flags_segment_add"), segment_form(
        conditions=json.dumps(COUNTRY), included="ann\nbob, carl\n\nann", excluded='dee,"e,f"', reason="beta opens"))
    assert response.status_code == 302, response.content.decode()[:3000]
    segment = Segment.objects.get(key="beta")
    assert segment.conditions == COUNTRY
    assert members(segment, "included") == ["ann", "bob", "carl"]
    assert members(segment, "excluded") == ["dee", "e,f"]
    entry = AuditEntry.objects.get(segment_key="beta")
    assert (entry.action, entry.source, entry.actor, entry.reason) == ("segment_create", "admin", "admin",
                                                                       "beta opens")


def test_changelist_shows_counts_version_and_the_flags_using_it(admin_client, flag, beta, actor):
    services.flag_set_rules(flag=flag, rules=[{"id": "b", "serve": "on", "segment": "beta"}], actor=actor,
                            source=Source.CLI)
    page = admin_client.get(reverse("admin:flags_segment_changelist")).content.decode()
    assert 'class="field-included_count">2<' in page and 'class="field-excluded_count">1<' in page
    assert 'class="field-version">1<' in page and ">patch_mode_enabled</a>" in page
    assert 'name="action"' not in page  # no bulk delete action


def test_change_form_shows_the_segment_and_round_trips_its_ids(admin_client, beta, actor):
    services.segment_update(segment=beta, included=["b1", "b,2"], actor=actor, source=Source.CLI)
    page = admin_client.get(segment_url(beta)).content.decode()
    assert "&quot;country&quot;" in page and "&quot;b,2&quot;\nb1\n" in page
    beta.refresh_from_db()
    data = segment_form(name="Beta", conditions=json.dumps(beta.conditions), included='b1\n"b,2"', excluded="b3",
                        expected_version=str(beta.version))
    del data["key"]
    assert admin_client.post(segment_url(beta), data).status_code == 302
    beta.refresh_from_db()
    assert beta.name == "Beta" and members(beta, "included") == ["b,2", "b1"]
    entry = AuditEntry.objects.filter(segment_key="beta").latest("id")
    assert (entry.action, entry.source) == ("segment_update", "admin")
    assert set(entry.after) == {"name", "version", "flags"}  # the ids came back unchanged


def test_change_updates_conditions_and_ids_and_moves_the_flags_using_it(admin_client, flag, beta, actor):
    services.flag_set_rules(flag=flag, rules=[{"id": "b", "serve": "on", "segment": "beta"}], actor=actor,
                            source=Source.CLI)
    flag_version = Flag.objects.get(pk=flag.pk).version
    data = segment_form(name="Beta programme", conditions="[]", included="b1\nb9", excluded="", reason="resize",
                        expected_version=str(beta.version))
    del data["key"]
    assert admin_client.post(segment_url(beta), data).status_code == 302
    beta.refresh_from_db()
    assert (beta.version, beta.conditions) == (2, [])
    assert members(beta, "included") == ["b1", "b9"] and members(beta, "excluded") == []
    assert Flag.objects.get(pk=flag.pk).version == flag_version + 1
    entry = AuditEntry.objects.filter(segment_key="beta").latest("id")
    assert (entry.action, entry.reason, entry.after["flags"]) == ("segment_update", "resize", ["patch_mode_enabled"])


def test_bad_json_is_a_form_error_and_nothing_is_saved(admin_client):
    response = admin_client.post(reverse("admin:flags_segment_add"),
                                 segment_form(conditions='[{"attribute": "country",', included="a"))
    page = response.content.decode()
    assert response.status_code == 200 and "Not valid JSON" in page and "line 1" in page
    assert not Segment.objects.exists() and not AuditEntry.objects.exists()


def test_conditions_the_service_refuses_are_shown_on_the_field_and_nothing_is_saved(admin_client):
    bad = [{"attribute": "v", "operator": "semver_gte", "values": ["two"]}]
    response = admin_client.post(reverse("admin:flags_segment_add"), segment_form(conditions=json.dumps(bad)))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert list(form.errors) == ["conditions"]
    assert form.errors["conditions"][0].startswith("conditions[0].values: ")
    assert 'name="conditions"' in response.content.decode() and "semver_gte" in response.content.decode()
    assert not Segment.objects.exists() and not AuditEntry.objects.exists()


def test_a_segment_that_matches_nobody_is_refused_on_the_conditions_field(admin_client):
    response = admin_client.post(reverse("admin:flags_segment_add"), segment_form())
    assert response.status_code == 200
    assert "matches nobody" in response.context["adminform"].form.errors["conditions"][0]
    assert not Segment.objects.exists()


def test_an_id_on_both_lists_is_refused_on_the_excluded_field(admin_client, beta):
    data = segment_form(conditions=json.dumps(COUNTRY), included="b1", excluded="b1", expected_version="1")
    del data["key"]
    response = admin_client.post(segment_url(beta), data)
    assert response.status_code == 200
    assert "also included" in response.context["adminform"].form.errors["excluded"][0]
    beta.refresh_from_db()
    assert beta.version == 1 and members(beta, "excluded") == ["b3"]


def test_an_invalid_user_id_is_a_form_error(admin_client):
    response = admin_client.post(reverse("admin:flags_segment_add"), segment_form(included="ok\n" + "y" * 256))
    assert response.status_code == 200
    assert "1 invalid user id(s)" in response.context["adminform"].form.errors["included"][0]
    assert not Segment.objects.exists()


def test_a_change_from_a_stale_page_is_refused_and_nothing_is_saved(admin_client, beta, actor):
    services.segment_update(segment=beta, name="Renamed elsewhere", actor=actor, source=Source.CLI)
    data = segment_form(name="Mine", conditions=json.dumps(COUNTRY), included="b1\nb2", excluded="b3",
                        expected_version="1")
    del data["key"]
    response = admin_client.post(segment_url(beta), data)
    assert response.status_code == 200 and "version 2 now" in response.content.decode()
    beta.refresh_from_db()
    assert beta.name == "Renamed elsewhere"


def test_delete_goes_through_the_service(admin_client, beta):
    confirm = admin_client.get(reverse("admin:flags_segment_delete", args=[beta.pk])).content.decode()
    assert "2 included and 1 excluded user ids" in confirm
    response = admin_client.post(reverse("admin:flags_segment_delete", args=[beta.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Segment.objects.exists() and not SegmentMember.objects.exists()
    entry = AuditEntry.objects.filter(segment_key="beta").latest("id")
    assert (entry.action, entry.source) == ("segment_delete", "admin")


def test_delete_is_refused_naming_the_flags_while_in_use(admin_client, flag, beta, actor):
    services.flag_set_rules(flag=flag, rules=[{"id": "b", "serve": "on", "segment": "beta"}], actor=actor,
                            source=Source.CLI)
    response = admin_client.post(reverse("admin:flags_segment_delete", args=[beta.pk]), {"post": "yes"},
                                 follow=True)
    page = response.content.decode()
    assert "The segment was not deleted" in page and "patch_mode_enabled" in page
    assert Segment.objects.filter(pk=beta.pk).exists()
    assert not AuditEntry.objects.filter(action="segment_delete").exists()


def test_flag_form_shows_the_rules_pretty_printed(admin_client, flag, actor):
    services.flag_set_rules(flag=flag, rules=[STAFF], actor=actor, source=Source.CLI)
    page = admin_client.get(change_url(flag)).content.decode()
    assert '\n  {\n    &quot;id&quot;: &quot;staff&quot;' in page


def test_a_rules_edit_on_the_flag_form_writes_one_audit_entry(admin_client, flag, beta):
    rules = [STAFF, {"id": "beta", "serve": "percentage", "percentage": 12.5, "segment": "beta"}]
    before = AuditEntry.objects.count()
    response = admin_client.post(change_url(flag), flag_form(flag, rules=json.dumps(rules), reason="dogfood"))
    assert response.status_code == 302, response.content.decode()[:3000]
    flag.refresh_from_db()
    assert [rule["id"] for rule in flag.rules] == ["staff", "beta"] and flag.version == 2
    assert AuditEntry.objects.count() == before + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.action, entry.source, entry.reason, entry.flag_id) == ("rules_update", "admin", "dogfood", flag.pk)


def test_rules_and_settings_in_one_save_are_two_entries_one_version_check(admin_client, flag):
    response = admin_client.post(change_url(flag), flag_form(flag, rollout_percentage="5", rules=json.dumps([STAFF])))
    assert response.status_code == 302
    flag.refresh_from_db()
    assert flag.version == 3 and flag.rules[0]["id"] == "staff"
    actions = list(AuditEntry.objects.filter(flag=flag).order_by("id").values_list("action", flat=True))
    assert actions == ["create", "set_rollout", "rules_update"]


def test_rules_the_service_refuses_are_shown_on_the_rules_field_and_nothing_is_saved(admin_client, flag):
    bad = [STAFF, {"id": "x", "serve": "on", "conditions": [{"attribute": "v", "operator": "semver_gte",
                                                             "values": ["two"]}]}]
    response = admin_client.post(change_url(flag), flag_form(flag, rollout_percentage="5", rules=json.dumps(bad)))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["rules"] and errors["rules"][0].startswith("rules[1].conditions[0].values: ")
    assert "semver_gte" in response.content.decode()  # what was typed is still there
    flag.refresh_from_db()
    assert (flag.version, flag.rules, str(flag.rollout_percentage)) == (1, [], "0.00")
    assert AuditEntry.objects.filter(flag=flag).count() == 1  # the create only


def test_bad_rules_json_and_an_unknown_segment_are_form_errors(admin_client, flag):
    response = admin_client.post(change_url(flag), flag_form(flag, rules="[{"))
    assert "Not valid JSON" in response.context["adminform"].form.errors["rules"][0]
    response = admin_client.post(change_url(flag), flag_form(flag, rules=json.dumps([{"id": "r", "serve": "on",
                                                                                       "segment": "nobody"}])))
    assert response.context["adminform"].form.errors["rules"][0].startswith("rules[0].segment: ")
    flag.refresh_from_db()
    assert flag.version == 1 and flag.rules == []


def test_a_stale_flag_page_with_rules_is_still_refused_by_the_version_check(admin_client, flag, actor):
    stale = flag_form(flag, rules=json.dumps([STAFF]))
    services.flag_set_rollout(flag=flag, percentage=20, actor=actor, source=Source.CLI)
    response = admin_client.post(change_url(flag), stale, follow=True)
    assert "version 1" in response.content.decode()
    flag.refresh_from_db()
    assert flag.rules == [] and flag.version == 2


def test_segment_audit_entries_show_in_the_audit_admin(admin_client, flag, beta, actor):
    services.flag_set_rules(flag=flag, rules=[{"id": "b", "serve": "on", "segment": "beta"}], actor=actor,
                            source=Source.CLI)
    services.segment_update(segment=beta, included=["b1"], actor=actor, source=Source.CLI)
    changelist = admin_client.get(reverse("admin:flags_auditentry_changelist"))
    assert changelist.status_code == 200 and "segment_update" in changelist.content.decode()
    only_beta = admin_client.get(reverse("admin:flags_auditentry_changelist"), {"segment_key": "beta"})
    assert only_beta.status_code == 200 and only_beta.context["cl"].result_count == 2
    for entry in AuditEntry.objects.filter(segment_key="beta"):
        page = admin_client.get(reverse("admin:flags_auditentry_change", args=[entry.pk]))
        assert page.status_code == 200 and "beta" in page.content.decode()
    export = admin_client.get(reverse("admin:flags_auditentry_export"), {"segment_key": "beta"})
    lines = b"".join(export.streaming_content).decode().splitlines()
    assert lines[0].startswith("created_at,flag,segment,") and len(lines) == 3


def test_add_page_starts_with_empty_textareas(admin_client):
    response = admin_client.get(reverse("admin:flags_segment_add"))
    assert response.status_code == 200
    assert response.context["adminform"].form["conditions"].value() == ""


@pytest.mark.parametrize("conditions", ["null", "5", '{"attribute": "country"}'])
def test_conditions_that_are_not_a_json_list_are_a_form_error(admin_client, conditions):
    response = admin_client.post(reverse("admin:flags_segment_add"), segment_form(conditions=conditions,
                                                                                  included="a"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["conditions"] == ["A JSON list of conditions."]
    assert not Segment.objects.exists()


def test_a_flag_form_posted_without_the_rules_field_leaves_the_rules_alone(admin_client, flag, actor):
    services.flag_set_rules(flag=flag, rules=[STAFF], actor=actor, source=Source.CLI)
    flag.refresh_from_db()
    response = admin_client.post(change_url(flag), flag_form(flag, rollout_percentage="5"))
    assert response.status_code == 302
    flag.refresh_from_db()
    assert flag.rules[0]["id"] == "staff" and str(flag.rollout_percentage) == "5.00"


def test_clearing_the_rules_textarea_removes_the_rules(admin_client, flag, actor):
    services.flag_set_rules(flag=flag, rules=[STAFF], actor=actor, source=Source.CLI)
    flag.refresh_from_db()
    assert admin_client.post(change_url(flag), flag_form(flag, rules="")).status_code == 302
    flag.refresh_from_db()
    assert flag.rules == []
    entry = AuditEntry.objects.filter(flag=flag).latest("id")
    assert (entry.action, entry.source, entry.after["rules"]) == ("rules_update", "admin", [])
