"""The audit log page (dashboard.views.audit) and its selector, through Django's test client."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from dashboard.views.audit import cursor_text
from flags import selectors, services
from flags.actors import Actor
from flags.models import ActorKind, AuditEntry, Source
from tests.conftest import requires_postgres

pytestmark = pytest.mark.django_db

AUDIT = "/audit/"
HTMX = {"HX-Request": "true"}


@pytest.fixture
def viewer(client_in):
    return client_in("Rollout viewers", "watcher")


@pytest.fixture
def history(make_flag):
    """Two flags, changed by different people through different doors."""
    patch = make_flag("patch_mode_enabled")  # create, by test-suite (system), command line
    dark = make_flag("dark_theme")
    services.flag_set_rollout(flag=patch, percentage=10, enabled=True, actor=Actor(ActorKind.USER, "Alice.Ops"),
                              source=Source.UI, reason="week 1")
    services.flag_set_rollout(flag=patch, percentage=40, actor=Actor(ActorKind.USER, "alice.ops"), source=Source.UI,
                              reason="week 3")
    services.flag_update(flag=dark, enabled=True, actor=Actor.for_api_key("release-bot"), source=Source.API)
    services.override_add(flag=dark, user_id="u-42", kind="allow", actor=Actor(ActorKind.USER, "bob"),
                          source=Source.ADMIN, reason="beta tester")
    return {"patch": patch, "dark": dark}


def rows(response) -> list[str]:
    """Each row of the table as its text, whitespace collapsed."""
    html = response.content.decode()
    found = re.findall(r'<tr class="audit-row".*?</tr>', html, re.S)
    cells = (re.sub(r"<[^>]+>", "", re.sub(r"</?(td|li|summary)\b[^>]*>", " ", row)) for row in found)
    return [" ".join(unescape(text).split()) for text in cells]


def actions(response) -> list[str]:
    return re.findall(r'<td class="audit-action"[^>]*><span class="mono">([^<]+)</span>', response.content.decode())


# --- who may look ---------------------------------------------------------------------------------


def test_anonymous_is_sent_to_log_in():
    response = Client().get(AUDIT)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/audit/")


def test_a_user_in_neither_group_gets_403(client_in, history):
    response = client_in(None, "stranger").get(AUDIT)
    assert response.status_code == 403
    assert b"week 3" not in response.content


@pytest.mark.parametrize("group", ["Rollout viewers", "Rollout managers"])
def test_viewers_and_managers_see_the_log(client_in, history, group):
    response = client_in(group).get(AUDIT)
    assert response.status_code == 200
    assert len(rows(response)) == 6


def test_posting_is_refused(viewer):
    assert viewer.post(AUDIT).status_code == 405


# --- what a row says ------------------------------------------------------------------------------


def test_rows_are_newest_first_with_seconds_flag_link_actor_kind_source_and_reason(viewer, history):
    response = viewer.get(AUDIT)
    assert actions(response) == ["override_add", "enable", "set_rollout", "update", "create", "create"]
    entry = AuditEntry.objects.get(action="set_rollout")
    row = rows(response)[2]
    assert row.startswith(f"{entry.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC patch_mode_enabled")
    assert "alice.ops (user) dashboard set_rollout" in row
    assert row.endswith("rollout_percentage: 10.00% → 40.00% week 3")
    html = response.content.decode()
    assert '<a href="/flags/patch_mode_enabled/">patch_mode_enabled</a>' in html
    assert "release-bot (API key) API enable enabled: off → on" in rows(response)[1]
    assert "bob (user) Django admin override_add kind: allow note: (empty) user_id: u-42 beta tester" in (
        rows(response)[0])


def test_a_change_of_two_fields_shows_both(viewer, history):
    row = rows(viewer.get(AUDIT))[3]
    assert "enabled: off → on rollout_percentage: 0.00% → 10.00% week 1" in row


def test_a_new_flag_shows_its_settings_folded(viewer, history):
    response = viewer.get(AUDIT + "?flag=dark_theme&action=create")
    (row,) = rows(response)
    assert "<details><summary>10 fields</summary>" in response.content.decode()
    assert "enabled: off" in row and "rollout_percentage: 0.00%" in row and "key: dark_theme" in row
    assert "version" not in row


def test_lists_of_user_ids_show_as_counts(viewer, flag, actor):
    services.overrides_import(flag=flag, kind="allow", text="u1\nu2\nu3", actor=actor, source=Source.CLI)
    row = rows(viewer.get(AUDIT + "?action=overrides_import"))[0]
    assert "allow_count: 0 → 3" in row
    assert "added: 3 users" in row
    assert "u1" not in row


def test_changes_property_formats_each_kind_of_value(flag, actor):
    services.flag_set_rollout(flag=flag, percentage="12.5", enabled=True, actor=actor, source=Source.CLI)
    services.override_add(flag=flag, user_id="u1", kind="deny", actor=actor, source=Source.CLI)
    services.override_remove(flag=flag, user_id="u1", actor=actor, source=Source.CLI)
    rollout, added, removed = (AuditEntry.objects.get(action=a) for a in ("update", "override_add", "override_remove"))
    assert rollout.changes == [("enabled", "off", "on"), ("rollout_percentage", "0.00%", "12.50%")]
    assert added.changes == [("kind", None, "deny"), ("note", None, "(empty)"), ("user_id", None, "u1")]
    assert removed.changes == [("kind", "deny", None), ("note", "(empty)", None), ("user_id", "u1", None)]


# --- filters --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["override_add", "enable", "set_rollout", "update", "create", "create"]),
    ("flag=patch_mode_enabled", ["set_rollout", "update", "create"]),
    ("flag=dark_theme", ["override_add", "enable", "create"]),
    ("actor=ALICE", ["set_rollout", "update"]),  # any case, part of the name
    ("actor=%20alice.ops%20", ["set_rollout", "update"]),  # surrounding spaces do not count
    ("actor=bot", ["enable"]),
    ("actor=%25", []),  # a LIKE wildcard is taken literally
    ("source=ui", ["set_rollout", "update"]),
    ("source=cli", ["create", "create"]),
    ("source=admin", ["override_add"]),
    ("action=create", ["create", "create"]),
    ("action=SET_ROLLOUT", ["set_rollout"]),
    ("action=no_such_action", []),  # an open set: a well-formed unknown action simply matches nothing
    ("flag=patch_mode_enabled&source=ui&actor=alice&action=update", ["update"]),
    ("flag=dark_theme&source=ui", []),
])
def test_each_filter_narrows_the_rows(viewer, history, query, expected):
    response = viewer.get(f"{AUDIT}?{query}")
    assert response.status_code == 200
    assert actions(response) == expected
    if not expected:
        assert "No audit entries match these filters." in response.content.decode()


def test_the_form_shows_the_filters_it_applied(viewer, history):
    html = viewer.get(AUDIT + "?flag=dark_theme&actor=bob&source=admin&action=override_add").content.decode()
    assert '<option value="dark_theme" selected>dark_theme</option>' in html
    assert '<option value="patch_mode_enabled">patch_mode_enabled</option>' in html
    assert 'name="actor" value="bob"' in html
    assert '<option value="admin" selected>Django admin</option>' in html
    assert 'name="action" value="override_add"' in html


def test_the_source_select_offers_every_source_by_its_name(viewer):
    html = viewer.get(AUDIT).content.decode()
    for label in ["dashboard", "command line", "API", "alert remediation", "rollout plan", "Django admin", "system"]:
        assert f">{label}</option>" in html


@pytest.mark.parametrize(("query", "field", "message"), [
    ("source=bogus", "Source", "Unknown source “bogus”: choose one of Django admin, dashboard, API"),
    ("source=dashboard", "Source", "Unknown source “dashboard”"),  # the value, not the name shown
    ("flag=no_such_flag", "Flag", "No flag has the key “no_such_flag”."),
    ("flag=" + "x" * 101, "Flag", "at most 100 characters"),
    ("actor=a%00b", "Who", "Null characters are not allowed."),
    ("actor=" + "a" * 201, "Who", "at most 200 characters"),
    ("action=set%20rollout", "Action", "An action is a word"),
    ("before=yesterday", "Page (before)", "Not a position in the log"),
    ("after=2026-02-30T10:00:00.000000Z_5", "Page (after)", "Not a position in the log"),
    ("before=2026-01-01T10:00:00.000000Z_5&after=2026-01-01T10:00:00.000000Z_5", "", "Give before or after"),
])
def test_invalid_filters_are_400_naming_the_field(viewer, history, query, field, message):
    response = viewer.get(f"{AUDIT}?{query}")
    assert response.status_code == 400
    html = unescape(response.content.decode())
    alert = re.search(r'<div class="alert error" role="alert" data-error-message>(.*?)</div>', html, re.S)
    assert alert is not None
    text = " ".join(re.sub(r"<[^>]+>", " ", alert[1]).split())
    assert message in text
    if field:
        assert f"<strong>{field}</strong>:" in alert[1]
    assert rows(response) == []
    assert 'id="audit-filters"' in html  # the whole page, so the filters can be corrected


def test_an_invalid_filter_over_htmx_answers_400_with_the_table_partial(viewer, history):
    response = viewer.get(AUDIT + "?source=bogus", headers=HTMX)
    assert response.status_code == 400
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="audit-table">')
    assert "<strong>Source</strong>: Unknown source" in html


# --- htmx -----------------------------------------------------------------------------------------


def test_an_htmx_request_gets_only_the_table(viewer, history):
    response = viewer.get(AUDIT + "?actor=bob", headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="audit-table">')
    assert "<html" not in html and 'id="audit-filters"' not in html
    assert actions(response) == ["override_add"]


def test_a_history_restore_gets_the_whole_page(viewer, history):
    response = viewer.get(AUDIT + "?actor=bob", headers={**HTMX, "HX-History-Restore-Request": "true"})
    html = response.content.decode()
    assert "<html" in html and 'id="audit-filters"' in html
    assert actions(response) == ["override_add"]


def test_the_form_applies_filters_with_htmx_and_without_javascript(viewer):
    html = viewer.get(AUDIT).content.decode()
    form = re.search(r'<form id="audit-filters"[^>]*>', html, re.S)[0]
    assert 'method="get" action="/audit/"' in form  # works without JavaScript
    assert 'hx-get="/audit/"' in form and 'hx-target="#audit-table"' in form and 'hx-push-url="true"' in form
    assert '<button type="submit" class="primary">Filter</button>' in html


# --- pages ----------------------------------------------------------------------------------------


@pytest.fixture
def long_history(flag, actor):
    """120 entries: the create, then 119 changes, three of them at the same moment (ties broken by id)."""
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    tie = start + timedelta(minutes=68)
    for i in range(1, 120):
        at = tie if 68 <= i <= 70 else start + timedelta(minutes=i)
        services.flag_update(flag=flag, rollout_percentage=i % 100, actor=actor, source=Source.CLI, now=at)
    return list(AuditEntry.objects.order_by("-created_at", "-id").values_list("id", flat=True))


def ids(response) -> list[int]:
    return [int(i) for i in re.findall(r'<tr class="audit-row" data-id="(\d+)"', response.content.decode())]


def link(response, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}"', response.content.decode())
    return unescape(found[1]) if found else None


def test_pages_of_50_walk_older_and_back_newer_without_gaps_or_repeats(viewer, long_history):
    first = viewer.get(AUDIT)
    assert ids(first) == long_history[:50]
    assert link(first, "prev") is None
    second = viewer.get(AUDIT + link(first, "next"))
    assert ids(second) == long_history[50:100]
    third = viewer.get(AUDIT + link(second, "next"))
    assert ids(third) == long_history[100:120]
    assert link(third, "next") is None
    back = viewer.get(AUDIT + link(third, "prev"))
    assert ids(back) == long_history[50:100]
    assert ids(viewer.get(AUDIT + link(back, "prev"))) == long_history[:50]


def test_a_page_boundary_inside_a_tie_loses_nothing(flag, actor):
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    for i in range(1, 8):
        services.flag_update(flag=flag, rollout_percentage=i, actor=actor, source=Source.CLI, now=at)
    expected = list(AuditEntry.objects.order_by("-created_at", "-id"))
    seen, page = [], selectors.audit_search(limit=3)
    while True:
        seen += page.entries
        if page.older is None:
            break
        page = selectors.audit_search(limit=3, before=page.older)
    assert seen == expected


def test_new_entries_do_not_shift_an_older_page(viewer, long_history, flag, actor):
    first = viewer.get(AUDIT)
    services.flag_set_rollout(flag=flag, percentage=55, actor=actor, source=Source.CLI)
    assert ids(viewer.get(AUDIT + link(first, "next"))) == long_history[50:100]


def test_page_links_keep_the_filters(viewer, long_history):
    first = viewer.get(AUDIT + "?flag=patch_mode_enabled&actor=suite&source=cli")
    older = link(first, "next")
    assert older.startswith("?flag=patch_mode_enabled&actor=suite&source=cli&before=")
    second = viewer.get(AUDIT + older)
    assert ids(second) == long_history[50:100]
    assert link(second, "prev").startswith("?flag=patch_mode_enabled&actor=suite&source=cli&after=")


def test_a_newer_link_near_the_top_shows_the_newest_page(viewer, long_history):
    # Fewer than a page is newer than the tenth entry: "Newer" lands on the newest page, not a short one.
    entry = AuditEntry.objects.get(pk=long_history[10])
    response = viewer.get(AUDIT, {"after": cursor_text((entry.created_at, entry.pk))})
    assert ids(response) == long_history[:50]
    assert link(response, "prev") is None


def test_the_page_costs_the_same_few_queries_however_many_rows(viewer, long_history, django_assert_max_num_queries):
    # session, user, groups, the flag keys for the select, the flag filter's flag, one page of entries
    with django_assert_max_num_queries(6):
        response = viewer.get(AUDIT + "?flag=patch_mode_enabled")
    assert len(ids(response)) == 50
    with django_assert_max_num_queries(4):  # htmx: no select to fill, no flag to look up
        assert len(ids(viewer.get(AUDIT + "?source=cli", headers=HTMX))) == 50


# --- on PostgreSQL --------------------------------------------------------------------------------


@requires_postgres
@pytest.mark.parametrize("position", ["none", "before", "after"])
def test_filtering_by_flag_can_start_in_the_flag_index_at_the_position(flag, long_history, position):
    # On 120,000 rows PostgreSQL answers each of these in under a millisecond: from audit_flag_recent_idx when the
    # flag is a small part of the log, along the created_at index when it is a large part. This log is too small
    # for the planner to choose, so the other indexes go (inside the test's transaction, rolled back after) and
    # what must hold is checked: the flag and the page position are conditions of that index, not filters.
    at = AuditEntry.objects.get(pk=long_history[60])
    cursor_at = {"none": {}, "before": {"before": (at.created_at, at.pk)}, "after": {"after": (at.created_at, at.pk)}}
    with CaptureQueriesContext(connection) as ran:
        selectors.audit_search(flag=flag, **cursor_at[position])
    table = AuditEntry._meta.db_table
    with connection.cursor() as cursor:
        others = [name for name, info in connection.introspection.get_constraints(cursor, table).items()
                  if info["index"] and not info["primary_key"] and name != "audit_flag_recent_idx"]
        assert others  # the created_at and flag_id indexes
        for name in others:
            cursor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + ran.captured_queries[-1]["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    condition = re.search(r"Index Cond: \((.*)\)$", plan, re.M)
    assert "audit_flag_recent_idx" in plan and condition is not None, plan
    assert f"flag_id = {flag.pk}" in condition[1], plan
    if position != "none":
        assert {"before": "created_at <= ", "after": "created_at >= "}[position] in condition[1], plan


def test_a_segments_change_is_a_row_of_its_own_naming_the_segment(viewer, history):
    services.segment_create(key="beta", name="Beta", included=["b1"], actor=Actor(ActorKind.USER, "carol"),
                            source=Source.UI, reason="beta opens")
    response = viewer.get(AUDIT)
    assert response.status_code == 200
    assert actions(response)[0] == "segment_create"
    assert rows(response)[0].endswith("UTC segment beta carol (user) dashboard segment_create 6 fields "
                                      "conditions: 0 items description: (empty) excluded: 0 items flags: 0 items "
                                      "included: 1 item name: Beta beta opens")
