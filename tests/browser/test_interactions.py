"""The flag page under pressure: refused, failed and lost requests never replace the page; the message
appears next to the control; the panel shows the server's state; typed reasons survive; and a change
made elsewhere shows within one refresh. In a real Chromium against a live server."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import expect

from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from tests.browser import login, login_with_the_form

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "/flags/patch_mode_enabled/"


def slider(page):  # type: ignore[no-untyped-def]
    return page.get_by_role("slider", name=re.compile("Rollout percentage"))


def nudge(page, key: str = "ArrowLeft", times: int = 1) -> None:
    slider(page).focus()
    for _ in range(times):
        page.keyboard.press(key)


def page_is_intact(page) -> None:  # type: ignore[no-untyped-def]
    """Still the whole flag page, styled, with its navigation: nothing replaced the document."""
    expect(page.locator("header.topbar nav")).to_be_visible()
    expect(page.locator("h1")).to_contain_text("patch_mode_enabled")
    expect(page.locator("#metrics")).to_have_count(1)
    assert page.evaluate("getComputedStyle(document.body).fontFamily").startswith("system-ui")


def expected_http_errors(page, *statuses: int | str) -> None:  # type: ignore[no-untyped-def]
    """Chromium logs every failed response itself; only the deliberate ones may be there."""
    unexpected = [e for e in page.console_errors if not any(str(s) in e for s in statuses)]
    assert unexpected == [], unexpected
    page.console_errors.clear()


def test_the_page_never_loads_django_htmxs_debug_handler(page, user_in, patch_flag, settings):
    # Under DEBUG, {% htmx_script %} adds a handler that replaces the whole document with any 4xx/500 body.
    settings.DEBUG = True
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    sources = page.eval_on_selector_all("script[src]", "nodes => nodes.map(n => n.getAttribute('src'))")
    assert any("htmx-2" in src for src in sources) and not any("django-htmx.js" in src for src in sources)


def test_a_stale_page_lowering_the_rollout_learns_of_the_conflict_first_and_keeps_the_reason(
        page, user_in, patch_flag):
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=80, actor=Actor.system("pm-bot"),
                              source=Source.API)
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    expect(slider(page)).to_have_value("80")
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=25, actor=Actor.system("ops-cli"),
                              source=Source.CLI)
    page.on("dialog", lambda d: pytest.fail(f"no confirmation may be asked: {d.message}"))
    page.fill("#rollout-reason", "cooling down")
    nudge(page, "ArrowLeft")  # 80 -> 79 on the page: a lowering, judged against the page's 80%
    error = page.locator("#controls .alert.error")
    expect(error).to_contain_text("ops-cli")
    expect(error).not_to_contain_text("needs confirmation")
    expect(slider(page)).to_have_value("25")  # the control shows the server's state
    expect(page.locator("#rollout-value")).to_have_text("25.00%")
    expect(page.locator("#rollout-reason")).to_have_value("cooling down")
    page_is_intact(page)
    assert Flag.objects.get(key="patch_mode_enabled").rollout_percentage == Decimal("25.00")
    expected_http_errors(page, 409)


def test_a_change_made_elsewhere_shows_in_the_rollout_panel_within_one_refresh(page, user_in, patch_flag):
    user_in("ops", "Rollout viewers")
    login(page, "ops", PAGE)
    expect(page.locator("#rollout-value")).to_have_text("10.00%")
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=35, actor=Actor.system("ops-cli"),
                              source=Source.CLI, reason="from the terminal")
    version = Flag.objects.get(key="patch_mode_enabled").version
    expect(page.locator("#rollout-value")).to_have_text("35.00%", timeout=14_000)  # the refresh is every 10 s
    expect(slider(page)).to_have_value("35")
    expect(page.locator("#flag-version")).to_have_text(str(version))
    expect(page.locator("#flag-last-change")).to_contain_text("ops-cli (command line)")
    expect(page.locator("#flag-last-change")).to_contain_text(" UTC")


def test_a_refresh_keeps_the_reason_being_typed_and_the_focus(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    reason = page.locator("#rollout-reason")
    reason.fill("half typed")
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=12, actor=Actor.system("ops-cli"),
                              source=Source.CLI)
    expect(page.locator("#rollout-value")).to_have_text("12.00%", timeout=14_000)
    expect(reason).to_have_value("half typed")
    assert page.evaluate("document.activeElement.id") == "rollout-reason"


def test_without_a_reason_the_slider_asks_for_one_and_enter_applies_it(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    page.on("dialog", lambda d: pytest.fail(f"unexpected dialog: {d.message}"))
    nudge(page, "ArrowRight", 5)  # 10 -> 15, no reason typed
    ask = page.locator("#controls .request-error")
    expect(ask).to_contain_text("Give a reason for moving the rollout to 15%")
    expect(page.locator("#rollout-reason")).to_be_focused()
    expect(slider(page)).to_have_value("15")  # kept, waiting for the reason
    assert Flag.objects.get(key="patch_mode_enabled").rollout_percentage == Decimal("10.00")
    page.keyboard.type("canary looks fine")
    page.keyboard.press("Enter")
    expect(page.locator("#controls .alert.ok")).to_contain_text("Rollout set to 15.00%")
    page_is_intact(page)
    entry = AuditEntry.objects.filter(flag__key="patch_mode_enabled").latest("id")
    assert (entry.action, entry.reason) == ("set_rollout", "canary looks fine")


def test_the_server_refuses_a_dashboard_change_without_a_reason_too(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    status = page.evaluate(
        """async () => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const r = await fetch('/flags/patch_mode_enabled/rollout', {method: 'POST',
                headers: {'X-CSRFToken': token, 'Content-Type': 'application/x-www-form-urlencoded'},
                body: 'rollout_percentage=11&expected_version=' + document.getElementById('flag-version').textContent});
            return [r.status, await r.text()];
        }"""
    )
    assert status[0] == 400 and "Give a reason" in status[1]
    assert Flag.objects.get(key="patch_mode_enabled").rollout_percentage == Decimal("10.00")
    expected_http_errors(page, 400)


def test_the_reason_can_be_made_optional(page, user_in, patch_flag, settings):
    settings.DASHBOARD_REASON_REQUIRED = False
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    nudge(page, "ArrowRight", 2)
    expect(page.locator("#controls .alert.ok")).to_contain_text("Rollout set to 12.00%")
    assert AuditEntry.objects.filter(flag__key="patch_mode_enabled").latest("id").reason == ""


def test_a_403_says_so_next_to_the_slider_and_leaves_the_page(page, user_in, patch_flag):
    user = user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    user.groups.set([Group.objects.get(name="Rollout viewers")])  # demoted while the page is open
    page.fill("#rollout-reason", "try")
    nudge(page, "ArrowRight", 2)
    message = page.locator("#controls .request-error")
    expect(message).to_contain_text("Only Rollout managers may change a rollout")
    page_is_intact(page)
    # The panel was reloaded with the server's state: a viewer's disabled slider, at the real 10%.
    expect(slider(page)).to_be_disabled()
    expect(slider(page)).to_have_value("10")
    assert Flag.objects.get(key="patch_mode_enabled").rollout_percentage == Decimal("10.00")
    expected_http_errors(page, 403)


def test_a_500_says_so_and_the_slider_goes_back_to_the_saved_value(page, user_in, patch_flag, monkeypatch):
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)

    def broken(**kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(services, "flag_set_rollout", broken)  # the live server runs in this process
    page.fill("#rollout-reason", "try")
    nudge(page, "ArrowRight", 3)
    expect(page.locator("#controls .request-error")).to_contain_text("Not saved: The server failed to answer (500)")
    expect(slider(page)).to_have_value("10")
    expect(page.locator("#rollout-value")).to_have_text("10.00%")
    page_is_intact(page)
    expected_http_errors(page, 500)


def test_losing_the_network_says_so_and_keeps_the_page(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    page.route("**/flags/patch_mode_enabled/**", lambda route: route.abort("internetdisconnected"))
    page.fill("#rollout-reason", "try")
    nudge(page, "ArrowRight", 3)
    expect(page.locator("#controls .request-error").first).to_contain_text("Could not reach the server")
    expect(slider(page)).to_have_value("10")
    page_is_intact(page)
    page.unroute("**/flags/patch_mode_enabled/**")
    assert Flag.objects.get(key="patch_mode_enabled").rollout_percentage == Decimal("10.00")
    # Chromium logs the failed loads and htmx logs each send error itself: nothing else may be there.
    expected_http_errors(page, "ERR_INTERNET_DISCONNECTED", "htmx:sendError", "htmx:afterRequest")


def test_an_ended_session_says_log_in_instead_of_swapping_in_the_login_page(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    page.context.clear_cookies(name="sessionid")  # the session expired or was logged out elsewhere
    page.get_by_label("Kill switch reason").fill("errors spiking")
    page.on("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Disable (kill switch)").click()
    message = page.locator("#controls .request-error")
    expect(message).to_contain_text("Your session has ended")
    expect(message.get_by_role("link", name="Log in")).to_have_attribute("href", re.compile(r"^/login/\?next="))
    expect(page.locator("#controls #id_username")).to_have_count(0)
    expect(page.get_by_label("Kill switch reason")).to_have_value("errors spiking")
    page_is_intact(page)
    assert Flag.objects.get(key="patch_mode_enabled").enabled is True
    expected_http_errors(page, 401)


def test_dragging_the_slider_with_the_mouse_logs_no_console_error(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", PAGE)
    page.fill("#rollout-reason", "drag test")
    box = slider(page).bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.10, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.10 + step * 0.01), y)
    page.mouse.up()
    expect(page.locator("#controls .alert.ok")).to_contain_text("Rollout set to")
    value = Flag.objects.get(key="patch_mode_enabled").rollout_percentage
    assert Decimal("15") <= value <= Decimal("25"), value
    assert page.console_errors == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [390, 1440])
def test_the_flag_page_fits_the_screen_and_the_slider_fits_a_thumb(browser, live_server, user_in, patch_flag, width):
    user_in("pm", "Rollout managers")
    context = browser.new_context(base_url=live_server.url, viewport={"width": width, "height": 900},
                                  has_touch=width < 500)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    login(page, "pm", PAGE)
    page.wait_for_function("window.rolloutCharts && Object.keys(window.rolloutCharts).length === 4")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    box = slider(page).bounding_box()
    assert box is not None and box["height"] >= 40
    assert box["width"] >= (300 if width < 500 else 400), box
    if width < 500:
        page.fill("#rollout-reason", "thumb")
        page.touchscreen.tap(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
        expect(page.locator("#controls .alert.ok")).to_contain_text("Rollout set to")
    context.close()
    assert errors == []


def test_the_login_form_logs_in_and_shows_no_navigation_before(page, user_in, patch_flag):
    page.goto("/login/")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.locator("header nav")).to_have_count(0)
    expect(page.get_by_role("link", name="Alerts")).to_have_count(0)
    user_in("pm", "Rollout managers")
    login_with_the_form(page, "pm", PAGE)
    expect(page.get_by_role("navigation", name="Main")).to_contain_text("Alerts")
