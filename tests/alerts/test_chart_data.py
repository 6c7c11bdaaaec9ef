"""alerts.charts.chart_data: the guardrail thresholds and the markers drawn on the flag page's metric charts,
and the x range picked from the data, all at an explicit `now`."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from alerts import charts
from alerts.models import Alert, AlertRule, AlertState, Comparison, Metric, Severity
from flags import services as flag_services
from flags.actors import Actor
from flags.models import ActorKind, Source
from tests.alerts import feed, minute_ago

pytestmark = pytest.mark.django_db

MIN = timedelta(minutes=1)
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


@pytest.fixture
def now():
    """Three hours ago, 30 seconds into a minute: the flag (created at the real now) is not yet there. Never in
    the first hour of a UTC day, so that the story's markers (up to 40 minutes earlier) fall on the same day
    and read without a date, whenever the suite runs."""
    moment = minute_ago(3) + timedelta(seconds=30)
    return moment - timedelta(hours=1) if moment.hour == 0 else moment


@pytest.fixture
def story(flag, now):
    """Calls of both modes 20 minutes before `now`; the rollout set to 10% by a bot 40 minutes before, raised
    to 25% by pm on the dashboard 15 minutes before; an alert that fired 8 and resolved 3 minutes before."""
    minute = now.replace(second=0) - 20 * MIN
    feed(calls=20, failures=2, mode="patch", at=minute, latency_ms=150, tokens=500)
    feed(calls=20, failures=1, mode="single", at=minute, latency_ms=100, tokens=1000)
    flag_services.flag_update(flag=flag, rollout_percentage=10, enabled=True, actor=Actor.system("release-bot"),
                              source=Source.API, now=now - 40 * MIN)
    flag_services.flag_update(flag=flag, rollout_percentage=25, actor=Actor(ActorKind.USER, "pm"), source=Source.UI,
                              reason="week 3", now=now - 15 * MIN)
    rule = AlertRule.objects.get(flag=flag, metric=Metric.ERROR_RATE)
    Alert.objects.create(rule=rule, flag=flag, severity=rule.severity, message="back under 5% with confidence",
                         state=AlertState.RESOLVED, opened_at=now - 8 * MIN, resolved_at=now - 3 * MIN)
    return minute


def by_label(lines: list[dict]) -> dict[str, dict]:
    return {line["label"]: line for line in lines}


def test_thresholds_of_the_default_rules_land_on_the_chart_of_their_metric(flag, now, story):
    data = charts.chart_data(flag, "1h", now)
    x = charts.ms(story)
    error = by_label(data["thresholds"]["error_rate"])
    # The error-rate rule (> 5%) and the success-rate rule (< 95%) are the same line: drawn once, both named.
    merged = error["error rate guardrail > 5%; success rate guardrail < 95% (errors > 5%)"]
    assert (merged["value"], merged["severity"], merged["short"]) == (5.0, Severity.CRITICAL, "guardrail 5%")
    assert [p["y"] for p in merged["points"]] == [5.0, 5.0]
    assert [p["x"] for p in merged["points"]] == [data["x_range"]["min"], data["x_range"]["max"]]
    # Comparative: the baseline's error rate (1 in 20 = 5%) plus the margin, where the baseline has calls.
    delta = error["error rate guardrail > single + 1 points"]
    assert delta["value"] is None and delta["points"] == [{"x": x, "y": 6.0}]
    latency = data["thresholds"]["latency"]
    bucket = data["series"]["labels"].index(story.isoformat())
    baseline_p50 = data["series"]["modes"]["single"]["p50_latency_ms"][bucket]
    assert [line["label"] for line in latency] == ["latency guardrail > 1.5x single (on p50)"]
    assert latency[0]["points"] == [{"x": x, "y": round(baseline_p50 * 1.5, 2)}]
    assert data["thresholds"]["tokens"][0]["points"] == [{"x": x, "y": 800.0}]
    savings = data["thresholds"]["savings"]
    assert [(line["label"], line["value"]) for line in savings] == [
        ("tokens guardrail: savings < 20% (> 0.8x tokens)", 20.0)]


def test_disabled_rules_are_not_drawn_and_other_levels_get_their_own_line(flag, now, story):
    AlertRule.objects.filter(flag=flag, metric=Metric.SUCCESS_RATE).update(enabled=False)
    AlertRule.objects.create(flag=flag, name="errors above 3%", metric=Metric.ERROR_RATE, comparison=Comparison.GTE,
                             threshold=Decimal("3"), severity=Severity.WARNING)
    lines = by_label(charts.chart_data(flag, "1h", now)["thresholds"]["error_rate"])
    assert set(lines) == {"error rate guardrail > 5%", "error rate guardrail >= 3%",
                          "error rate guardrail > single + 1 points"}
    assert (lines["error rate guardrail >= 3%"]["value"], lines["error rate guardrail >= 3%"]["severity"]) == (
        3.0, Severity.WARNING)


def test_markers_say_what_changed_who_and_why_oldest_first(flag, now, story):
    markers = charts.chart_data(flag, "1h", now)["markers"]
    at = [(now - minutes * MIN) for minutes in (40, 15, 8, 3)]
    assert [m["kind"] for m in markers] == ["rollout", "rollout", "alert_fired", "alert_resolved"]
    assert [m["x"] for m in markers] == [charts.ms(moment) for moment in at]
    assert markers[0]["text"] == f"{at[0]:%H:%M:%S} UTC rollout 0% → 10%, turned on by release-bot (API)"
    assert markers[1]["text"] == f"{at[1]:%H:%M:%S} UTC rollout 10% → 25% by pm (dashboard): week 3"
    assert (markers[1]["who"], markers[1]["why"]) == ("pm (dashboard)", "week 3")
    assert markers[2]["text"] == f"{at[2]:%H:%M:%S} UTC alert fired: Patch Mode error rate above 5% (critical)"
    assert markers[2]["why"].startswith("fires when treatment error rate (%) > 5%")
    assert markers[3]["text"] == f"{at[3]:%H:%M:%S} UTC alert resolved: Patch Mode error rate above 5%"
    assert markers[3]["why"] == "back under 5% with confidence"


def test_markers_outside_the_window_are_left_out(flag, now, story):
    rule = AlertRule.objects.get(flag=flag, metric=Metric.LATENCY_RATIO)
    Alert.objects.create(rule=rule, flag=flag, severity=rule.severity, message="old", opened_at=now - 3 * 60 * MIN)
    markers = charts.chart_data(flag, "15m", now)["markers"]
    # 15 minutes: the 25% change (15 min ago, the window starts at now's minute + 1 - 15) is just outside.
    assert [m["kind"] for m in markers] == ["alert_fired", "alert_resolved"]


def test_other_days_are_dated(flag, now, story):
    later = now + timedelta(days=2)
    markers = charts.chart_data(flag, "7d", later)["markers"]
    moment = now - 15 * MIN
    assert markers[1]["text"].startswith(f"{moment:%d %b %H:%M:%S} UTC rollout 10% → 25%")


def test_the_x_range_covers_the_data_and_the_markers_padded(flag, now, story):
    data = charts.chart_data(flag, "1h", now)
    first_marker = charts.ms(now - 40 * MIN)
    assert data["has_data"] is True
    assert data["step_ms"] == MINUTE_MS
    # From the first marker (40 min ago) to the last one (3 min ago), padded by 5% of that span.
    pad = (37 * MINUTE_MS) // 20
    assert data["x_range"] == {"min": first_marker - pad, "max": charts.ms(now - 3 * MIN) + pad}


def test_a_day_with_calls_in_one_hour_shows_that_hour_not_the_whole_day(flag, now):
    # Calls in the current hour (10 minutes ago, or at its start when it began less than 10 minutes ago), so
    # that the hour's padding reaches past the window's end whatever the clock says.
    at = max(now - 10 * MIN, now.replace(minute=0, second=0, microsecond=0))
    feed(calls=5, mode="patch", at=at)
    data = charts.chart_data(flag, "24h", now)
    hour = charts.ms(at.replace(minute=0, second=0))
    assert data["step_ms"] == HOUR_MS
    # An hour's padding before its bucket; after it, the window ends (the current minute counts).
    assert data["x_range"] == {"min": hour - HOUR_MS, "max": charts.ms(now.replace(second=0) + MIN)}
    assert data["markers"] == []


def test_an_empty_window_says_so(flag, now):
    data = charts.chart_data(flag, "24h", now)
    assert data["has_data"] is False
    assert data["empty_note"] == "No calls in the last 24 h"
    end = now.replace(second=0) + MIN
    assert data["x_range"] == {"min": charts.ms((end - timedelta(hours=24)).replace(minute=0)), "max": charts.ms(end)}


@pytest.mark.parametrize(("moments", "expected"), [
    ([], {"min": 0, "max": 100 * MINUTE_MS}),
    ([50 * MINUTE_MS], {"min": 49 * MINUTE_MS, "max": 51 * MINUTE_MS}),
    ([10 * MINUTE_MS, 90 * MINUTE_MS], {"min": 6 * MINUTE_MS, "max": 94 * MINUTE_MS}),  # 5% of 80 min
    ([0, 100 * MINUTE_MS], {"min": 0, "max": 100 * MINUTE_MS}),  # never beyond the window
])
def test_pick_range(moments, expected):
    assert charts.pick_range(moments, 0, 100 * MINUTE_MS, MINUTE_MS) == expected
