"""The dashboard in a real browser: Playwright driving Debian's Chromium against a live server."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from monitoring import services as monitoring
from tests.browser import PASSWORD, login

pytestmark = pytest.mark.django_db(transaction=True)


def traffic() -> None:
    records = []
    for i in range(200):
        records.append({"user_id": f"u{i}", "mode": "patch", "latency_ms": 150 + i, "tokens_used": 800,
                        "success": i % 25 != 0, "patch_count": 3})
        records.append({"user_id": f"v{i}", "mode": "single", "latency_ms": 140 + i, "tokens_used": 1200,
                        "success": i % 20 != 0})
    monitoring.ingest(records)


def test_manager_moves_the_slider_with_the_keyboard_confirms_and_sees_it_after_reload(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    slider = page.get_by_role("slider", name=re.compile("Rollout percentage"))
    expect(slider).to_have_value("10")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.fill("#rollout-reason", "week 3")
    slider.focus()
    for _ in range(30):  # 10% -> 40%: more than 25 points, so it asks first
        page.keyboard.press("ArrowRight")
    expect(page.locator("#rollout-value")).to_have_text("40%")
    expect(page.locator("#controls .alert.ok")).to_contain_text("Rollout set to 40.00%")
    assert len(dialogs) == 1 and "from 10% to 40%" in dialogs[0]
    page.reload()
    expect(page.get_by_role("slider", name=re.compile("Rollout percentage"))).to_have_value("40")
    expect(page.locator("#audit .audit-row").first).to_contain_text("rollout_percentage: 10.00% → 40.00%")
    expect(page.locator("#audit .audit-row").first).to_contain_text("week 3")
    entry = AuditEntry.objects.filter(flag__key="patch_mode_enabled").latest("id")
    assert (entry.source, entry.actor, entry.action) == ("ui", "pm", "set_rollout")
    assert Flag.objects.get(key="patch_mode_enabled").rollout_percentage == Decimal("40.00")


def test_declining_the_confirmation_changes_nothing(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    page.fill("#rollout-reason", "testing")
    page.on("dialog", lambda d: d.dismiss())
    slider = page.get_by_role("slider", name=re.compile("Rollout percentage"))
    slider.focus()
    page.keyboard.press("End")  # to 100%: always asks
    expect(slider).to_have_value("10")
    page.wait_for_timeout(800)
    assert Flag.objects.get(key="patch_mode_enabled").version == patch_flag.version


def test_a_small_step_applies_without_asking(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    page.fill("#rollout-reason", "testing")
    page.on("dialog", lambda d: pytest.fail(f"unexpected dialog: {d.message}"))
    page.get_by_role("slider", name=re.compile("Rollout percentage")).focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#controls .alert.ok")).to_contain_text("Rollout set to 15.00%")
    expect(page.locator("#flag-version")).to_have_text(str(patch_flag.version + 1))


def test_a_conflicting_change_is_refused_with_who_and_the_current_value(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    page.fill("#rollout-reason", "testing")
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=33, actor=Actor.system("release-bot"),
                              source=Source.API)
    page.get_by_role("slider", name=re.compile("Rollout percentage")).focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#controls .alert.error")).to_contain_text("release-bot")
    expect(page.get_by_role("slider", name=re.compile("Rollout percentage"))).to_have_value("33")
    assert Flag.objects.get(key="patch_mode_enabled").rollout_percentage == Decimal("33.00")
    # Chromium logs every 4xx response; the deliberate 409 is the only thing allowed here.
    assert all("409" in error for error in page.console_errors)  # type: ignore[attr-defined]
    page.console_errors.clear()  # type: ignore[attr-defined]


def test_kill_switch_turns_the_flag_off_after_confirmation(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    page.on("dialog", lambda d: d.accept())
    page.get_by_label("Kill switch reason").fill("errors spiking")
    page.get_by_role("button", name="Disable (kill switch)").click()
    expect(page.locator("#flag-state")).to_have_text("disabled")
    expect(page.get_by_role("button", name="Enable")).to_be_visible()
    assert Flag.objects.get(key="patch_mode_enabled").enabled is False
    entry = AuditEntry.objects.filter(flag__key="patch_mode_enabled").latest("id")
    assert (entry.action, entry.source, entry.reason) == ("disable", "ui", "errors spiking")
    expect(page.locator("#audit .audit-row").first).to_contain_text("disable")


def test_the_kill_switch_works_on_the_first_click_from_a_stale_page(page, user_in, patch_flag):
    user_in("pm", "Rollout managers")
    login(page, "pm", "/flags/patch_mode_enabled/")
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=45, actor=Actor.system("release-bot"),
                              source=Source.API)  # the page still shows 10% and the old version
    page.on("dialog", lambda d: d.accept())
    page.get_by_label("Kill switch reason").fill("errors spiking")
    page.get_by_role("button", name="Disable (kill switch)").click()
    expect(page.locator("#flag-state")).to_have_text("disabled")
    expect(page.locator("#controls .alert.ok")).to_contain_text("Flag disabled")
    flag = Flag.objects.get(key="patch_mode_enabled")
    assert flag.enabled is False and flag.rollout_percentage == Decimal("45.00")
    entry = AuditEntry.objects.filter(flag__key="patch_mode_enabled").latest("id")
    assert (entry.action, entry.reason, entry.before["enabled"]) == ("disable", "errors spiking", True)
    assert page.console_errors == []  # type: ignore[attr-defined]


def test_a_viewer_sees_everything_and_can_change_nothing(page, user_in, patch_flag):
    user_in("watcher", "Rollout viewers")
    login(page, "watcher", "/flags/patch_mode_enabled/")
    expect(page.get_by_role("slider", name=re.compile("Rollout percentage"))).to_be_disabled()
    expect(page.get_by_role("button", name="Disable (kill switch)")).to_have_count(0)
    # Even a hand-made request is refused.
    status = page.evaluate(
        """async () => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const r = await fetch('/flags/patch_mode_enabled/rollout', {method: 'POST',
                headers: {'X-CSRFToken': token, 'Content-Type': 'application/x-www-form-urlencoded'},
                body: 'rollout_percentage=90&confirmed=yes'});
            return r.status;
        }"""
    )
    assert status == 403
    page.console_errors.clear()  # the browser logs the deliberate 403 itself  # type: ignore[attr-defined]
    flag = Flag.objects.get(key="patch_mode_enabled")
    assert (flag.rollout_percentage, flag.version) == (Decimal("10.00"), patch_flag.version)


def test_someone_in_neither_group_gets_403(page, django_user_model, patch_flag):
    django_user_model.objects.create_user("stranger", password=PASSWORD)
    login(page, "stranger", "/login/")
    response = page.goto("/flags/patch_mode_enabled/")
    assert response is not None and response.status == 403
    page.console_errors.clear()  # type: ignore[attr-defined]


def test_charts_have_data_and_refresh_in_place(page, user_in, patch_flag):
    traffic()
    user_in("ops", "Rollout viewers")
    login(page, "ops", "/flags/patch_mode_enabled/")
    page.wait_for_function("window.rolloutCharts && Object.keys(window.rolloutCharts).length === 4")
    points = page.evaluate(
        """() => Object.fromEntries(Object.entries(window.rolloutCharts).map(([id, chart]) =>
              [id, chart.data.datasets.map(ds => ds.data.filter(v => v !== null).length)]))"""
    )
    assert set(points) == {"chart-error-rate", "chart-latency", "chart-tokens", "chart-savings"}
    assert all(count >= 1 for counts in points.values() for count in counts), points
    expect(page.locator('.card[data-mode="patch"]')).to_contain_text("200 (192 ok, 8 failed)")
    expect(page.locator("#token-savings")).to_have_text("33.33%")
    page.evaluate("window.firstChart = window.rolloutCharts['chart-error-rate']")
    traffic()  # 400 more records: the 10-second refresh must show them without a reload
    expect(page.locator('.card[data-mode="patch"]')).to_contain_text("400 (384 ok, 16 failed)", timeout=15_000)
    assert page.evaluate("window.firstChart === window.rolloutCharts['chart-error-rate']"), "chart was rebuilt"


def test_flag_list_shows_state_rollout_and_last_change(page, user_in, patch_flag):
    user_in("ops", "Rollout viewers")
    login(page, "ops", "/")
    row = page.locator("#flag-table tr", has_text="patch_mode_enabled")
    expect(row).to_contain_text("enabled")
    expect(row).to_contain_text("10.00%")
    expect(row).to_contain_text("by test-suite")
