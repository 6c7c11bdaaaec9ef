"""The Django admin: saves go through the services (audit source `admin`), lists import in bulk."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source, UserOverride

pytestmark = pytest.mark.django_db


def flag_form(flag: Flag, **changes) -> dict:
    data = {
        "name": flag.name,
        "description": flag.description,
        "enabled": "on" if flag.enabled else "",
        "rollout_percentage": str(flag.rollout_percentage),
        "bucketing": flag.bucketing,
        "salt": flag.salt,
        "treatment_mode": flag.treatment_mode,
        "baseline_mode": flag.baseline_mode,
        "reason": "",
        "expected_version": str(flag.version),
        "overrides-TOTAL_FORMS": "0",
        "overrides-INITIAL_FORMS": "0",
        "overrides-MIN_NUM_FORMS": "0",
        "overrides-MAX_NUM_FORMS": "1000",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def change_url(flag: Flag) -> str:
    return reverse("admin:flags_flag_change", args=[flag.pk])


def test_changelist_shows_rollout_state_version_and_last_change(admin_client, flag, actor):
    services.flag_set_rollout(flag=flag, percentage=15, enabled=True, actor=Actor.system("carol"), source=Source.CLI)
    page = admin_client.get(reverse("admin:flags_flag_changelist")).content.decode()
    assert "15.00%" in page and "by carol (update)" in page
    assert admin_client.get(change_url(flag)).status_code == 200


def test_admin_create_goes_through_the_service(admin_client):
    data = flag_form(Flag(key="x", name="", salt="", version=1), key="checkout_v2", name="Checkout v2",
                     rollout_percentage="5")
    del data["expected_version"]
    response = admin_client.post(reverse("admin:flags_flag_add"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    flag = Flag.objects.get(key="checkout_v2")
    assert flag.salt == "checkout_v2" and flag.rollout_percentage == Decimal("5.00")
    entry = AuditEntry.objects.get(flag=flag)
    assert (entry.action, entry.source, entry.actor) == ("create", "admin", "admin")


def test_admin_change_writes_an_admin_audit_entry_with_reason(admin_client, flag):
    response = admin_client.post(change_url(flag), flag_form(flag, enabled="on", rollout_percentage="10",
                                                             reason="week 1"))
    assert response.status_code == 302
    flag.refresh_from_db()
    assert (flag.enabled, flag.rollout_percentage, flag.version) == (True, Decimal("10.00"), 2)
    entry = AuditEntry.objects.filter(flag=flag).latest("id")
    assert (entry.source, entry.actor, entry.reason) == ("admin", "admin", "week 1")
    assert entry.after["rollout_percentage"] == "10.00"


def test_admin_change_from_a_stale_page_is_refused_with_who_changed_it(admin_client, flag):
    stale = flag_form(flag, rollout_percentage="50")
    services.flag_set_rollout(flag=flag, percentage=20, actor=Actor.system("dave"), source=Source.CLI)
    response = admin_client.post(change_url(flag), stale, follow=True)
    page = response.content.decode()
    assert "dave" in page and "version 1" in page
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal("20.00") and flag.version == 2


def test_admin_rejects_a_rollout_over_100_and_changes_nothing(admin_client, flag):
    response = admin_client.post(change_url(flag), flag_form(flag, rollout_percentage="150"))
    assert response.status_code == 200 and "errornote" in response.content.decode()
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0 and flag.version == 1


def test_admin_salt_change_needs_the_confirmation_box(admin_client, flag):
    response = admin_client.post(change_url(flag), flag_form(flag, salt="reshuffle"))
    assert response.status_code == 200 and "reshuffles" in response.content.decode()
    flag.refresh_from_db()
    assert flag.salt == "patch_mode_enabled"
    response = admin_client.post(change_url(flag), flag_form(flag, salt="reshuffle", confirm_reshuffle="on"))
    assert response.status_code == 302
    flag.refresh_from_db()
    assert flag.salt == "reshuffle"


def test_flags_cannot_be_deleted_from_the_admin(admin_client, flag):
    response = admin_client.post(reverse("admin:flags_flag_delete", args=[flag.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert Flag.objects.filter(pk=flag.pk).exists()


def test_inline_adds_and_removes_overrides_through_services(admin_client, flag):
    data = flag_form(flag)
    data.update({"overrides-TOTAL_FORMS": "1", "overrides-0-user_id": "vip", "overrides-0-kind": "allow",
                 "overrides-0-note": "ceo", "overrides-0-flag": str(flag.pk)})
    assert admin_client.post(change_url(flag), data).status_code == 302
    override = UserOverride.objects.get(flag=flag)
    assert (override.user_id, override.kind, override.added_by) == ("vip", "allow", "admin")
    flag.refresh_from_db()
    data = flag_form(flag)
    data.update({"overrides-TOTAL_FORMS": "1", "overrides-INITIAL_FORMS": "1", "overrides-0-id": str(override.pk),
                 "overrides-0-flag": str(flag.pk), "overrides-0-user_id": "vip", "overrides-0-kind": "allow",
                 "overrides-0-note": "ceo", "overrides-0-DELETE": "on"})
    assert admin_client.post(change_url(flag), data).status_code == 302
    assert not UserOverride.objects.exists()
    actions = list(AuditEntry.objects.filter(flag=flag, source="admin").values_list("action", flat=True))
    assert sorted(actions) == ["override_add", "override_remove"]


def test_override_admin_add_search_and_delete(admin_client, flag):
    response = admin_client.post(
        reverse("admin:flags_useroverride_add"),
        {"flag": flag.pk, "user_id": "u-123", "kind": "deny", "note": "abuse", "reason": "ticket 7"},
    )
    assert response.status_code == 302
    override = UserOverride.objects.get()
    found = admin_client.get(reverse("admin:flags_useroverride_changelist"), {"q": "u-123"}).content.decode()
    assert "u-123" in found
    response = admin_client.post(reverse("admin:flags_useroverride_delete", args=[override.pk]), {"post": "yes"})
    assert response.status_code == 302 and not UserOverride.objects.exists()
    log = list(AuditEntry.objects.filter(flag=flag).order_by("id").values_list("action", "source", "reason"))
    assert log[-2:] == [("override_add", "admin", "ticket 7"), ("override_remove", "admin", "")]


def test_override_admin_refuses_a_user_on_the_other_list(admin_client, flag, actor):
    services.override_add(flag=flag, user_id="u", kind="allow", actor=actor, source=Source.CLI)
    response = admin_client.post(
        reverse("admin:flags_useroverride_add"), {"flag": flag.pk, "user_id": "u", "kind": "deny"}
    )
    assert response.status_code == 200
    assert UserOverride.objects.get().kind == "allow"


def test_bulk_delete_action_is_one_audited_removal(admin_client, flag, actor):
    services.overrides_import(flag=flag, kind="deny", text="a\nb\nc", actor=actor, source=Source.CLI)
    ids = list(UserOverride.objects.filter(user_id__in=["a", "b"]).values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:flags_useroverride_changelist"),
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )
    assert response.status_code == 302
    assert list(UserOverride.objects.values_list("user_id", flat=True)) == ["c"]
    assert AuditEntry.objects.filter(flag=flag, action="overrides_bulk_remove", source="admin").count() == 1


def lists_url(flag: Flag) -> str:
    return reverse("admin:flags_flag_lists", args=[flag.pk])


def test_import_page_pasted_text_reports_and_writes_one_entry(admin_client, flag, actor):
    services.override_add(flag=flag, user_id="dee", kind="deny", actor=actor, source=Source.CLI)
    text = "user_id\nann\n\nbob\nann\ndee\n"
    response = admin_client.post(lists_url(flag), {"operation": "add", "kind": "allow", "text": text,
                                                   "reason": "beta"})
    page = response.content.decode()
    assert response.status_code == 200
    assert 'id="report-changed">2<' in page and "the deny list" in page
    assert set(UserOverride.objects.filter(kind="allow").values_list("user_id", flat=True)) == {"ann", "bob"}
    entry = AuditEntry.objects.filter(flag=flag).latest("id")
    assert (entry.action, entry.source, entry.reason) == ("overrides_import", "admin", "beta")


def test_import_page_defaults_are_a_valid_combination(admin_client, flag):
    """The first submit with only ids pasted must work: the form starts on "add" to the allow list."""
    import re

    page = admin_client.get(lists_url(flag)).content.decode()
    defaults = {}
    for name, options in re.findall(r'<select name="(\w+)"[^>]*>(.*?)</select>', page, re.S):
        values = re.findall(r'<option value="([^"]*)"([^>]*)>', options)
        # What a browser submits: the selected option, else the first.
        defaults[name] = next((value for value, attrs in values if "selected" in attrs), values[0][0])
    assert defaults == {"operation": "add", "kind": "allow"}, defaults
    response = admin_client.post(lists_url(flag), {**defaults, "text": "ann\nbob"})
    assert response.status_code == 200 and 'id="report-changed">2<' in response.content.decode()
    assert set(UserOverride.objects.filter(flag=flag, kind="allow").values_list("user_id", flat=True)) == {"ann", "bob"}


def test_import_page_upload_with_invalid_lines_reports_line_numbers_and_changes_nothing(admin_client, flag):
    upload = SimpleUploadedFile("ids.csv", ("ok\n" + "y" * 256 + "\nfine\n").encode())
    response = admin_client.post(lists_url(flag), {"operation": "add", "kind": "deny", "file": upload})
    page = response.content.decode()
    assert "Nothing was changed" in page and '<tr class="invalid-line"><td>2</td>' in page
    assert not UserOverride.objects.exists()


def test_import_page_rejects_a_non_utf8_file(admin_client, flag):
    upload = SimpleUploadedFile("ids.txt", b"\xff\xfe\x00bad")
    response = admin_client.post(lists_url(flag), {"operation": "add", "kind": "deny", "file": upload})
    assert response.status_code == 200 and "not UTF-8" in response.content.decode()
    assert not UserOverride.objects.exists()


def test_import_page_bulk_removal(admin_client, flag, actor):
    services.overrides_import(flag=flag, kind="allow", text="a\nb\nc", actor=actor, source=Source.CLI)
    response = admin_client.post(lists_url(flag), {"operation": "remove", "kind": "", "text": "a\nc\nzz"})
    assert 'id="report-changed">2<' in response.content.decode()
    assert list(UserOverride.objects.values_list("user_id", flat=True)) == ["b"]


def test_import_page_needs_change_permission(client, django_user_model, flag):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(user)
    response = client.post(lists_url(flag), {"operation": "add", "kind": "allow", "text": "x"})
    assert response.status_code == 403 and not UserOverride.objects.exists()


def test_audit_admin_is_read_only(admin_client, flag):
    entry = AuditEntry.objects.get(flag=flag)
    assert admin_client.get(reverse("admin:flags_auditentry_change", args=[entry.pk])).status_code == 200
    response = admin_client.post(reverse("admin:flags_auditentry_change", args=[entry.pk]), {"reason": "forged"})
    assert response.status_code == 403
    delete_url = reverse("admin:flags_auditentry_delete", args=[entry.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert admin_client.get(reverse("admin:flags_auditentry_add")).status_code == 403
    entry.refresh_from_db()
    assert entry.reason == ""


def test_audit_csv_export_follows_the_changelist_filters_and_defuses_formulas(admin_client, flag, make_flag, actor):
    other = make_flag("other_flag")
    services.flag_set_rollout(flag=flag, percentage=30, actor=actor, source=Source.UI, reason="=HYPERLINK(evil)")
    services.flag_set_rollout(flag=other, percentage=40, actor=actor, source=Source.CLI)
    response = admin_client.get(reverse("admin:flags_auditentry_export"), {"flag__id__exact": flag.pk})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {row["flag"] for row in rows} == {"patch_mode_enabled"}
    assert [row["action"] for row in rows] == ["set_rollout", "create"]  # newest first
    assert rows[0]["reason"] == "'=HYPERLINK(evil)"
    assert '"rollout_percentage": "30.00"' in rows[0]["after"]
    filtered = admin_client.get(reverse("admin:flags_auditentry_export"), {"source__exact": "cli"})
    sources = {row["source"] for row in csv.DictReader(io.StringIO(b"".join(filtered.streaming_content).decode()))}
    assert sources == {"cli"}
