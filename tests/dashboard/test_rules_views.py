"""The flag page's "Targeting rules" panel (dashboard/views/rules.py) through Django's test client."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from flags import services
from flags.models import AuditEntry, Flag, Source

pytestmark = pytest.mark.django_db

RULES = "/flags/patch_mode_enabled/rules"
HTMX = {"HTTP_HX_REQUEST": "true"}
STAFF = {"id": "staff", "serve": "on",
         "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]}
PRO = {"id": "pro", "serve": "percentage", "percentage": 25,
       "conditions": [{"attribute": "plan", "operator": "in", "values": ["pro", "team"]},
                      {"attribute": "app_version", "operator": "semver_gte", "values": ["2.0.0"]}]}


@pytest.fixture
def manager(client_in):
    return client_in("Rollout managers")


@pytest.fixture
def viewer(client_in):
    return client_in("Rollout viewers")


def text(response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def post(client, rules, reason="dogfood first", version=None, raw=None):
    version = Flag.objects.get(key="patch_mode_enabled").version if version is None else version
    return client.post(RULES, {"rules": raw if raw is not None else json.dumps(rules), "reason": reason,
                               "expected_version": str(version)}, **HTMX)


def test_the_flag_page_loads_the_panel_between_the_explain_box_and_the_alerts(viewer, flag):
    html = viewer.get("/flags/patch_mode_enabled/").content.decode()
    assert html.index('id="explain"') < html.index('id="rules"') < html.index('id="alerts"')
    assert 'hx-get="/flags/patch_mode_enabled/rules"' in html


def test_a_viewer_reads_the_rules_in_order_in_words_without_an_editor(viewer, flag, actor):
    services.flag_set_rules(flag=flag, rules=[STAFF, PRO], actor=actor, source=Source.CLI)
    response = viewer.get(RULES, **HTMX)
    assert response.status_code == 200
    words = text(response)
    assert "staff : serve on when email ends with \"@ourcompany.com\"" in words
    assert ("pro : serve 25% when plan is one of \"pro\", \"team\" and app_version is a version at least \"2.0.0\""
            in words)
    assert words.index("staff :") < words.index("pro :")
    assert 'id="rules-form"' not in response.content.decode()


def test_without_rules_the_panel_says_the_rollout_decides(viewer, flag):
    assert "No targeting rules: after the lists, the rollout decides for everyone." in text(viewer.get(RULES, **HTMX))


def test_a_manager_saves_rules_with_one_audit_entry_and_the_page_is_told(manager, flag):
    response = post(manager, [STAFF])
    assert response.status_code == 200
    written = Flag.objects.get(key="patch_mode_enabled")
    assert written.rules == [STAFF]
    entry = AuditEntry.objects.filter(flag=written).latest("id")
    assert (entry.action, entry.source, entry.reason, entry.actor) == (
        "rules_update", Source.UI, "dogfood first", "user-managers")
    assert f"Rules saved: version {written.version}." in text(response)
    assert json.loads(response["HX-Trigger"]) == {"flag-changed": {"version": written.version}}
    assert json.loads(unescape(re.search(r'<textarea id="rules-json"[^>]*>(.*?)</textarea>', response.content.decode(),
                                         re.S).group(1))) == [STAFF]


def test_the_same_rules_again_change_nothing(manager, flag):
    post(manager, [STAFF])
    count = AuditEntry.objects.count()
    response = post(manager, [STAFF])
    assert "The same rules: nothing changed." in text(response) and "HX-Trigger" not in response
    assert AuditEntry.objects.count() == count


@pytest.mark.parametrize(("rules", "raw", "message"), [
    (None, "[{\"id\": ", "Not valid JSON"),
    ([{"id": "x", "serve": "on", "conditions": [{"attribute": "v", "operator": "semver_gte", "values": ["two"]}]}],
     None, "rules[0].conditions[0].values: 'two' is not a semantic version"),
    ([{"id": "x", "serve": "on", "segment": "nobody"}], None, "rules[0].segment: no segment 'nobody'"),
    ({"id": "x"}, None, "rules: must be a list of rules"),
])
def test_refused_rules_are_a_400_next_to_the_editor_keeping_the_text_and_changing_nothing(manager, flag, rules, raw,
                                                                                          message):
    before = Flag.objects.get(key="patch_mode_enabled").version
    sent = raw if raw is not None else json.dumps(rules)
    response = post(manager, rules, raw=raw)
    assert response.status_code == 400
    assert message in text(response)
    assert unescape(re.search(r'<textarea id="rules-json"[^>]*>(.*?)</textarea>', response.content.decode(),
                              re.S).group(1)) == sent
    assert 'class="rules-edit" open' in response.content.decode()
    assert Flag.objects.get(key="patch_mode_enabled").version == before
    assert not AuditEntry.objects.filter(action="rules_update").exists()


def test_a_reason_is_required_from_the_dashboard(manager, flag):
    response = post(manager, [STAFF], reason="  ")
    assert response.status_code == 400 and "reason: Give a reason" in text(response)
    assert Flag.objects.get(key="patch_mode_enabled").rules == []


def test_a_stale_page_is_a_409_with_who_changed_it_and_the_current_rules(manager, flag, actor):
    version = Flag.objects.get(key="patch_mode_enabled").version
    services.flag_set_rules(flag=flag, rules=[PRO], actor=actor, source=Source.CLI)
    response = post(manager, [STAFF], version=version)
    assert response.status_code == 409
    assert "Refused: flag 'patch_mode_enabled' was changed by test-suite" in text(response)
    assert "pro : serve 25%" in text(response)  # the rules as they are now
    assert Flag.objects.get(key="patch_mode_enabled").rules == [PRO]


def test_viewers_cannot_save_and_outsiders_cannot_read(viewer, client_in, flag):
    assert post(viewer, [STAFF]).status_code == 403
    assert Flag.objects.get(key="patch_mode_enabled").rules == []
    assert client_in(None).get(RULES, **HTMX).status_code == 403
    assert viewer.get("/flags/no_such_flag/rules", **HTMX).status_code == 404


def test_the_flag_pages_recent_changes_include_its_segments_changes(viewer, flag, actor):
    services.segment_create(key="beta", name="Beta", included=["b1"], actor=actor, source=Source.CLI)
    services.segment_create(key="other", name="Other", included=["o1"], actor=actor, source=Source.CLI)
    services.flag_set_rules(flag=flag, rules=[{"id": "beta", "serve": "on", "segment": "beta"}], actor=actor,
                            source=Source.CLI)
    services.segment_update(segment="beta", included=["b1", "b2"], actor=actor, source=Source.CLI, reason="b2 joins")
    words = text(viewer.get("/flags/patch_mode_enabled/?partial=audit", **HTMX))
    assert "segment_update (segment beta)" in words and "b2 joins" in words
    assert "segment beta" in words and "segment other" not in words
    assert words.index("segment_update (segment beta)") < words.index("rules_update")  # newest first
