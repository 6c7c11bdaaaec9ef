"""The segment pages (list, page, new, edit, delete) through Django's test client."""

from __future__ import annotations

import re

import pytest

from dashboard.views.rules import condition_words
from flags import services
from flags.models import AuditEntry, Segment, SegmentMember, Source

pytestmark = pytest.mark.django_db

NEW = "/segments/new"
EMAIL = '[{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]'
VALID = {"key": "staff", "name": "Staff", "description": "Everyone at the company", "conditions": EMAIL,
         "included": "alice\nbob, carol", "excluded": "mallory", "reason": "dogfooding"}


@pytest.fixture
def manager(client_in):
    return client_in("Rollout managers", "pm")


@pytest.fixture
def viewer(client_in):
    return client_in("Rollout viewers", "watcher")


@pytest.fixture
def outsider(client_in):
    return client_in(None)


@pytest.fixture
def staff(db, actor):
    return services.segment_create(key="staff", name="Staff", actor=actor, source=Source.CLI,
                                   conditions=[{"attribute": "email", "operator": "ends_with",
                                                "values": ["@ourcompany.com"]}],
                                   included=["alice", "bob"], excluded=["mallory"])


@pytest.fixture
def used(staff, make_flag, actor):
    flag = make_flag("dark_theme")
    rules = [{"id": "staff-on", "segment": "staff", "serve": "on"}]
    return services.flag_set_rules(flag=flag, rules=rules, actor=actor, source=Source.CLI)


def edit_data(segment: Segment, **changes: str) -> dict[str, str]:
    data = {"name": segment.name, "description": segment.description, "conditions": EMAIL,
            "included": "alice\nbob", "excluded": "mallory", "reason": "tidy up",
            "expected_version": str(segment.version)}
    return {**data, **changes}


def audit_count(key: str) -> int:
    return AuditEntry.objects.filter(segment_key=key).count()


def field_error(html: str, field: str) -> str:
    match = re.search(rf'<p class="field-error" id="id_{field}_error" role="alert">(.*?)</p>', html, re.S)
    return match.group(1) if match else ""


# --- reading ---------------------------------------------------------------------------------------------------


def test_the_list_shows_counts_flags_and_last_change_to_a_viewer(viewer, used):
    response = viewer.get("/segments/")
    html = response.content.decode()
    assert response.status_code == 200
    row = re.search(r'<tr class="segment-row" data-segment="staff">(.*?)</tr>', html, re.S).group(1)
    assert 'href="/segments/staff/"' in row
    assert '<td class="included" data-label="Included">2</td>' in row
    assert '<td class="excluded" data-label="Excluded">1</td>' in row
    assert '<a href="/flags/dark_theme/">dark_theme</a>' in row
    assert " UTC</span>" in row
    assert "New segment" not in html
    assert 'href="/segments/">Segments</a>' in html  # the main navigation


def test_a_manager_sees_the_new_segment_link(manager, staff):
    assert 'href="/segments/new">New segment</a>' in manager.get("/segments/").content.decode()


