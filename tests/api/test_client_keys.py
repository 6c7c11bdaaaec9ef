"""Client keys (scope `client`): safe to ship in a web page. They evaluate client-side flags only, over
OFREP, and the answers carry no internal metadata. Flags become client-side through the services (admin,
dashboard, management API), audited like any change."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from api.keys import api_key_create
from flags import services
from flags.models import AuditEntry, Flag, Source
from tests.api import bearer
from tests.api.test_ofrep_conformance import BULK, CONTEXT, FLAG

pytestmark = pytest.mark.django_db

PUBLIC = "public_banner"


@pytest.fixture
def flags(flag, make_flag, actor) -> None:
    make_flag(PUBLIC, client_side=True)
    for key in (FLAG, PUBLIC):
        services.flag_set_rollout(flag=key, percentage=100, enabled=True, actor=actor, source=Source.CLI)


@pytest.fixture
def keys(flags) -> dict[str, str]:
    return {"client": api_key_create(name="web", scopes="client")[1],
            "evaluate": api_key_create(name="svc", scopes="evaluate")[1]}


def test_a_client_key_evaluates_a_client_side_flag_and_sees_no_internal_metadata(call, keys):
    answer = call("POST", f"/ofrep/v1/evaluate/flags/{PUBLIC}", CONTEXT, **bearer(keys["client"]))
    assert answer.status == 200
    assert answer.json() == {"key": PUBLIC, "value": True, "reason": "SPLIT", "variant": "on"}
    server = call("POST", f"/ofrep/v1/evaluate/flags/{PUBLIC}", CONTEXT, **bearer(keys["evaluate"]))
    assert {"bucket", "rolloutPercentage", "version"} <= set(server.json()["metadata"])  # a server key still sees it


def test_a_server_side_flag_does_not_exist_for_a_client_key(call, keys):
    answer = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT, **bearer(keys["client"]))
    unknown = call("POST", "/ofrep/v1/evaluate/flags/no_such_flag", CONTEXT, **bearer(keys["client"]))
    assert answer.status == unknown.status == 404
    assert answer.json()["errorCode"] == "FLAG_NOT_FOUND"
    assert answer.json()["errorDetails"].replace(FLAG, "X") == unknown.json()["errorDetails"].replace(
        "no_such_flag", "X")  # the same answer: a client key cannot tell a hidden flag from a missing one


def test_bulk_with_a_client_key_holds_only_client_side_flags(call, keys):
    answer = call("POST", BULK, CONTEXT, **bearer(keys["client"]))
    assert answer.status == 200
    assert [item["key"] for item in answer.json()["flags"]] == [PUBLIC]
    assert all("metadata" not in item for item in answer.json()["flags"])
    assert FLAG.encode() not in answer.body


def test_a_client_key_is_refused_by_the_json_api_and_the_management_api(call, keys):
    assert call("POST", "/api/v1/evaluate", {"user_ids": ["u1"]}, **bearer(keys["client"])).status == 403
    assert call("GET", "/api/v1/flags", None, **bearer(keys["client"])).status == 403
    assert call("POST", "/api/v1/executions", {"records": []}, **bearer(keys["client"])).status == 403


def test_a_key_with_both_scopes_is_a_server_key(call, flags):
    both = api_key_create(name="both", scopes="client,evaluate")[1]
    answer = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT, **bearer(both))
    assert answer.status == 200 and "metadata" in answer.json()


def test_making_a_flag_client_side_is_one_audited_change_and_reaches_client_keys(client, keys, actor,
                                                                                django_capture_on_commit_callbacks):
    before = Flag.objects.get(key=FLAG).version
    with django_capture_on_commit_callbacks(execute=True):
        services.flag_update(flag=FLAG, client_side=True, actor=actor, source=Source.CLI, reason="banner")
    entry = AuditEntry.objects.filter(flag__key=FLAG).latest("id")
    assert entry.before == {"client_side": False, "version": before}
    assert entry.after == {"client_side": True, "version": before + 1}
    response = client.post(f"/ofrep/v1/evaluate/flags/{FLAG}", json.dumps(CONTEXT), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {keys['client']}")
    assert response.status_code == 200 and response.json()["value"] is True


def test_client_side_must_be_a_boolean(flags, actor):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        services.flag_update(flag=FLAG, client_side="yes", actor=actor, source=Source.CLI)
    assert "client_side" in caught.value.message_dict
    assert Flag.objects.get(key=FLAG).client_side is False


def test_the_management_api_reads_and_changes_client_side(client, flags):
    manage = api_key_create(name="ops", scopes="manage")[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {manage}"}
    assert client.get(f"/api/v1/flags/{FLAG}", **auth).json()["client_side"] is False
    bad = client.patch(f"/api/v1/flags/{FLAG}", json.dumps({"client_side": "yes", "reason": "x"}),
                       content_type="application/json", **auth)
    assert bad.status_code == 400 and "client_side" in bad.json()["fields"]
    ok = client.patch(f"/api/v1/flags/{FLAG}", json.dumps({"client_side": True, "reason": "web banner"}),
                      content_type="application/json", **auth)
    assert ok.status_code == 200 and ok.json()["client_side"] is True
    assert AuditEntry.objects.filter(flag__key=FLAG).latest("id").source == "api"


def _logged_in(django_user_model, group: str) -> Client:
    user = django_user_model.objects.create_user(f"u-{group}", password="pw")
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    browser = Client()
    browser.force_login(user)
    return browser


def test_a_manager_toggles_it_on_the_flag_page_and_a_viewer_cannot(django_user_model, flags):
    url = f"/flags/{FLAG}/client-side"
    viewer = _logged_in(django_user_model, "Rollout viewers")
    assert viewer.post(url, {"client_side": "on", "reason": "x"}).status_code == 403
    manager = _logged_in(django_user_model, "Rollout managers")
    page = manager.get(f"/flags/{FLAG}/")
    assert b"Allow client keys" in page.content and b"server-side only" in page.content
    version = Flag.objects.get(key=FLAG).version
    response = manager.post(url, {"client_side": "on", "reason": "web banner", "expected_version": version})
    assert response.status_code == 200 and b"client keys may evaluate this flag" in response.content
    entry = AuditEntry.objects.filter(flag__key=FLAG).latest("id")
    assert (entry.source, entry.reason, entry.after["client_side"]) == ("ui", "web banner", True)
    stale = manager.post(url, {"client_side": "off", "reason": "x", "expected_version": version})
    assert stale.status_code == 409 and Flag.objects.get(key=FLAG).client_side is True
    assert manager.post(url, {"client_side": "maybe"}).status_code == 400


def test_the_admin_edits_client_side_with_an_audit_entry(admin_client, flags):
    flag = Flag.objects.get(key=FLAG)
    page = admin_client.get(reverse("admin:flags_flag_change", args=[flag.pk]))
    assert b'name="client_side"' in page.content
    from tests.flags.test_admin import flag_form

    response = admin_client.post(reverse("admin:flags_flag_change", args=[flag.pk]),
                                 flag_form(flag, client_side="on", reason="browser banner"))
    assert response.status_code == 302
    flag.refresh_from_db()
    assert flag.client_side is True
    entry = AuditEntry.objects.filter(flag=flag).latest("id")
    assert (entry.source, entry.after["client_side"]) == ("admin", True)


def test_create_api_key_makes_a_client_key(capsys, flags):
    from django.core.management import call_command

    call_command("create_api_key", "web-app", "--scopes", "client")
    from api.models import ApiKey

    assert ApiKey.objects.get(name="web-app").scopes == ["client"]
