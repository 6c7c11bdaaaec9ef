"""The guardrails panel (tiles and the estimate-with-interval series), and the confirmation asked before
raising exposure while a critical guardrail fires (the slider and the plan panel)."""

from __future__ import annotations

import html
import itertools
import json
import math
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from alerts import guardrails
from alerts import services as alert_services
from alerts.guardrails import Arm, Spec
from alerts.models import Alert, AlertRule, PlanState, RolloutPlan
from flags import services as flag_services
from flags.models import AuditEntry, Source
from monitoring import services as monitoring
from tests.alerts import begin_stage, feed, minute_ago

pytestmark = pytest.mark.django_db

MIN = timedelta(minutes=1)
ERROR_RULE = "Patch Mode error rate above 5%"
LATENCY_RULE = "Latency above 1.5x baseline"
CALLS = 20  # per mode and minute


@pytest.fixture
def flag(actor):
    """The flag, created five hours ago: the view judges at the real now, so the creation (a change to who
    gets the flag) must come before the stages the tests begin in the past."""
    return flag_services.flag_create(key="patch_mode_enabled", actor=actor, source=Source.CLI,
                                     now=timezone.now() - timedelta(hours=5))


def patch_failures(minute: datetime) -> int:
    """Failures among the CALLS Patch Mode calls of a minute: 3 every third minute, else none."""
    return 3 if (minute.minute % 3) == 0 else 0


def latency(mode: str, i: int) -> float:
    return (150.0 if i % 2 else 110.0) if mode == "patch" else (80.0 if i % 2 else 120.0)


def feed_range(start: datetime, end: datetime) -> None:
    """CALLS calls of each mode in every whole minute of [start, end)."""
    records: list[dict] = []
    minute = start
    while minute < end:
        at = (minute + timedelta(seconds=11)).isoformat()
        for mode in ("patch", "single"):
            failures = patch_failures(minute) if mode == "patch" else 0
            for i in range(CALLS):
                records.append({"user_id": f"{mode}-{minute:%H%M}-{i}", "mode": mode, "success": i >= failures,
                                "latency_ms": latency(mode, i), "tokens_used": 500 if mode == "patch" else 1000,
                                "occurred_at": at})
        minute += MIN
    for offset in range(0, len(records), monitoring.MAX_RECORDS):
        monitoring.ingest(records[offset:offset + monitoring.MAX_RECORDS])


def arms(start: datetime, end: datetime, fed_until: datetime) -> tuple[Arm, Arm]:
    """The treatment and baseline sums of the minutes in [start, end), computed from what feed_range fed."""
    treatment, baseline = Arm(), Arm()
    minute = start
    while minute < min(end, fed_until):
        for arm, mode in ((treatment, "patch"), (baseline, "single")):
            arm.calls += CALLS
            arm.failures += patch_failures(minute) if mode == "patch" else 0
            for i in range(CALLS):
                value = math.log1p(latency(mode, i))
                arm.log_latency_sum += value
                arm.log_latency_sq += value * value
        minute += MIN
    return treatment, baseline


@pytest.fixture
def two_stages(flag):
    """A 20% stage from 100 minutes ago, raised to 30% 25 minutes ago (inside a 1 h window); calls in every
    whole minute since the first stage began, up to the last complete minute."""
    now = timezone.now().replace(second=0, microsecond=0)
    first, change = now - 100 * MIN, now - 25 * MIN
    begin_stage(flag, first, 20)
    begin_stage(flag, change, 30)
    feed_range(first, now)
    return first, change, now


def get_panel(client: Client, key: str, **params: str):
    return client.get(reverse("alerts:flag_guardrails", args=[key]), params, HTTP_HX_REQUEST="true")


def series_of(response) -> dict:
    match = re.search(r'<script id="guardrail-data" type="application/json">(.*?)</script>',
                      response.content.decode(), re.S)
    assert match, "no guardrail-data json_script"
    return json.loads(match.group(1))