def test_the_page_shows_the_segment_in_words_to_a_viewer_without_forms(viewer, used):
    response = viewer.get("/segments/staff/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<li>email ends with &quot;@ourcompany.com&quot;</li>" in html
    assert "Included user ids: 2" in html and "<li>alice</li>" in html
    assert "Excluded user ids: 1" in html and "<li>mallory</li>" in html
    assert '<a href="/flags/dark_theme/">dark_theme</a>' in html
    assert "segment_create" in html  # its audit entry
    assert "segment-edit" not in html and "segment-delete" not in html


def test_the_page_shows_the_first_200_ids_and_the_count(viewer, actor):
    services.segment_create(key="many", name="Many", actor=actor, source=Source.CLI,
                            included=[f"u{i:04d}" for i in range(250)])
    html = viewer.get("/segments/many/").content.decode()
    assert "Included user ids: 250" in html
    assert "<li>u0199</li>" in html and "<li>u0200</li>" not in html
    assert "The first 200 of 250." in html


def test_a_manager_gets_the_edit_and_delete_forms(manager, staff):
    html = manager.get("/segments/staff/").content.decode()
    assert 'id="segment-edit"' in html and 'id="segment-delete"' in html
    assert f'name="expected_version" value="{staff.version}"' in html
    assert 'name="key"' not in html
    for label in ("Name", "Description", "Conditions (JSON)", "Included user ids", "Excluded user ids", "Reason"):
        assert f">{label}</label>" in html


def test_an_unknown_segment_is_404(viewer, manager):
    assert viewer.get("/segments/nope/").status_code == 404
    assert manager.post("/segments/nope/edit", {"name": "x"}).status_code == 404
    assert manager.post("/segments/nope/delete", {"confirm": "on", "reason": "x"}).status_code == 404


# --- who may ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/segments/", "/segments/staff/", NEW])
def test_outsiders_get_403(outsider, staff, url):
    assert outsider.get(url).status_code == 403


def test_viewers_get_403_on_every_write_and_nothing_changes(viewer, staff):
    assert viewer.get(NEW).status_code == 403
    assert viewer.post(NEW, {**VALID, "key": "other"}).status_code == 403
    assert viewer.post("/segments/staff/edit", edit_data(staff, name="Changed")).status_code == 403
    assert viewer.post("/segments/staff/delete", {"confirm": "on", "reason": "x"}).status_code == 403
    assert list(Segment.objects.values_list("key", "name")) == [("staff", "Staff")]
    assert audit_count("staff") == 1 and audit_count("other") == 0


def test_anonymous_users_are_sent_to_log_in(client, staff):
    response = client.get("/segments/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


# --- create ----------------------------------------------------------------------------------------------------


def test_the_new_form_has_the_labelled_fields(manager):
    html = manager.get(NEW).content.decode()
    for label in ("Key", "Name", "Description", "Conditions (JSON)", "Included user ids", "Excluded user ids",
                  "Reason"):
        assert f">{label}</label>" in html


def test_creating_a_segment_saves_it_with_one_audit_entry_and_opens_its_page(manager):
    response = manager.post(NEW, VALID)
    assert response.status_code == 303 and response["Location"] == "/segments/staff/"
    segment = Segment.objects.get(key="staff")
    assert segment.name == "Staff" and segment.description == "Everyone at the company"
    assert segment.conditions == [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]
    members = sorted(SegmentMember.objects.values_list("user_id", "kind"))
    assert members == [("alice", "included"), ("bob", "included"), ("carol", "included"), ("mallory", "excluded")]
    [entry] = AuditEntry.objects.filter(segment_key="staff")
    assert (entry.action, entry.actor, entry.source, entry.reason) == ("segment_create", "pm", "ui", "dogfooding")


def test_an_htmx_create_redirects_the_client(manager):
    response = manager.post(NEW, VALID, headers={"HX-Request": "true"})
    assert response.status_code == 200 and response["HX-Redirect"] == "/segments/staff/"


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"key": "Bad Key!"}, "key", "lowercase"),  # the model's key validator
    ({"name": ""}, "name", "required"),
    ({"conditions": "[{"}, "conditions", "Not valid JSON"),
    ({"conditions": '{"attribute": "email"}'}, "conditions", "A JSON list of conditions."),
    ({"conditions": '[{"attribute": "email", "operator": "ends_with", "values": [""]}]'}, "conditions",
     "conditions[0].values: ends_with takes non-empty strings"),  # the service's refusal, on its field
    ({"conditions": '[{"attribute": "email", "operator": "sounds_like", "values": ["x"]}]'}, "conditions",
     "conditions[0].operator: unknown operator"),
    ({"conditions": "", "included": ""}, "conditions", "matches nobody"),
    ({"included": "alice\n" + "x" * 300}, "included", "invalid user id"),
    ({"excluded": "alice"}, "excluded", "also included"),
    ({"reason": ""}, "reason", "Give a reason"),
])
def test_a_refused_segment_shows_the_message_on_its_field_keeps_the_input_and_saves_nothing(
        manager, changes, field, message):
    response = manager.post(NEW, {**VALID, **changes})
    html = response.content.decode()
    assert response.status_code == 400
    assert message in field_error(html, field)
    assert 'value="Staff"' in html or changes.get("name") == ""  # what was typed stays
    assert "mallory" in html or "excluded" in changes
    assert not Segment.objects.exists() and not AuditEntry.objects.exists()


def test_a_taken_key_is_refused(manager, staff):
    response = manager.post(NEW, VALID)
    assert response.status_code == 400 and "already exists" in field_error(response.content.decode(), "key")
    assert audit_count("staff") == 1


# --- edit ------------------------------------------------------------------------------------------------------


