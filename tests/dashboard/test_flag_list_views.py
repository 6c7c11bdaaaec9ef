"""The flags list (search, open alerts, last change) and the "New flag" form, through Django's test client."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from alerts.models import Alert, AlertRule, AlertState, Severity
from alerts.selectors import open_alerts_by_flag
from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source

pytestmark = pytest.mark.django_db

NEW = "/flags/new"
VALID = {"key": "checkout_redesign", "name": "Checkout redesign", "description": "One-page checkout",
         "treatment_mode": "patch", "baseline_mode": "single"}


@pytest.fixture
def manager(client_in):
    return client_in("Rollout managers", "pm")


@pytest.fixture
def viewer(client_in):
    return client_in("Rollout viewers", "watcher")


@pytest.fixture
def three_flags(make_flag):
    make_flag("patch_mode_enabled", name="Patch Mode", description="Send diffs instead of whole files")
    make_flag("dark_theme", name="Dark theme", description="Night colours for the editor")
    make_flag("search_v2", name="New search", description="Faster PATCH lookups")


def listed(html: str) -> list[str]:
    return re.findall(r'<tr class="flag-row" data-flag="([^"]+)"', html)


def open_alert(flag: Flag, severity: str, state: str = AlertState.FIRING) -> Alert:
    # One open episode per rule (a constraint): take a rule of the flag's that has none.
    busy = Alert.objects.filter(state__in=["firing", "acknowledged"]).values("rule_id")
    rule = AlertRule.objects.filter(flag=flag).exclude(pk__in=busy).order_by("id").first()
    return Alert.objects.create(rule=rule, flag=flag, severity=severity, state=state, message="test")


# --- the list --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [
    ("", ["dark_theme", "patch_mode_enabled", "search_v2"]),
    ("DARK", ["dark_theme"]),  # key, any case
    ("new search", ["search_v2"]),  # name
    ("patch", ["patch_mode_enabled", "search_v2"]),  # key of one, description of the other
    ("colours", ["dark_theme"]),  # description
    ("  theme  ", ["dark_theme"]),  # surrounding spaces do not count
    ("%", []),  # a LIKE wildcard is taken literally
    ("w_s", []),  # ...and so is this one (as a wildcard it would match the name "New search")
])
def test_search_matches_key_name_or_description_in_any_case(viewer, three_flags, q, expected):
    html = viewer.get("/", {"q": q}).content.decode()
    assert listed(html) == expected


def test_a_search_that_finds_nothing_says_so(viewer, three_flags):
    response = viewer.get("/", {"q": "no-such-flag"})
    assert response.status_code == 200 and "No flags match" in response.content.decode()
    assert listed(response.content.decode()) == []


def test_a_search_with_a_nul_character_finds_nothing_instead_of_failing(viewer, three_flags):
    response = viewer.get("/", {"q": "dark\x00"})
    assert response.status_code == 200 and "No flags match" in response.content.decode()


def test_an_htmx_search_gets_only_the_table_and_the_refresh_keeps_the_search(viewer, three_flags):
    response = viewer.get("/", {"q": "dark"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html and html.lstrip().startswith('<div id="flag-table"')
    assert listed(html) == ["dark_theme"]
    assert 'hx-include="#flag-search"' in html and 'hx-trigger="every 10s"' in html


def test_the_full_page_shows_the_search_box_with_its_value(viewer, three_flags):
    html = viewer.get("/", {"q": "dark"}).content.decode()
    assert '<label for="flag-search">Search</label>' in html
    assert re.search(r'<input type="search" id="flag-search" name="q" value="dark"', html)
    assert 'hx-trigger="input changed delay:200ms, search"' in html


def test_going_back_to_a_pushed_search_gets_the_whole_page(viewer, three_flags):
    html = viewer.get("/", {"q": "dark"}, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true").content
    assert b"<html" in html and b'id="flag-search"' in html


def test_open_alerts_are_counted_per_flag_with_the_worst_severity(viewer, three_flags):
    dark = Flag.objects.get(key="dark_theme")
    patch = Flag.objects.get(key="patch_mode_enabled")
    open_alert(dark, Severity.WARNING)
    open_alert(dark, Severity.CRITICAL, AlertState.ACKNOWLEDGED)
    open_alert(dark, Severity.CRITICAL, AlertState.RESOLVED)  # not open
    open_alert(patch, Severity.WARNING)
    assert open_alerts_by_flag() == {dark.pk: {"count": 2, "severity": "critical"},
                                     patch.pk: {"count": 1, "severity": "warning"}}
    html = viewer.get("/").content.decode()
    assert ('<a class="badge sev-critical" href="/flags/dark_theme/#alerts">2 open, worst critical</a>' in html)
    assert '<a class="badge sev-warning" href="/flags/patch_mode_enabled/#alerts">1 open, worst warning</a>' in html
    row = html[html.index('data-flag="search_v2"'):]
    assert '<span class="muted">none</span>' in row[:row.index("</tr>")]


def test_the_last_change_says_when_in_utc_with_seconds_who_where_and_what(viewer, three_flags):
    services.flag_set_rollout(flag="dark_theme", percentage=5, enabled=True, actor=Actor.system("release-bot"),
                              source=Source.API)
    entry = AuditEntry.objects.filter(flag_key="dark_theme").latest("id")
    html = viewer.get("/").content.decode()
    row = html[html.index('data-flag="dark_theme"'):]
    row = row[:row.index("</tr>")]
    assert f"{entry.created_at:%Y-%m-%d %H:%M:%S} UTC</span> by release-bot (API)" in row
    assert "update: enabled: False → True, rollout_percentage: 0.00 → 5.00" in row


def test_the_list_makes_as_many_queries_for_twelve_flags_as_for_two(viewer, make_flag, django_assert_max_num_queries):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert viewer.get("/").status_code == 200
        return len(queries)

    for key in ("a1", "a2"):
        open_alert(make_flag(key), Severity.WARNING)
    viewer.get("/")  # the session and the user's groups, once
    two = count()
    for i in range(10):
        flag = make_flag(f"b{i}")
        open_alert(flag, Severity.CRITICAL)
        services.flag_set_rollout(flag=flag, percentage=1, actor=Actor.system("bot"), source=Source.API)
    assert count() == two
    # session, user, groups; flags, their last changes, plans, open alerts
    with django_assert_max_num_queries(7):
        viewer.get("/", {"q": "b"})


def test_a_manager_sees_the_new_flag_link_and_a_viewer_does_not(manager, viewer, three_flags):
    link = '<a class="button primary" href="/flags/new">New flag</a>'
    assert link in manager.get("/").content.decode()
    assert link not in viewer.get("/").content.decode()
    assert "New flag" not in viewer.get("/").content.decode()


# --- the new flag form -----------------------------------------------------------------------------


def test_the_form_has_the_labelled_fields_with_the_model_defaults(manager):
    response = manager.get(NEW)
    html = response.content.decode()
    assert response.status_code == 200
    for field, label in [("key", "Key"), ("name", "Name"), ("description", "Description"),
                         ("treatment_mode", "Treatment mode"), ("baseline_mode", "Baseline mode")]:
        assert f'<label for="id_{field}">{label}</label>' in html
    assert re.search(r'name="treatment_mode" value="patch"', html)
    assert re.search(r'name="baseline_mode" value="single"', html)
    assert '<button type="submit" class="primary">Create flag</button>' in html


def test_creating_a_flag_audits_it_and_sends_the_browser_to_its_page(manager):
    response = manager.post(NEW, VALID)
    assert response.status_code == 303 and response["Location"] == "/flags/checkout_redesign/"
    flag = Flag.objects.get(key="checkout_redesign")
    assert (flag.name, flag.description, flag.treatment_mode, flag.baseline_mode) == (
        "Checkout redesign", "One-page checkout", "patch", "single")
    # A new flag never exposes anyone.
    assert (flag.enabled, flag.rollout_percentage) == (False, Decimal("0.00"))
    entry = AuditEntry.objects.get(flag=flag)
    assert (entry.action, entry.actor, entry.actor_kind, entry.source) == ("create", "pm", "user", "ui")
    assert entry.after["enabled"] is False and entry.after["rollout_percentage"] == "0.00"
    assert AlertRule.objects.filter(flag=flag).exists()  # flag_created's receivers ran too
    assert manager.get(response["Location"]).status_code == 200


def test_an_htmx_post_is_redirected_with_hx_redirect(manager):
    response = manager.post(NEW, VALID, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"] == "/flags/checkout_redesign/"
    assert Flag.objects.filter(key="checkout_redesign").exists()


def test_a_flag_may_be_called_new_and_keeps_its_own_page(manager):
    assert manager.post(NEW, {**VALID, "key": "new"})["Location"] == "/flags/new/"
    assert b"Why does this user get it?" in manager.get("/flags/new/").content
    assert b"Create flag" in manager.get(NEW).content


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"key": "Bad Key"}, "key", "Use lowercase letters, digits, underscores and hyphens"),
    ({"key": "-starts-with-hyphen"}, "key", "Use lowercase letters"),
    ({"key": "patch_mode_enabled"}, "key", "already exists"),
    ({"key": ""}, "key", "This field is required."),
    ({"key": "k" * 101}, "key", "at most 100 characters"),
    ({"key": "nul\x00key"}, "key", "Null characters are not allowed."),
    ({"name": ""}, "name", "This field is required."),
    ({"name": "   "}, "name", "This field is required."),
    ({"name": "n" * 201}, "name", "at most 200 characters"),
    ({"description": "d" * 10_001}, "description", "at most 10,000 characters"),  # the service's own limit
    ({"treatment_mode": "Patch Mode"}, "treatment_mode", "A mode is a slug"),
    ({"baseline_mode": "m" * 51}, "baseline_mode", "at most 50 characters"),
    ({"baseline_mode": "patch"}, "baseline_mode", "must differ from the treatment mode"),
])
def test_invalid_input_is_refused_next_to_its_field_keeping_what_was_typed(manager, flag, change, field, message):
    before = (Flag.objects.count(), AuditEntry.objects.count())
    data = {**VALID, **change}
    response = manager.post(NEW, data, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 400 and "<html" not in html
    error = re.search(rf'<p class="field-error" id="id_{field}_error" role="alert">([^<]*)</p>', html)
    assert error and message in error.group(1).replace("&#x27;", "'")
    assert re.search(rf'aria-describedby="[^"]*id_{field}_error"', html)  # the field points at its message
    if field != "name":
        assert 'value="Checkout redesign"' in html  # what was typed is kept
    if field != "description":
        assert "One-page checkout</textarea>" in html
    assert (Flag.objects.count(), AuditEntry.objects.count()) == before


def test_a_refused_plain_post_renders_the_whole_page_with_400(manager, flag):
    response = manager.post(NEW, {**VALID, "key": "patch_mode_enabled"})
    assert response.status_code == 400 and b"<html" in response.content and b"already exists" in response.content


def test_a_service_refusal_the_form_cannot_see_lands_next_to_its_field(manager, monkeypatch):
    from django.core.exceptions import ValidationError

    def refuse(**kwargs):
        raise ValidationError({"key": ["a flag with key 'checkout_redesign' already exists"], "salt": ["bad salt"]})

    monkeypatch.setattr(services, "flag_create", refuse)  # a racing creation between the form and the service
    response = manager.post(NEW, VALID)
    html = response.content.decode()
    assert response.status_code == 400 and "already exists" in html and "bad salt" in html
    assert not Flag.objects.filter(key="checkout_redesign").exists()


@pytest.mark.parametrize("group", ["Rollout viewers", None])
def test_only_managers_may_create_flags(client_in, group):
    client = client_in(group)
    assert client.get(NEW).status_code == 403
    assert client.post(NEW, VALID).status_code == 403
    assert not Flag.objects.filter(key="checkout_redesign").exists()


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get(NEW)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


def test_other_methods_are_refused(manager):
    assert manager.put(NEW).status_code == 405