def test_tiles_one_per_enabled_rule_with_state_and_detail(client_in, flag, two_stages):
    _first, change, fed_until = two_stages
    AlertRule.objects.filter(flag=flag, name=LATENCY_RULE).update(enabled=False)
    response = get_panel(client_in("Rollout viewers"), flag.key)
    assert response.status_code == 200
    page = response.content.decode()
    enabled = list(AlertRule.objects.filter(flag=flag, enabled=True))
    assert len(enabled) == 4
    tiles = re.findall(r'<div class="tile [^"]*" data-rule="(\d+)">', page)
    assert sorted(int(pk) for pk in tiles) == sorted(rule.pk for rule in enabled)
    assert LATENCY_RULE not in page
    # The error-rate tile: the verdict on the current stage (from the change), computed from the fed counts.
    end = datetime.fromisoformat(series_of(response)["labels"][-1])
    treatment, baseline = arms(change, end, fed_until)
    recent = [arms(change + k * MIN, change + (k + 1) * MIN, fed_until) for k in range(int((end - change) / MIN))]
    verdict = guardrails.judge(Spec("error_rate", 5.0, True, 0.01), treatment, baseline, recent)
    error_rule = AlertRule.objects.get(flag=flag, name=ERROR_RULE)
    tile = re.search(rf'<div class="tile [^"]*" data-rule="{error_rule.pk}">(.*?)</canvas>', page, re.S).group(1)
    assert f"state-{verdict.state.replace(' ', '-')}" in tile and f">{verdict.state}</span>" in tile
    assert html.unescape(re.search(r'<p class="verdict">(.*?)</p>', tile, re.S).group(1)) == verdict.describe()
    assert f"{treatment.calls} patch and {baseline.calls} single calls" in " ".join(page.split())


def test_series_has_one_point_per_minute_and_restarts_at_the_rollout_change(client_in, flag, two_stages):
    first, change, fed_until = two_stages
    response = get_panel(client_in("Rollout viewers"), flag.key, window="1h")
    assert response.status_code == 200
    data = series_of(response)
    labels = [datetime.fromisoformat(label) for label in data["labels"]]
    assert len(labels) == 60 and all(b - a == MIN for a, b in itertools.pairwise(labels))
    rules = AlertRule.objects.filter(flag=flag, enabled=True)
    assert set(data["rules"]) == {str(rule.pk) for rule in rules}
    for line in data["rules"].values():
        assert len(line["estimate"]) == len(line["low"]) == len(line["high"]) == 60
    error_line = data["rules"][str(AlertRule.objects.get(flag=flag, name=ERROR_RULE).pk)]
    latency_line = data["rules"][str(AlertRule.objects.get(flag=flag, name=LATENCY_RULE).pk)]
    assert error_line["threshold"] == 5.0
    assert change in labels
    checked_before = checked_after = 0
    for index, point in enumerate(labels):
        stage_start = change if point >= change else first
        treatment, baseline = arms(stage_start, point, fed_until)
        error = guardrails.judge(Spec("error_rate", 5.0, True, 0.01), treatment, baseline, [])
        slow = guardrails.judge(Spec("latency_ratio", 1.5, True, 0.01), treatment, baseline, [])
        if treatment.calls == 0:
            assert error_line["estimate"][index] is None
            continue
        assert error_line["estimate"][index] == pytest.approx(100 * treatment.failures / treatment.calls)
        assert error_line["estimate"][index] == pytest.approx(error.estimate)
        assert error_line["low"][index] == pytest.approx(error.low)
        assert error_line["high"][index] == pytest.approx(error.high)
        if slow.estimate is not None:
            assert latency_line["estimate"][index] == pytest.approx(slow.estimate, rel=1e-9)
            assert latency_line["low"][index] == pytest.approx(slow.low, rel=1e-6)
        if point < change:
            checked_before += 1
        else:
            checked_after += 1
    assert checked_before >= 30 and checked_after >= 20
    # At the change the new stage has no complete minute yet; one minute later it has exactly one.
    at_change = labels.index(change)
    assert error_line["estimate"][at_change] is None
    assert error_line["estimate"][at_change + 1] == pytest.approx(100 * patch_failures(change) / CALLS)
    # The interval restarted: one minute of calls is far wider than the previous stage's 75 minutes.
    width = [error_line["high"][i] - error_line["low"][i] for i in (at_change - 1, at_change + 1)]
    assert width[1] > 2 * width[0]
    assert [marker["at"] for marker in data["markers"]] == [change.isoformat()]
    assert "30" in data["markers"][0]["text"]


def test_a_24h_window_has_hourly_points_and_a_bad_window_falls_back_to_1h(client_in, flag, two_stages):
    viewer = client_in("Rollout viewers")
    day = series_of(get_panel(viewer, flag.key, window="24h"))
    assert len(day["labels"]) in (24, 25)
    for line in day["rules"].values():
        assert len(line["estimate"]) == len(line["low"]) == len(line["high"]) == len(day["labels"])
    labels = [datetime.fromisoformat(label) for label in day["labels"]]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(labels[:-1]))
    bad = get_panel(viewer, flag.key, window="1y")
    assert bad.status_code == 200
    assert len(series_of(bad)["labels"]) == 60
    assert "window=1h" in bad.content.decode()


