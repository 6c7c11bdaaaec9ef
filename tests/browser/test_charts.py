"""The flag page's charts in a real browser: guardrail thresholds, markers with who and why, a time axis
that fits the data, the note of an empty window, and no console errors under the pointer."""

from __future__ import annotations

import os
import re
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from alerts.models import Alert, AlertRule, Metric
from flags import services
from flags.actors import Actor
from flags.models import ActorKind, Source
from monitoring import services as monitoring
from tests.browser import login

pytestmark = pytest.mark.django_db(transaction=True)

MIN = timedelta(minutes=1)
CHARTS = ("chart-error-rate", "chart-latency", "chart-tokens", "chart-savings")


def traffic(at=None, n: int = 100) -> None:
    records = []
    for i in range(n):
        for mode, tokens, fails in (("patch", 800, 25), ("single", 1200, 20)):
            record = {"user_id": f"{mode}{i}", "mode": mode, "latency_ms": 150 + i, "tokens_used": tokens,
                      "success": i % fails != 0}
            if at is not None:
                record["occurred_at"] = at.isoformat()
            records.append(record)
    monitoring.ingest(records)


@pytest.fixture
def story(make_flag):
    """Calls 30 minutes ago and now; 10% by release-bot 50 minutes ago, 25% by pm 20 minutes ago (week 3),
    and the error-rate guardrail fired 10 minutes ago. The flag was created two hours ago: before the 1 h
    window, so its creation is no marker there."""
    now = timezone.now()
    flag = make_flag(now=now - 120 * MIN)
    traffic(now - 30 * MIN)
    traffic()
    services.flag_update(flag=flag, rollout_percentage=10, enabled=True, actor=Actor.system("release-bot"),
                         source=Source.API, now=now - 50 * MIN)
    services.flag_update(flag=flag, rollout_percentage=25, actor=Actor(ActorKind.USER, "pm"), source=Source.UI,
                         reason="week 3", now=now - 20 * MIN)
    rule = AlertRule.objects.get(flag=flag, metric=Metric.ERROR_RATE)
    Alert.objects.create(rule=rule, flag=flag, severity=rule.severity, message="errors above 5%",
                         opened_at=now - 10 * MIN)
    return now


def open_charts(page, user_in, path: str = "/flags/patch_mode_enabled/") -> None:
    user_in("ops", "Rollout viewers")
    login(page, "ops", path)
    page.wait_for_function("window.rolloutCharts && Object.keys(window.rolloutCharts).length === 4")


def marker_point(page, chart_id: str, text: str) -> dict:
    """Where on the page the marker whose text contains `text` is drawn (the middle of its line)."""
    return page.evaluate(
        """([id, text]) => {
            const chart = window.rolloutCharts[id];
            const m = chart.options.plugins.rolloutGuides.markers.find(m => m.text.includes(text));
            chart.canvas.scrollIntoView({block: "center"});
            const box = chart.canvas.getBoundingClientRect();
            return {x: box.left + chart.scales.x.getPixelForValue(m.x),
                    y: box.top + (chart.chartArea.top + chart.chartArea.bottom) / 2};
        }""", [chart_id, text])


def test_guardrail_thresholds_are_dashed_lines_on_their_charts(page, user_in, story):
    open_charts(page, user_in)
    guides = page.evaluate(
        """() => Object.fromEntries(Object.entries(window.rolloutCharts).map(([id, chart]) => [id,
              chart.data.datasets.filter(ds => ds.guide).map(ds => ({label: ds.label, guide: ds.guide,
                  ys: ds.data.map(p => p.y), dashed: ds.borderDash.length > 0}))]))""")
    error = {g["label"]: g for g in guides["chart-error-rate"]}
    merged = error["error rate guardrail > 5%; success rate guardrail < 95% (errors > 5%)"]
    assert merged["guide"] == "horizontal" and set(merged["ys"]) == {5} and merged["dashed"]
    assert error["error rate guardrail > single + 1 points"]["guide"] == "follows"
    assert [g["label"] for g in guides["chart-latency"]] == ["latency guardrail > 1.5x single (on p50)"]
    assert [g["label"] for g in guides["chart-tokens"]] == ["tokens guardrail > 0.8x single"]
    assert [(g["label"], set(g["ys"])) for g in guides["chart-savings"]] == [
        ("tokens guardrail: savings < 20% (> 0.8x tokens)", {20})]
    # The y axis reaches the threshold, and the caption lists every line.
    assert page.evaluate("window.rolloutCharts['chart-savings'].scales.y.max") >= 20
    expect(page.locator("#chart-thresholds li")).to_have_count(5)
    expect(page.locator("#chart-thresholds")).to_contain_text("latency guardrail > 1.5x single (on p50) (warning)")


def test_markers_are_drawn_and_listed_with_who_and_why(page, user_in, story):
    open_charts(page, user_in)
    markers = page.evaluate("""() => Object.values(window.rolloutCharts).map(chart =>
        chart.options.plugins.rolloutGuides.markers.map(m => [m.kind, m.text]))""")
    assert all(m == markers[0] for m in markers)
    kinds = [kind for kind, _ in markers[0]]
    assert kinds == ["rollout", "rollout", "alert_fired"]
    items = page.locator("#chart-markers li")
    expect(items).to_have_count(3)
    # The time alone, or with its day when that is not today's (a run just after midnight UTC).
    moment = (story - 20 * MIN).astimezone(UTC)
    day = "" if moment.date() == story.astimezone(UTC).date() else f"{moment:%d %b} "
    expect(items.nth(1)).to_have_text(f"{day}{moment:%H:%M:%S} UTC rollout 10% → 25% by pm (dashboard): week 3")
    expect(items.nth(2)).to_contain_text("alert fired: Patch Mode error rate above 5% (critical)")
    # Every marker is inside the x range shown.
    inside = page.evaluate("""() => { const c = window.rolloutCharts['chart-error-rate'];
        return c.options.plugins.rolloutGuides.markers.every(m => m.x >= c.scales.x.min && m.x <= c.scales.x.max); }""")
    assert inside


