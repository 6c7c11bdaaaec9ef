"""The flags list and the "New flag" form in a real browser: live search, open alerts, creating a flag."""

from __future__ import annotations

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from alerts.models import Alert, AlertRule, AlertState, Severity
from flags.models import AuditEntry, Flag
from tests.browser import login

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def three_flags(make_flag):
    make_flag("patch_mode_enabled", name="Patch Mode", description="Send diffs instead of whole files")
    make_flag("dark_theme", name="Dark theme", description="Night colours for the editor")
    make_flag("search_v2", name="New search", description="Faster PATCH lookups")


def rows(page):
    return page.locator("#flag-table tbody tr.flag-row")


def test_typing_in_search_narrows_the_table_without_reloading_the_page(page, user_in, three_flags):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/")
    expect(rows(page)).to_have_count(3)
    page.evaluate("window.__samePage = 'yes'")
    search = page.get_by_role("searchbox", name="Search")
    search.press_sequentially("PATCH", delay=30)  # key, name or description, any case
    expect(rows(page)).to_have_count(2)
    expect(page.locator("#flag-table")).to_contain_text("patch_mode_enabled")
    expect(page.locator("#flag-table")).to_contain_text("search_v2")
    search.fill("night")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("dark_theme")
    search.fill("no-such-thing")
    expect(rows(page)).to_have_count(0)
    expect(page.locator("#flag-table")).to_contain_text("No flags match")
    search.fill("")
    expect(rows(page)).to_have_count(3)
    assert page.evaluate("window.__samePage") == "yes"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_the_periodic_refresh_keeps_the_search(page, user_in, three_flags):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/")
    page.get_by_role("searchbox", name="Search").fill("dark")
    expect(rows(page)).to_have_count(1)
    # The next 10 s refresh: its request carries the search box's value, and the table stays narrowed.
    with page.expect_response(lambda r: "q=dark" in r.url and r.request.headers.get("hx-trigger") == "flag-table",
                              timeout=15_000):
        pass
    page.wait_for_timeout(300)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("dark_theme")


def test_a_reload_after_a_search_keeps_it(page, user_in, three_flags):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/")
    page.get_by_role("searchbox", name="Search").fill("theme")
    expect(rows(page)).to_have_count(1)
    page.wait_for_url("**/?q=theme")
    page.reload()
    expect(page.get_by_role("searchbox", name="Search")).to_have_value("theme")
    expect(rows(page)).to_have_count(1)


def test_open_alerts_show_the_count_and_worst_severity_and_link_to_the_flag(page, user_in, three_flags):
    flag = Flag.objects.get(key="dark_theme")
    rules = AlertRule.objects.filter(flag=flag).order_by("id")  # one open episode per rule
    for rule, severity, state in [(rules[0], Severity.WARNING, AlertState.FIRING),
                                  (rules[1], Severity.CRITICAL, AlertState.ACKNOWLEDGED),
                                  (rules[2], Severity.CRITICAL, AlertState.RESOLVED)]:
        Alert.objects.create(rule=rule, flag=flag, severity=severity, state=state, message="test")
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/")
    row = page.locator("tr.flag-row[data-flag='dark_theme']")
    expect(row.locator(".open-alerts")).to_have_text("2 open, worst critical")
    expect(page.locator("tr.flag-row[data-flag='search_v2'] .open-alerts")).to_have_text("none")
    row.get_by_role("link", name="2 open, worst critical").click()
    page.wait_for_url("**/flags/dark_theme/#alerts")


def test_the_list_fits_a_390_px_phone(page, user_in, three_flags):
    user_in("pm", "Rollout managers")
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, "pm", "/")
    expect(rows(page)).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(page.get_by_role("searchbox", name="Search")).to_be_in_viewport()
    expect(page.get_by_role("link", name="New flag")).to_be_in_viewport()


def test_a_viewer_sees_no_new_flag_link(page, user_in, three_flags):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/")
    expect(rows(page)).to_have_count(3)
    expect(page.get_by_role("link", name="New flag")).to_have_count(0)


def test_a_manager_creates_a_flag_that_starts_off_and_lands_on_its_page(page, user_in, three_flags):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/")
    page.get_by_role("link", name="New flag").click()
    page.wait_for_url("**/flags/new")
    expect(page.get_by_label("Treatment mode", exact=True)).to_have_value("patch")
    expect(page.get_by_label("Baseline mode", exact=True)).to_have_value("single")
    page.get_by_label("Key", exact=True).fill("checkout_redesign")
    page.get_by_label("Name", exact=True).fill("Checkout redesign")
    page.get_by_label("Description", exact=True).fill("The one-page checkout")
    page.get_by_role("button", name="Create flag").click()
    page.wait_for_url("**/flags/checkout_redesign/")
    expect(page.locator("#flag-state")).to_have_text("disabled")
    expect(page.locator("#rollout-value")).to_have_text("0.00%")
    flag = Flag.objects.get(key="checkout_redesign")
    assert (flag.name, flag.enabled, flag.rollout_percentage) == ("Checkout redesign", False, Decimal("0.00"))
    entry = AuditEntry.objects.get(flag=flag)
    assert (entry.action, entry.actor, entry.source) == ("create", "pm", "ui")


def test_invalid_input_is_shown_next_to_the_field_and_keeps_what_was_typed(page, user_in, three_flags):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/new")
    page.get_by_label("Key", exact=True).fill("dark_theme")  # taken
    page.get_by_label("Name", exact=True).fill("Another dark theme")
    page.get_by_label("Baseline mode", exact=True).fill("Not A Slug")
    page.get_by_role("button", name="Create flag").click()
    expect(page.locator("#id_key_error")).to_contain_text("already exists")
    expect(page.locator("#id_baseline_mode_error")).to_contain_text("slug")
    expect(page.get_by_label("Name", exact=True)).to_have_value("Another dark theme")
    expect(page.get_by_label("Key", exact=True)).to_have_value("dark_theme")
    assert page.url.endswith("/flags/new")
    assert Flag.objects.count() == 3
    # Chromium logs the deliberate 400 itself.
    assert all("400" in error for error in page.console_errors)  # type: ignore[attr-defined]
    page.console_errors.clear()  # type: ignore[attr-defined]
    # Corrected, the same form goes through.
    page.get_by_label("Key", exact=True).fill("dark_theme_2")
    page.get_by_label("Baseline mode", exact=True).fill("single")
    page.get_by_role("button", name="Create flag").click()
    page.wait_for_url("**/flags/dark_theme_2/")
    assert Flag.objects.filter(key="dark_theme_2", enabled=False).exists()
