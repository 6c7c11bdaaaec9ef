"""The "Why does this user get it?" box on the flag page, in a real browser."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from flags import services
from flags.models import Source
from tests.browser import login

pytestmark = pytest.mark.django_db(transaction=True)

# From tests/data/murmur3-bucket-vectors.json (salt patch_mode_enabled): user_1 -> 155, user_0 -> 4572.


def check(page, user_id: str) -> None:
    box = page.locator("#explain")
    box.get_by_label("User id", exact=True).fill(user_id)
    box.get_by_role("button", name="Check").click()


def test_a_viewer_checks_users_without_leaving_the_page(page, user_in, patch_flag, actor):
    services.override_add(flag=patch_flag.key, user_id="vip", kind="allow", actor=actor, source=Source.CLI)
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/flags/patch_mode_enabled/")
    page.evaluate("window.__samePage = 'yes'")
    box = page.locator("#explain")
    expect(box.get_by_role("heading", name="Why does this user get it?")).to_be_visible()

    check(page, "user_1")
    expect(box.locator("#explain-verdict")).to_contain_text("gets the feature")
    expect(box.locator("#explain-reason")).to_have_text("bucket 155 is below the rollout 10.00% (IN_ROLLOUT)")
    expect(box.locator("#explain-bucket")).to_contain_text("bucket 155 of 0..9999 (1.55%)")
    expect(box.locator("#explain-threshold")).to_contain_text("a rollout of 1.56% or more (now 10.00%)")

    check(page, "user_0")
    expect(box.locator("#explain-verdict")).to_contain_text("does not get the feature")
    expect(box.locator("#explain-reason")).to_have_text("bucket 4572 is not below the rollout 10.00% (OUT_OF_ROLLOUT)")
    expect(box.locator("#explain-threshold")).to_contain_text("45.73% or more")

    check(page, "vip")
    expect(box.locator("#explain-reason")).to_have_text("on the allow list (ALLOW_LIST)")
    expect(box.locator("#explain-threshold")).to_contain_text("The allow list overrides the rollout")

    assert page.evaluate("window.__samePage") == "yes"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    expect(box.get_by_label("User id", exact=True)).to_have_value("vip")


def test_a_blank_user_id_is_refused_in_the_box(page, user_in, patch_flag):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/flags/patch_mode_enabled/")
    check(page, "   ")
    expect(page.locator("#explain .alert.error")).to_contain_text("A user id must not be blank.")
    expect(page.locator("#explain-verdict")).to_have_count(0)
    assert all("400" in error for error in page.console_errors)  # type: ignore[attr-defined]
    page.console_errors.clear()  # type: ignore[attr-defined]
    check(page, "user_1")  # the box still works afterwards
    expect(page.locator("#explain-reason")).to_contain_text("IN_ROLLOUT")


def test_the_shown_explanation_follows_the_kill_switch(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    check(page, "user_1")
    expect(page.locator("#explain-reason")).to_contain_text("(IN_ROLLOUT)")
    page.locator("#explain-user-id").fill("someone else, not checked")
    page.on("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Disable (kill switch)").click()
    expect(page.locator("#explain-reason")).to_have_text("the kill switch is off (DISABLED)")
    expect(page.locator("#explain-verdict")).to_contain_text("user_1")
    expect(page.locator("#explain-threshold")).to_contain_text("nobody gets it at any percentage")


def test_the_flag_page_with_an_explanation_fits_a_390_px_phone(page, user_in, patch_flag):
    user_in("watcher", "Rollout viewers")
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, "watcher", "/flags/patch_mode_enabled/")
    check(page, "user_0")
    expect(page.locator("#explain-reason")).to_contain_text("OUT_OF_ROLLOUT")
    expect(page.locator("#guardrails h2")).to_be_visible()  # the lazily loaded panels are in too
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