def test_pointing_at_a_marker_says_who_and_why(page, user_in, story):
    open_charts(page, user_in)
    tip = page.locator("#chart-error-rate + .chart-empty + .chart-tip")
    expect(tip).to_be_hidden()
    point = marker_point(page, "chart-error-rate", "by pm")
    page.mouse.move(point["x"], point["y"])
    expect(tip).to_be_visible()
    expect(tip).to_have_text(re.compile(r"UTC rollout 10% → 25% by pm \(dashboard\): week 3$"))
    point = marker_point(page, "chart-error-rate", "alert fired")
    page.mouse.move(point["x"], point["y"])
    expect(tip).to_contain_text("alert fired: Patch Mode error rate above 5% (critical)")
    page.mouse.move(point["x"] + 80, point["y"])  # away from every marker: the data tooltip again
    expect(tip).to_be_hidden()
    title = page.evaluate("window.rolloutCharts['chart-error-rate'].tooltip.title")
    assert len(title) == 1 and re.fullmatch(r"\d\d:\d\d\u2013\d\d:\d\d UTC", title[0]), title


def test_a_day_with_calls_only_in_the_last_hour_shows_that_hour_in_utc(page, user_in, patch_flag):
    traffic()
    open_charts(page, user_in, "/flags/patch_mode_enabled/?window=24h")
    axis = page.evaluate("""() => { const x = window.rolloutCharts['chart-error-rate'].scales.x;
        return {type: x.type, min: x.min, max: x.max, labels: x.ticks.map(t => t.label),
                title: x.options.title.text}; }""")
    now_ms = timezone.now().timestamp() * 1000
    assert axis["type"] == "linear"
    # The last hour's bucket, an hour of padding before it, and the window's end: not 24 hours.
    assert now_ms - 3 * 3_600_000 < axis["min"] < now_ms - 3_600_000
    assert now_ms < axis["max"] < now_ms + 2 * 60_000
    # Clock times (a tick at midnight names the day instead).
    assert len(axis["labels"]) >= 2
    assert all(re.fullmatch(r"\d\d:\d\d|\d{1,2} [A-Z][a-z]{2}", label) for label in axis["labels"]), axis["labels"]
    assert "UTC" in axis["title"]
    expect(page.locator("#chart-error-rate + .chart-empty")).to_be_hidden()


def test_a_week_is_labelled_with_days(page, user_in, patch_flag):
    traffic(timezone.now() - timedelta(days=3))
    traffic()
    open_charts(page, user_in, "/flags/patch_mode_enabled/?window=7d")
    labels = page.evaluate("window.rolloutCharts['chart-tokens'].scales.x.ticks.map(t => t.label)")
    assert labels and all(re.fullmatch(r"\d{1,2} [A-Z][a-z]{2}( \d\d:\d\d)?", label) for label in labels), labels


def test_an_empty_window_says_no_calls_instead_of_an_empty_chart(page, user_in, patch_flag):
    open_charts(page, user_in, "/flags/patch_mode_enabled/?window=24h")
    notes = page.locator(".charts .chart-empty")
    expect(notes).to_have_count(4)
    for i in range(4):
        expect(notes.nth(i)).to_be_visible()
        expect(notes.nth(i)).to_have_text("No calls in the last 24 h")
    assert page.evaluate("getComputedStyle(document.getElementById('chart-latency')).visibility") == "hidden"


def test_moving_and_dragging_across_the_charts_logs_no_errors(page, user_in, story):
    open_charts(page, user_in)
    shown = []
    for chart_id in CHARTS:
        page.locator(f"#{chart_id}").scroll_into_view_if_needed()
        box = page.locator(f"#{chart_id}").bounding_box()
        assert box is not None
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] - 10, y)
        for step in range(0, 41):
            page.mouse.move(box["x"] + box["width"] * step / 40, y)
            if page.locator(f"#{chart_id} ~ .chart-tip").is_visible():
                shown.append(chart_id)
        page.mouse.down()
        page.mouse.move(box["x"] + 5, box["y"] + 5, steps=10)
        page.mouse.up()
        page.mouse.move(box["x"] + box["width"] + 20, y)
    assert set(shown) == set(CHARTS)  # each chart's markers answered the pointer on the way
    assert page.console_errors == []  # type: ignore[attr-defined]


@pytest.mark.skipif(not os.environ.get("CHART_SHOTS"), reason="screenshots on request (CHART_SHOTS=directory)")
def test_screenshots(browser, live_server, user_in, story):
    out = Path(os.environ["CHART_SHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    user_in("ops", "Rollout viewers")
    for width in (1440, 390):
        context = browser.new_context(base_url=live_server.url, viewport={"width": width, "height": 1000})
        tab = context.new_page()
        login(tab, "ops", "/flags/patch_mode_enabled/")
        tab.wait_for_function("window.rolloutCharts && Object.keys(window.rolloutCharts).length === 4")
        tab.wait_for_timeout(800)
        point = marker_point(tab, "chart-error-rate", "by pm")
        tab.mouse.move(point["x"], point["y"])
        tab.wait_for_timeout(200)
        tab.screenshot(path=str(out / f"flag-{width}.png"), full_page=True)
        tab.locator(".charts").screenshot(path=str(out / f"charts-{width}.png"))
        tab.locator("#guardrails").screenshot(path=str(out / f"guardrails-{width}.png"))
        tab.locator("#chart-notes").screenshot(path=str(out / f"notes-{width}.png"))
        context.close()
