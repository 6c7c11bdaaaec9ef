"""The audit log page in a real browser: filters applied without a reload, before → after, pages, phones."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from flags import services
from flags.actors import Actor
from flags.models import ActorKind, Source
from tests.browser import PASSWORD, login

pytestmark = pytest.mark.django_db(transaction=True)

WHEN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


@pytest.fixture
def history(patch_flag, make_flag):
    """patch_mode_enabled: created and set to 10% by the CLI, then raised to 40% by alice on the dashboard;
    dark_theme: created by the CLI, turned on by an API key."""
    dark = make_flag("dark_theme", name="Dark theme")
    services.flag_set_rollout(flag=patch_flag, percentage=40, actor=Actor(ActorKind.USER, "alice"),
                              source=Source.UI, reason="week 3")
    services.flag_update(flag=dark, enabled=True, actor=Actor.for_api_key("release-bot"), source=Source.API)


def rows(page):
    return page.locator("#audit-table tr.audit-row")


def test_each_filter_narrows_the_rows_without_reloading_the_page(page, user_in, history):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/audit/")
    expect(rows(page)).to_have_count(5)
    page.evaluate("window.__samePage = 'yes'")

    page.get_by_label("Flag", exact=True).select_option("dark_theme")
    expect(rows(page)).to_have_count(2)
    expect(rows(page).first).to_contain_text("release-bot")
    page.wait_for_url(re.compile(r"/audit/\?flag=dark_theme&"))  # bookmarkable

    page.get_by_label("Flag", exact=True).select_option("")
    expect(rows(page)).to_have_count(5)
    page.get_by_label("Who", exact=True).press_sequentially("ALI", delay=30)  # any case, part of the name
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("alice (user)")
    page.wait_for_url(re.compile(r"actor=ALI"))

    page.get_by_label("Who", exact=True).fill("")
    expect(rows(page)).to_have_count(5)
    page.get_by_label("Source", exact=True).select_option(label="API")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first.locator(".audit-source")).to_have_text("API")
    page.get_by_label("Source", exact=True).select_option(label="command line")
    expect(rows(page)).to_have_count(3)

    page.get_by_label("Action", exact=True).fill("create")
    expect(rows(page)).to_have_count(2)
    page.get_by_label("Action", exact=True).fill("no_such_action")
    expect(page.locator("#audit-table")).to_contain_text("No audit entries match these filters.")
    expect(rows(page)).to_have_count(0)

    assert page.evaluate("window.__samePage") == "yes"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_a_row_shows_before_and_after_and_the_time_with_seconds(page, user_in, history):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/audit/?flag=patch_mode_enabled")
    raised = rows(page).first
    expect(raised.locator(".audit-changes")).to_have_text("rollout_percentage: 10.00% → 40.00%")
    expect(raised.locator(".audit-when")).to_have_text(WHEN)
    expect(raised.locator(".audit-actor")).to_have_text("alice (user)")
    expect(raised.locator(".audit-source")).to_have_text("dashboard")
    expect(raised.locator(".audit-reason")).to_have_text("week 3")
    expect(rows(page).nth(1).locator(".audit-changes li")).to_have_text(
        ["enabled: off → on", "rollout_percentage: 0.00% → 10.00%"])
    raised.get_by_role("link", name="patch_mode_enabled").click()
    page.wait_for_url("**/flags/patch_mode_enabled/")


def test_the_filters_work_without_javascript(browser, live_server, user_in, history):
    user_in("watcher", "Rollout viewers")
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        login(page, "watcher", "/audit/")
        expect(rows(page)).to_have_count(5)
        page.get_by_label("Source", exact=True).select_option(label="dashboard")
        page.get_by_label("Who", exact=True).fill("alice")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(re.compile(r"/audit/\?flag=&actor=alice&source=ui&action="))
        expect(rows(page)).to_have_count(1)
        expect(page.get_by_label("Who", exact=True)).to_have_value("alice")
        expect(page.get_by_label("Source", exact=True)).to_have_value("ui")
    finally:
        context.close()


def test_an_invalid_filter_in_the_url_says_which_and_why(page, user_in, history):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/audit/")
    response = page.goto("/audit/?source=bogus")
    assert response.status == 400
    expect(page.get_by_role("alert")).to_contain_text("Source: Unknown source “bogus”")
    expect(rows(page)).to_have_count(0)
    # Correcting it in the form brings the rows back in place.
    page.get_by_label("Source", exact=True).select_option(label="API")
    expect(rows(page)).to_have_count(1)
    expect(page.get_by_role("alert")).to_have_count(0)
    assert all("400" in error for error in page.console_errors)  # Chromium logs the deliberate 400 itself
    page.console_errors.clear()


def test_older_and_newer_pages_keep_the_filter_and_swap_in_place(page, user_in, flag, actor):
    for percentage in range(1, 56):  # 56 entries of this flag: two pages
        services.flag_set_rollout(flag=flag, percentage=percentage, actor=actor, source=Source.CLI)
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/audit/?flag=patch_mode_enabled")
    expect(rows(page)).to_have_count(50)
    expect(page.get_by_role("link", name="← Newer")).to_have_count(0)
    page.evaluate("window.__samePage = 'yes'")
    page.get_by_role("link", name="Older →").click()
    expect(rows(page)).to_have_count(6)
    expect(rows(page).last.locator(".audit-action")).to_have_text("create")
    page.wait_for_url(re.compile(r"\?flag=patch_mode_enabled&before="))
    page.get_by_role("link", name="← Newer").click()
    expect(rows(page)).to_have_count(50)
    expect(rows(page).first.locator(".audit-changes")).to_have_text("rollout_percentage: 54.00% → 55.00%")
    assert page.evaluate("window.__samePage") == "yes"


def test_the_log_fits_a_390_px_phone(page, user_in, history):
    user_in("watcher", "Rollout viewers")
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, "watcher", "/audit/")
    expect(rows(page)).to_have_count(5)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(page.get_by_label("Flag", exact=True)).to_be_in_viewport()
    expect(page.get_by_role("button", name="Filter")).to_be_in_viewport()
    box = rows(page).first.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390


def test_a_viewer_reaches_it_from_the_nav_and_a_stranger_gets_403(page, user_in, django_user_model, history):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    page.wait_for_url("**/audit/")
    expect(rows(page)).to_have_count(5)
    page.get_by_role("button", name="Log out").click()
    django_user_model.objects.create_user("stranger", password=PASSWORD)  # in neither group
    login(page, "stranger", "/audit/")
    assert page.goto("/audit/").status == 403
    expect(page.locator("body")).not_to_contain_text("release-bot")
    assert page.console_errors and all("403" in error for error in page.console_errors)
    page.console_errors.clear()