def test_anonymous_is_sent_to_login_and_a_user_in_no_group_gets_403(client_in, flag):
    anonymous = Client().get(reverse("alerts:flag_guardrails", args=[flag.key]))
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    assert get_panel(client_in(None), flag.key).status_code == 403
    assert get_panel(client_in("Rollout viewers"), "no_such_flag").status_code == 404


@pytest.fixture
def firing(flag):
    """A 20% stage three hours ago, then a minute of Patch calls half failing: the critical error-rate
    rule fires and rolls the flag back to 0%."""
    t = minute_ago()
    begin_stage(flag, t, 20)
    feed(calls=40, failures=20, at=t + MIN)
    feed(calls=40, mode="single", at=t + MIN)
    alert_services.check_flag(flag.key, now=t + 3 * MIN)
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0
    return Alert.objects.get(flag=flag, rule__name=ERROR_RULE)


def error_text(response) -> str:
    match = re.search(r'<p class="alert error" role="alert">(.*?)</p>', response.content.decode(), re.S)
    return html.unescape(match.group(1)) if match else ""


def slide(client: Client, flag, percentage: str, **extra: str):  # type: ignore[no-untyped-def]
    flag.refresh_from_db()
    return client.post(reverse("flags:rollout", args=[flag.key]),
                       {"rollout_percentage": percentage, "expected_version": str(flag.version), "reason": "test",
                        **extra},
                       HTTP_HX_REQUEST="true")


def test_raising_the_slider_while_a_critical_alert_fires_needs_confirmation(client_in, flag, firing):
    manager = client_in("Rollout managers")
    audits = AuditEntry.objects.count()
    version = flag.version
    refused = slide(manager, flag, "1")
    assert refused.status_code == 400
    assert ERROR_RULE in error_text(refused) and "confirm" in error_text(refused)
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.version) == (Decimal(0), version)
    assert AuditEntry.objects.count() == audits

    applied = slide(manager, flag, "1", confirmed="yes")
    assert applied.status_code == 200
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal(1)
    applied = slide(manager, flag, "10", confirmed="yes")
    assert applied.status_code == 200
    # Lowering never asks, even while the alert fires.
    lowered = slide(manager, flag, "5")
    assert lowered.status_code == 200 and not error_text(lowered)
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal(5)
    assert Alert.objects.get(pk=firing.pk).state == "firing"


def test_without_a_firing_alert_a_small_raise_needs_no_confirmation(client_in, flag):
    manager = client_in("Rollout managers")
    response = slide(manager, flag, "1")
    assert response.status_code == 200
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal(1)


def plan_post(client: Client, flag, action: str, **extra: str):  # type: ignore[no-untyped-def]
    return client.post(reverse("alerts:plan_action", args=[flag.key]), {"action": action, **extra},
                       HTTP_HX_REQUEST="true")


def test_starting_a_plan_while_a_critical_alert_fires_asks_to_start_anyway(client_in, flag, firing):
    manager = client_in("Rollout managers")
    assert plan_post(manager, flag, "create").status_code == 200
    plan = RolloutPlan.objects.get(flag=flag)
    audits = AuditEntry.objects.count()

    refused = plan_post(manager, flag, "start")
    assert refused.status_code == 400
    page = refused.content.decode()
    assert ERROR_RULE in error_text(refused)
    form = re.search(r'<form class="plan-actions" id="plan-confirm"[^>]*>(.*?)</form>', page, re.S)
    assert form, page
    assert '<input type="hidden" name="confirmed" value="yes">' in form.group(1)
    assert 'name="action" value="start"' in form.group(1) and "Start anyway" in form.group(1)
    assert RolloutPlan.objects.get(pk=plan.pk).state == PlanState.DRAFT
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0 and AuditEntry.objects.count() == audits

    started = plan_post(manager, flag, "start", confirmed="yes")
    assert started.status_code == 200
    assert 'id="plan-confirm"' not in started.content.decode()
    assert RolloutPlan.objects.get(pk=plan.pk).state == PlanState.RUNNING
    flag.refresh_from_db()
    assert (flag.enabled, flag.rollout_percentage) == (True, Decimal(10))


def test_a_viewer_cannot_confirm_a_start(client_in, flag, firing):
    manager = client_in("Rollout managers")
    plan_post(manager, flag, "create")
    viewer = client_in("Rollout viewers")
    assert plan_post(viewer, flag, "start", confirmed="yes").status_code == 403
    assert RolloutPlan.objects.get(flag=flag).state == PlanState.DRAFT