def test_editing_a_segment_writes_it_with_one_audit_entry(manager, used):
    staff = Segment.objects.get(key="staff")
    response = manager.post("/segments/staff/edit", edit_data(staff, name="All staff", included="alice\ndave"))
    assert response.status_code == 303 and response["Location"] == "/segments/staff/"
    staff.refresh_from_db()
    assert staff.name == "All staff" and staff.version == 2
    assert sorted(staff.members.filter(kind="included").values_list("user_id", flat=True)) == ["alice", "dave"]
    entry = AuditEntry.objects.filter(segment_key="staff").exclude(action="segment_create").get()
    assert (entry.action, entry.actor, entry.source, entry.reason) == ("segment_update", "pm", "ui", "tidy up")
    assert entry.after["flags"] == ["dark_theme"]


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"conditions": "not json"}, "conditions", "Not valid JSON"),
    ({"conditions": '[{"attribute": "age", "operator": "gt", "values": ["x"]}]'}, "conditions",
     "conditions[0].values: gt compares with a finite number"),
    ({"name": " "}, "name", "required"),
    ({"excluded": "bob"}, "excluded", "also included"),
    ({"reason": ""}, "reason", "Give a reason"),
])
def test_a_refused_edit_is_400_on_its_field_and_changes_nothing(manager, staff, changes, field, message):
    response = manager.post("/segments/staff/edit", edit_data(staff, **changes))
    assert response.status_code == 400
    assert message in field_error(response.content.decode(), field)
    staff.refresh_from_db()
    assert staff.version == 1 and staff.name == "Staff" and audit_count("staff") == 1


def test_an_htmx_refusal_answers_with_the_form_alone(manager, staff):
    response = manager.post("/segments/staff/edit", edit_data(staff, conditions="[1"), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 400
    assert html.lstrip().startswith('<form id="segment-edit"') and "<html" not in html


def test_an_edit_from_a_stale_page_is_409_saying_who_changed_it(manager, staff, actor):
    services.segment_update(segment="staff", name="Renamed", actor=actor, source=Source.CLI, reason="meanwhile")
    response = manager.post("/segments/staff/edit", edit_data(staff, name="Mine"))
    html = response.content.decode()
    assert response.status_code == 409
    assert "was changed by test-suite (command line) at" in html and "since you loaded the page" in html
    assert 'value="Mine"' in html  # what was typed stays
    staff.refresh_from_db()
    assert staff.name == "Renamed" and staff.version == 2 and audit_count("staff") == 2


# --- delete ----------------------------------------------------------------------------------------------------


def test_deleting_a_segment_writes_one_audit_entry_and_goes_to_the_list(manager, staff):
    response = manager.post("/segments/staff/delete", {"confirm": "on", "reason": "not needed"})
    assert response.status_code == 303 and response["Location"] == "/segments/"
    assert not Segment.objects.exists() and not SegmentMember.objects.exists()
    entry = AuditEntry.objects.get(segment_key="staff", action="segment_delete")
    assert (entry.actor, entry.source, entry.reason) == ("pm", "ui", "not needed")
    assert audit_count("staff") == 2


def test_a_segment_in_use_is_not_deleted(manager, used):
    response = manager.post("/segments/staff/delete", {"confirm": "on", "reason": "cleanup"})
    html = response.content.decode()
    assert response.status_code == 400
    assert "used by the rules of dark_theme" in html
    assert Segment.objects.filter(key="staff").exists() and audit_count("staff") == 1


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"reason": "cleanup"}, "confirm", "Tick the box"),
    ({"confirm": "on", "reason": ""}, "reason", "Give a reason"),
])
def test_a_deletion_needs_the_confirmation_and_a_reason(manager, staff, data, field, message):
    response = manager.post("/segments/staff/delete", data)
    assert response.status_code == 400 and message in field_error(response.content.decode(), field)
    assert Segment.objects.filter(key="staff").exists() and audit_count("staff") == 1


def test_htmx_answers_a_stale_edit_and_a_refused_deletion_with_their_form_alone(manager, used, actor):
    staff = Segment.objects.get(key="staff")
    services.segment_update(segment="staff", name="Renamed", actor=actor, source=Source.CLI)
    response = manager.post("/segments/staff/edit", edit_data(staff), headers={"HX-Request": "true"})
    assert response.status_code == 409 and response.content.decode().lstrip().startswith('<form id="segment-edit"')
    response = manager.post("/segments/staff/delete", {"confirm": "on", "reason": "x"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 400 and html.lstrip().startswith('<form id="segment-delete"')
    assert "used by the rules of dark_theme" in html and " open>" in html


@pytest.mark.parametrize(("condition", "words"), [
    ({"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]},
     'email ends with "@ourcompany.com"'),
    ({"attribute": "country", "operator": "in", "values": ["FR", "BE"]}, 'country is one of "FR", "BE"'),
    ({"attribute": "beta", "operator": "equals", "values": [True]}, "beta is true"),
    ({"attribute": "age", "operator": "gte", "values": [18]}, "age ≥ 18"),
])
def test_a_condition_reads_as_one_line(condition, words):
    assert condition_words(condition) == words
