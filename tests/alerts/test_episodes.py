"""One episode per rule: opening, resolving and acknowledging alerts, the notifications on firing and
resolving only, and the check's `now` as every time written (the helpers: tests/alerts/checks.py).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from alerts import plans
from alerts import services as alert_services
from alerts.models import Action, Alert, AlertState, Notification, PlanState
from flags.actors import Actor
from tests.alerts import begin_stage, feed
from tests.alerts.checks import (
    ERROR_RULE,
    HEALTHY,
    MIN,
    NOT_ENOUGH,
    REGRESSING,
    alert_audits,
    bad,
    check,
    error_rule,
    feed_minutes,
    good,
    rollout,
    set_action,
)

pytestmark = pytest.mark.django_db


# --- one episode per rule, notifications on firing and resolving only -----------------------------------


def test_repeated_checks_while_regressing_keep_one_alert_and_notify_once(flag, stage, emails,
                                                                         django_capture_on_commit_callbacks):
    rule = set_action(flag, Action.NOTIFY)
    bad(stage + MIN)
    for minutes in (2, 3, 4):
        with django_capture_on_commit_callbacks(execute=True):
            check(flag, stage + minutes * MIN)
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None
    assert alert.opened_at == stage + 2 * MIN and alert.last_checked_at == stage + 4 * MIN
    assert list(Notification.objects.filter(alert=alert).values_list("event", "channel", "status")) == [
        ("firing", "email", "sent")]
    assert [m.to for m in mail.outbox if ERROR_RULE in m.subject] == [["ops@example.com"]]


def test_a_cleared_regression_resolves_the_alert_with_one_resolved_notification(flag, stage, emails,
                                                                              django_capture_on_commit_callbacks):
    rule = error_rule(flag)
    bad(stage + MIN)
    with django_capture_on_commit_callbacks(execute=True):
        check(flag, stage + 2 * MIN)  # rolled back: a new stage from here
    good(stage + 3 * MIN)
    for minutes in (10, 11):
        with django_capture_on_commit_callbacks(execute=True):
            results = check(flag, stage + minutes * MIN)
    assert results["error_rate"].state == HEALTHY and results["error_rate"].actions == []
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == stage + 10 * MIN
    assert alert.message.startswith("resolved: ")
    assert list(Notification.objects.filter(alert=alert).order_by("id").values_list("event", flat=True)) == [
        "firing", "resolved"]
    subjects = [m.subject for m in mail.outbox if ERROR_RULE in m.subject]
    assert len(subjects) == 2 and subjects[0].endswith("firing") and subjects[1].endswith("resolved")


def test_not_enough_data_does_not_resolve_an_open_alert(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)  # rolled back to 0%: the new stage has no calls
    later = stage + 30 * MIN
    result = check(flag, later)["error_rate"]
    assert result.state == NOT_ENOUGH and result.actions == []
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None and alert.last_checked_at == later
    assert not Notification.objects.filter(alert=alert, event="resolved").exists()


def test_healthy_with_recent_evidence_near_the_limit_keeps_the_alert_open_until_it_clears(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)  # opened and rolled back: a new stage from stage + 2 min
    feed_minutes(stage + 2 * MIN, 10, patch=500, patch_failures=0)
    feed(calls=5, failures=5, at=stage + 12 * MIN)  # CUSUM 5 ln 2.5 ~ 4.6: above half the limit of 6
    result = check(flag, stage + 13 * MIN)["error_rate"]
    assert result.state == HEALTHY
    assert result.verdict.cusum_limit / 2 < result.verdict.cusum <= result.verdict.cusum_limit
    assert "alert resolved" not in result.actions
    alert = Alert.objects.get(rule=rule)
    assert alert.state == AlertState.FIRING and alert.last_checked_at == stage + 13 * MIN
    feed(calls=500, at=stage + 13 * MIN)
    result = check(flag, stage + 14 * MIN)["error_rate"]
    assert result.state == HEALTHY and result.actions == ["alert resolved"]
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == stage + 14 * MIN


def test_a_later_regression_opens_a_new_episode(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    check(flag, stage + 10 * MIN)  # resolved
    begin_stage(flag, stage + 40 * MIN, 20)
    feed(calls=20, failures=10, at=stage + 41 * MIN)
    result = check(flag, stage + 42 * MIN)["error_rate"]
    assert "alert opened" in result.actions
    first, second = Alert.objects.filter(rule=rule).order_by("id")
    assert first.state == AlertState.RESOLVED
    assert second.state == AlertState.FIRING and second.value == Decimal("50")
    assert second.opened_at == stage + 42 * MIN
    assert Notification.objects.filter(alert=second, event="firing").count() == 1
    assert Notification.objects.filter(alert__rule=rule).count() == 3  # firing, resolved, firing


def test_without_alert_addresses_or_webhook_no_notification_is_made(flag, stage, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], ""
    bad(stage + MIN)
    check(flag, stage + 30 * MIN)
    assert Alert.objects.filter(flag=flag).exists()
    assert Notification.objects.count() == 0


def test_notifications_go_to_every_configured_channel(flag, stage, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], "http://127.0.0.1:9/hook"
    bad(stage + MIN)
    check(flag, stage + 30 * MIN)
    channels = Notification.objects.filter(alert__rule=error_rule(flag)).values_list("channel", flat=True)
    assert sorted(channels) == ["email", "webhook"]


# --- every time written is the check's now ------------------------------------------------------------------


def test_every_written_timestamp_is_the_checks_now(flag, stage, emails):
    opened = stage + 30 * MIN + timedelta(seconds=17, microseconds=250)
    bad(stage + MIN)
    alert_services.check_all(now=opened)
    alert = Alert.objects.get(rule=error_rule(flag))
    assert alert.opened_at == alert.last_checked_at == opened
    assert list(Notification.objects.filter(alert=alert).values_list("created_at", flat=True)) == [opened]
    (entry,) = alert_audits(flag)
    assert entry.created_at == opened

    resolved = stage + 50 * MIN + timedelta(seconds=41)
    good(stage + 31 * MIN)  # the first whole minute of the stage that began at `opened`
    alert_services.check_all(now=resolved)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED
    assert alert.resolved_at == alert.last_checked_at == resolved
    assert Notification.objects.get(alert=alert, event="resolved").created_at == resolved


def test_a_remediated_flag_and_the_plan_it_pauses_record_the_checks_now(flag, t):
    # The flag's updated_at and the paused plan's updated_at are the check's `now`, not the wall clock.
    set_action(flag, Action.CAP_ROLLOUT, "5")
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t)
    bad(t + MIN)
    now = t + 30 * MIN + timedelta(seconds=17)
    check(flag, now)
    assert rollout(flag) == 5
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED
    (entry,) = alert_audits(flag)
    assert entry.created_at == now
    assert flag.updated_at == now
    assert plan.updated_at == now


# --- acknowledging ------------------------------------------------------------------------------------------


def test_acknowledging_a_firing_alert_records_who_and_when(flag, stage, django_user_model):
    user = django_user_model.objects.create_user("oncall", password="pw")
    bad(stage + MIN)
    check(flag, stage + 30 * MIN)
    alert = Alert.objects.get(rule=error_rule(flag))
    before = timezone.now()
    acknowledged = alert_services.acknowledge(alert=alert, user=user)
    after = timezone.now()
    alert.refresh_from_db()
    assert acknowledged.state == alert.state == AlertState.ACKNOWLEDGED
    assert alert.acknowledged_by == "oncall"
    assert before <= alert.acknowledged_at <= after
    assert alert.resolved_at is None


def test_an_acknowledged_alert_stays_the_one_open_episode_and_then_resolves(flag, stage, django_user_model,
                                                                          emails):
    user = django_user_model.objects.create_user("oncall", password="pw")
    rule = set_action(flag, Action.NOTIFY)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    alert_services.acknowledge(alert=Alert.objects.get(rule=rule), user=user)
    result = check(flag, stage + 3 * MIN)["error_rate"]
    assert result.state == REGRESSING and "alert opened" not in result.actions
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.ACKNOWLEDGED and alert.acknowledged_by == "oncall"
    assert Notification.objects.filter(alert=alert, event="firing").count() == 1

    begin_stage(flag, stage + 5 * MIN, 10)  # someone lowers the rollout by hand: a new stage, then clean calls
    good(stage + 6 * MIN)
    check(flag, stage + 10 * MIN)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == stage + 10 * MIN
    assert alert.acknowledged_by == "oncall"
    assert Notification.objects.filter(alert=alert, event="resolved").count() == 1


def test_acknowledging_a_resolved_alert_changes_nothing(flag, stage, django_user_model):
    user = django_user_model.objects.create_user("oncall", password="pw")
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    check(flag, stage + 10 * MIN)
    alert = Alert.objects.get(rule=error_rule(flag))
    assert alert_services.acknowledge(alert=alert, user=user).state == AlertState.RESOLVED
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.acknowledged_by == "" and alert.acknowledged_at is None
