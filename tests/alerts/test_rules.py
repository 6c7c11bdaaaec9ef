"""Alert rules: the seed's four defaults, measuring, episodes, remediation, cooldown, dry runs, acknowledging.

The seed's defects each have a test here: a critical alert raised a 10% rollout to 50%; ratio rules
without baseline traffic compared against 0 and always fired; rates were strings; every check appended
to an unbounded history instead of one episode per rule.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection, connections
from django.utils import timezone

from alerts import services as alert_services
from alerts.models import Action, Alert, AlertRule, AlertState, Notification
from alerts.services import FIRING, NO_DATA, OK
from flags import services
from flags.models import AuditEntry, Source
from tests.alerts import by_metric, feed, minute_ago

pytestmark = pytest.mark.django_db

ERROR_RULE = "Patch Mode error rate above 5%"


def set_rollout(flag, actor, percentage) -> None:  # type: ignore[no-untyped-def]
    services.flag_set_rollout(flag=flag, percentage=percentage, enabled=True, actor=actor, source=Source.UI)


def error_rule(flag) -> AlertRule:  # type: ignore[no-untyped-def]
    return AlertRule.objects.get(flag=flag, metric="error_rate")


def reductions(actions: list[str]) -> list[tuple[Decimal, Decimal]]:
    """The (from, to) percentages of every "rollout reduced" action, however the numbers are written."""
    found = (re.fullmatch(r"rollout reduced from ([\d.]+)% to ([\d.]+)%", action) for action in actions)
    return [(Decimal(m[1]), Decimal(m[2])) for m in found if m]


def alert_audits(flag) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    return list(AuditEntry.objects.filter(flag=flag, source=Source.ALERT).order_by("id"))


@pytest.fixture
def emails(settings):
    """Notifications by email only, delivered at once (Celery eager) when on_commit callbacks run."""
    settings.ALERT_EMAILS = ["ops@example.com"]
    settings.ALERT_WEBHOOK_URL = ""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return settings


# --- the seed's four rules ------------------------------------------------------------------------------


def test_a_new_flag_gets_exactly_the_four_seed_rules(make_flag):
    flag = make_flag("brand_new_flag")
    rules = list(AlertRule.objects.filter(flag=flag).order_by("id").values_list(
        "name", "metric", "comparison", "threshold", "severity", "action", "action_value", "enabled"))
    assert rules == [
        (ERROR_RULE, "error_rate", "gt", Decimal("5"), "critical", "cap_rollout", Decimal("50"), True),
        ("Latency above 1.5x baseline", "latency_ratio", "gt", Decimal("1.5"), "warning", "notify", None, True),
        ("Token savings low (tokens above 0.8x baseline)", "tokens_ratio", "gt", Decimal("0.8"), "warning",
         "notify", None, True),
        ("Success rate below 95%", "success_rate", "lt", Decimal("95"), "warning", "notify", None, True),
    ]


def test_default_rules_use_the_model_defaults_for_window_samples_and_cooldown(flag):
    rows = set(AlertRule.objects.filter(flag=flag).values_list("window_minutes", "min_samples", "cooldown_minutes"))
    assert rows == {(15, 10, 30)}


def test_ensure_default_rules_adds_nothing_to_a_flag_that_has_rules(flag):
    assert alert_services.ensure_default_rules(flag) == []
    assert AlertRule.objects.filter(flag=flag).count() == 4


def test_each_flag_gets_its_own_four_rules(make_flag):
    first, second = make_flag("first_flag"), make_flag("second_flag")
    assert AlertRule.objects.filter(flag=first).count() == 4
    assert AlertRule.objects.filter(flag=second).count() == 4
    assert AlertRule.objects.count() == 8


# --- seed defect 1: remediation only ever reduces exposure -------------------------------------------------


def test_critical_error_rate_on_a_10_percent_rollout_does_not_raise_it_to_50(flag, actor):
    set_rollout(flag, actor, 10)
    t = minute_ago()
    feed(calls=20, failures=4, at=t - timedelta(minutes=1))  # 20% errors: critical
    result = by_metric(alert_services.check_flag(flag.key, now=t))["error_rate"]
    flag.refresh_from_db()
    assert result.state == FIRING
    assert flag.rollout_percentage == Decimal("10") and flag.enabled is True
    assert any("nothing to reduce" in action for action in result.actions)
    assert not any("reduced" in action and "nothing" not in action for action in result.actions)
    assert alert_audits(flag) == []
    assert Alert.objects.get(rule=result.rule).actions_taken == []


def test_critical_error_rate_on_an_80_percent_rollout_caps_it_at_50_with_an_alert_audit_entry(flag, actor):
    set_rollout(flag, actor, 80)
    t = minute_ago()
    feed(calls=20, failures=4, at=t - timedelta(minutes=1))
    result = by_metric(alert_services.check_flag(flag.key, now=t))["error_rate"]
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal("50") and flag.enabled is True
    (entry,) = alert_audits(flag)
    assert entry.actor.startswith("alert-rule:") and f"alert-rule:{result.rule.pk}" in entry.actor
    assert entry.actor_kind == "system"
    assert "error rate" in entry.reason
    assert entry.before["rollout_percentage"] == "80.00" and entry.after["rollout_percentage"] == "50.00"
    assert reductions(result.actions) == [(80, 50)]
    alert = Alert.objects.get(rule=result.rule)
    assert [reductions(step["what"]) for step in alert.actions_taken] == [[(80, 50)]]


@pytest.mark.parametrize(
    ("start", "expected"),
    [("0", "0"), ("10", "10"), ("49.99", "49.99"), ("50", "50"), ("50.01", "50"), ("80", "50"), ("100", "50")],
)
def test_the_cap_never_raises_the_rollout(flag, actor, start, expected):
    set_rollout(flag, actor, start)
    t = minute_ago()
    feed(calls=20, failures=10, at=t)
    alert_services.check_flag(flag.key, now=t)
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal(expected)
    assert flag.rollout_percentage <= Decimal(start)
    assert len(alert_audits(flag)) == (1 if Decimal(start) > 50 else 0)


def test_a_rollback_rule_rolls_the_rollout_back_to_zero(flag, actor):
    AlertRule.objects.filter(pk=error_rule(flag).pk).update(action=Action.ROLLBACK, action_value=None)
    set_rollout(flag, actor, 30)
    t = minute_ago()
    feed(calls=20, failures=5, at=t)
    result = by_metric(alert_services.check_flag(flag.key, now=t))["error_rate"]
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal("0")
    assert reductions(result.actions) == [(30, 0)]
    (entry,) = alert_audits(flag)
    assert entry.after["rollout_percentage"] == "0.00"


def test_a_disable_rule_turns_the_flag_off_and_leaves_the_percentage(flag, actor):
    AlertRule.objects.filter(pk=error_rule(flag).pk).update(action=Action.DISABLE, action_value=None)
    set_rollout(flag, actor, 30)
    t = minute_ago()
    feed(calls=20, failures=5, at=t)
    result = by_metric(alert_services.check_flag(flag.key, now=t))["error_rate"]
    flag.refresh_from_db()
    assert flag.enabled is False and flag.rollout_percentage == Decimal("30")
    assert "flag disabled (kill switch)" in result.actions
    (entry,) = alert_audits(flag)
    assert (entry.action, entry.before["enabled"], entry.after["enabled"]) == ("disable", True, False)


def test_a_disable_rule_on_a_disabled_flag_does_nothing(flag):
    AlertRule.objects.filter(pk=error_rule(flag).pk).update(action=Action.DISABLE, action_value=None)
    t = minute_ago()
    feed(calls=20, failures=5, at=t)
    result = by_metric(alert_services.check_flag(flag.key, now=t))["error_rate"]
    assert result.actions == ["alert opened", "flag already disabled"]
    assert alert_audits(flag) == []


def test_a_later_rule_sees_the_rollout_an_earlier_rule_left(flag, actor):
    rule = error_rule(flag)
    AlertRule.objects.create(flag=flag, name="roll back on errors", metric="error_rate", comparison="gt",
                             threshold=Decimal("10"), severity="critical", action=Action.ROLLBACK)
    set_rollout(flag, actor, 80)
    t = minute_ago()
    feed(calls=20, failures=10, at=t)
    results = alert_services.check_flag(flag.key, now=t)
    actions = {result.rule.name: result.actions for result in results}
    assert reductions(actions[rule.name]) == [(80, 50)]
    assert reductions(actions["roll back on errors"]) == [(50, 0)]
    assert [(e.before["rollout_percentage"], e.after["rollout_percentage"]) for e in alert_audits(flag)] == [
        ("80.00", "50.00"), ("50.00", "0.00")]


# --- seed defect 2: no data is not a firing condition -----------------------------------------------------


def test_ratio_rules_without_baseline_traffic_are_no_data_not_firing(flag):
    t = minute_ago()
    feed(calls=50, at=t, latency_ms=5000, tokens=5000)  # slow and costly, but nothing to compare with
    results = by_metric(alert_services.check_flag(flag.key, now=t))
    for metric in ("latency_ratio", "tokens_ratio"):
        assert results[metric].state == NO_DATA and results[metric].value is None
        assert "baseline" in results[metric].detail
    assert results["error_rate"].state == OK and results["success_rate"].state == OK
    assert Alert.objects.filter(flag=flag).count() == 0


def test_ratio_rules_with_too_few_baseline_calls_are_no_data(flag):
    t = minute_ago()
    feed(calls=50, at=t, latency_ms=5000, tokens=5000)
    feed(calls=9, mode="single", at=t, latency_ms=100, tokens=100)  # min_samples is 10 on both sides
    results = by_metric(alert_services.check_flag(flag.key, now=t))
    assert results["latency_ratio"].state == NO_DATA and results["tokens_ratio"].state == NO_DATA
    assert "9 single (baseline) call(s)" in results["latency_ratio"].detail


def test_a_tokens_ratio_against_a_zero_token_baseline_is_no_data(flag):
    t = minute_ago()
    feed(calls=20, at=t, tokens=500)
    feed(calls=20, mode="single", at=t, tokens=0)
    results = by_metric(alert_services.check_flag(flag.key, now=t))
    assert results["tokens_ratio"].state == NO_DATA and results["tokens_ratio"].value is None
    assert results["latency_ratio"].state == OK


def test_every_rule_is_no_data_below_min_samples_treatment_calls(flag):
    t = minute_ago()
    feed(calls=9, failures=9, at=t, latency_ms=9000, tokens=9000)  # all failed, but only 9 of the 10 needed
    feed(calls=50, mode="single", at=t)
    results = alert_services.check_flag(flag.key, now=t)
    assert [result.state for result in results] == [NO_DATA] * 4
    assert all(result.value is None for result in results)
    assert Alert.objects.filter(flag=flag).count() == 0


def test_exactly_min_samples_treatment_calls_are_judged(flag):
    t = minute_ago()
    feed(calls=10, failures=10, at=t)
    results = by_metric(alert_services.check_flag(flag.key, now=t))
    assert results["error_rate"].state == FIRING and results["error_rate"].value == Decimal("100")
    assert results["success_rate"].state == FIRING and results["success_rate"].value == Decimal("0")


def test_a_rule_with_min_samples_0_and_no_calls_is_no_data(flag):
    AlertRule.objects.filter(flag=flag).update(min_samples=0)
    results = alert_services.check_flag(flag.key, now=minute_ago())
    assert [result.state for result in results] == [NO_DATA] * 4


def test_records_outside_the_rule_window_do_not_count(flag):
    t = minute_ago()
    feed(calls=20, failures=20, at=t - timedelta(minutes=15))  # the window is the 15 minutes up to t's minute
    results = by_metric(alert_services.check_flag(flag.key, now=t))
    assert results["error_rate"].state == NO_DATA
    assert by_metric(alert_services.check_flag(flag.key, now=t - timedelta(minutes=1)))["error_rate"].state == FIRING


# --- seed defect 3: rates and ratios are numbers -----------------------------------------------------------


@pytest.mark.parametrize(("failures", "state"), [(4, OK), (5, OK), (6, FIRING), (10, FIRING), (50, FIRING)])
def test_error_rates_are_compared_as_numbers_not_strings(flag, failures, state):
    t = minute_ago()
    feed(calls=100, failures=failures, at=t)  # error rate = failures %: "10" < "5" as strings, 10 > 5 as numbers
    result = by_metric(alert_services.check_flag(flag.key, now=t))["error_rate"]
    assert isinstance(result.value, Decimal)
    assert result.value == Decimal(failures)
    assert result.state == state


def test_the_alert_stores_the_measured_value_as_a_decimal(flag):
    t = minute_ago()
    feed(calls=40, failures=3, at=t)  # 7.5% errors
    alert_services.check_flag(flag.key, now=t)
    alert = Alert.objects.get(rule=error_rule(flag))
    assert isinstance(alert.value, Decimal) and alert.value == Decimal("7.5")
    assert alert.severity == "critical" and "7.5" in alert.message


def test_a_slow_treatment_fires_the_latency_ratio_rule_with_the_ratio_as_value(flag):
    t = minute_ago()
    feed(calls=20, at=t, latency_ms=300, tokens=900)
    feed(calls=20, mode="single", at=t, latency_ms=100, tokens=1000)
    results = by_metric(alert_services.check_flag(flag.key, now=t))
    assert results["latency_ratio"].state == FIRING and results["latency_ratio"].value == Decimal(300) / 100
    assert results["tokens_ratio"].state == FIRING and results["tokens_ratio"].value == Decimal(900) / 1000


def test_a_treatment_within_the_ratios_is_ok(flag):
    t = minute_ago()
    feed(calls=20, at=t, latency_ms=150, tokens=500)  # 1.5x exactly does not fire (> 1.5); 0.5x tokens is fine
    feed(calls=20, mode="single", at=t, latency_ms=100, tokens=1000)
    results = by_metric(alert_services.check_flag(flag.key, now=t))
    assert results["latency_ratio"].state == OK and results["latency_ratio"].value == Decimal("1.5")
    assert results["tokens_ratio"].state == OK and results["tokens_ratio"].value == Decimal("0.5")


def test_disabled_rules_are_not_checked(flag):
    AlertRule.objects.filter(flag=flag).exclude(metric="error_rate").update(enabled=False)
    t = minute_ago()
    feed(calls=20, failures=20, at=t)
    results = alert_services.check_flag(flag.key, now=t)
    assert [result.rule.metric for result in results] == ["error_rate"]


# --- seed defect 4: one episode per rule, not a history entry per check --------------------------------------


def test_repeated_checks_while_firing_keep_one_alert_and_notify_once(flag, emails,
                                                                    django_capture_on_commit_callbacks):
    rule = error_rule(flag)
    t = minute_ago()
    feed(calls=20, failures=4, at=t - timedelta(minutes=2))
    for minutes in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            alert_services.check_flag(flag.key, now=t + timedelta(minutes=minutes))
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None
    assert alert.last_checked_at == t + timedelta(minutes=2)
    assert list(Notification.objects.filter(alert=alert).values_list("event", "channel", "status")) == [
        ("firing", "email", "sent")]
    assert [m.to for m in mail.outbox if ERROR_RULE in m.subject] == [["ops@example.com"]]


def test_a_cleared_condition_resolves_the_alert_with_one_resolved_notification(flag, emails,
                                                                               django_capture_on_commit_callbacks):
    rule = error_rule(flag)
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    with django_capture_on_commit_callbacks(execute=True):
        alert_services.check_flag(flag.key, now=t)
    feed(calls=20, at=t + timedelta(minutes=20))
    for minutes in (21, 22):
        with django_capture_on_commit_callbacks(execute=True):
            results = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=minutes)))
    assert results["error_rate"].state == OK
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == t + timedelta(minutes=21)
    assert list(Notification.objects.filter(alert=alert).order_by("id").values_list("event", flat=True)) == [
        "firing", "resolved"]
    subjects = [m.subject for m in mail.outbox if ERROR_RULE in m.subject]
    assert len(subjects) == 2 and subjects[0].endswith("firing") and subjects[1].endswith("resolved")


def test_a_later_firing_opens_a_new_episode(flag, emails):
    rule = error_rule(flag)
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    feed(calls=20, at=t + timedelta(minutes=20))
    alert_services.check_flag(flag.key, now=t + timedelta(minutes=21))
    feed(calls=20, failures=10, at=t + timedelta(minutes=40))
    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=41)))["error_rate"]
    assert "alert opened" in result.actions
    first, second = Alert.objects.filter(rule=rule).order_by("id")
    assert first.state == AlertState.RESOLVED
    assert second.state == AlertState.FIRING and second.value == Decimal("50")
    assert Notification.objects.filter(alert=second, event="firing").count() == 1
    assert Notification.objects.filter(alert__rule=rule).count() == 3  # firing, resolved, firing


def test_no_data_does_not_resolve_an_open_alert(flag, emails):
    rule = error_rule(flag)
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    later = t + timedelta(minutes=30)  # the window holds no calls any more
    result = by_metric(alert_services.check_flag(flag.key, now=later))["error_rate"]
    assert result.state == NO_DATA
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None and alert.last_checked_at == later
    assert not Notification.objects.filter(alert=alert, event="resolved").exists()


def test_without_alert_addresses_or_webhook_no_notification_is_made(flag, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], ""
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    assert Alert.objects.filter(flag=flag).exists()
    assert Notification.objects.count() == 0


def test_notifications_go_to_every_configured_channel(flag, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], "http://127.0.0.1:9/hook"
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    channels = Notification.objects.filter(alert__rule=error_rule(flag)).values_list("channel", flat=True)
    assert sorted(channels) == ["email", "webhook"]


# --- cooldown ---------------------------------------------------------------------------------------------


def test_within_the_cooldown_a_firing_rule_takes_no_second_action(flag, actor):
    rule = error_rule(flag)
    AlertRule.objects.filter(pk=rule.pk).update(action=Action.ROLLBACK, action_value=None, cooldown_minutes=30)
    set_rollout(flag, actor, 40)
    t = minute_ago()
    feed(calls=20, failures=10, at=t - timedelta(minutes=1))
    alert_services.check_flag(flag.key, now=t)
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0 and len(alert_audits(flag)) == 1

    set_rollout(flag, actor, 40)  # someone raises it again while errors continue
    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=5)))["error_rate"]
    flag.refresh_from_db()
    assert result.state == FIRING
    assert any("in cooldown" in action for action in result.actions)
    assert flag.rollout_percentage == Decimal("40") and len(alert_audits(flag)) == 1

    feed(calls=20, failures=10, at=t + timedelta(minutes=25))
    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=29)))["error_rate"]
    flag.refresh_from_db()
    assert any("in cooldown" in action for action in result.actions)
    assert flag.rollout_percentage == Decimal("40") and len(alert_audits(flag)) == 1

    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=30)))["error_rate"]
    flag.refresh_from_db()
    assert reductions(result.actions) == [(40, 0)]
    assert flag.rollout_percentage == 0 and len(alert_audits(flag)) == 2
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING
    assert [step["at"] for step in alert.actions_taken] == [t.isoformat(), (t + timedelta(minutes=30)).isoformat()]


def test_the_cooldown_outlasts_a_resolved_episode(flag, actor):
    rule = error_rule(flag)
    AlertRule.objects.filter(pk=rule.pk).update(action=Action.ROLLBACK, action_value=None, cooldown_minutes=60)
    set_rollout(flag, actor, 40)
    t = minute_ago()
    feed(calls=20, failures=10, at=t)
    alert_services.check_flag(flag.key, now=t)
    feed(calls=20, at=t + timedelta(minutes=20))
    alert_services.check_flag(flag.key, now=t + timedelta(minutes=21))  # resolved
    set_rollout(flag, actor, 40)
    feed(calls=20, failures=10, at=t + timedelta(minutes=40))
    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=41)))["error_rate"]
    flag.refresh_from_db()
    assert "alert opened" in result.actions and any("in cooldown" in a for a in result.actions)
    assert flag.rollout_percentage == Decimal("40") and len(alert_audits(flag)) == 1


def test_a_cap_that_had_nothing_to_reduce_starts_no_cooldown(flag, actor):
    rule = error_rule(flag)
    set_rollout(flag, actor, 10)
    t = minute_ago()
    feed(calls=20, failures=10, at=t - timedelta(minutes=1))
    alert_services.check_flag(flag.key, now=t)  # 10% is below the cap: nothing done
    set_rollout(flag, actor, 90)
    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=1)))["error_rate"]
    flag.refresh_from_db()
    assert reductions(result.actions) == [(90, 50)]
    assert flag.rollout_percentage == Decimal("50")
    assert Alert.objects.filter(rule=rule).count() == 1


# --- dry run ----------------------------------------------------------------------------------------------


def test_a_dry_run_reports_what_it_would_do_and_changes_nothing(flag, actor, emails,
                                                                 django_capture_on_commit_callbacks):
    set_rollout(flag, actor, 80)
    flag.refresh_from_db()
    version, audits = flag.version, AuditEntry.objects.count()
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        results = by_metric(alert_services.check_flag(flag.key, now=t, dry_run=True))
    assert results["error_rate"].state == FIRING
    assert results["error_rate"].actions[0] == "alert opened"
    assert reductions(results["error_rate"].actions) == [(80, 50)]
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled, flag.version) == (Decimal("80"), True, version)
    assert Alert.objects.count() == 0 and Notification.objects.count() == 0
    assert AuditEntry.objects.count() == audits
    assert callbacks == [] and mail.outbox == []


def test_a_dry_run_does_not_resolve_an_open_alert(flag, emails):
    rule = error_rule(flag)
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    feed(calls=20, at=t + timedelta(minutes=20))
    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=21), dry_run=True))["error_rate"]
    assert result.state == OK and result.actions == ["alert resolved"]
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None and alert.last_checked_at == t
    assert not Notification.objects.filter(event="resolved").exists()


def test_check_all_checks_every_flag_or_only_the_one_named(make_flag):
    make_flag("alpha_flag")
    make_flag("beta_flag")
    t = minute_ago()
    feed(calls=20, failures=4, at=t)  # records without a flag count for every flag comparing patch and single
    everything = alert_services.check_all(now=t)
    assert list(everything) == ["alpha_flag", "beta_flag"]
    assert all(len(results) == 4 for results in everything.values())
    assert Alert.objects.filter(flag__key="beta_flag", rule__metric="error_rate").count() == 1
    assert list(alert_services.check_all(now=t, flag_key="beta_flag")) == ["beta_flag"]


def test_records_of_another_flag_do_not_count(make_flag):
    mine = make_flag("my_flag")
    make_flag("other_flag")
    t = minute_ago()
    feed(calls=20, failures=20, at=t, flag="other_flag")
    assert by_metric(alert_services.check_flag(mine.key, now=t))["error_rate"].state == NO_DATA
    assert by_metric(alert_services.check_flag("other_flag", now=t))["error_rate"].state == FIRING


# --- acknowledging ----------------------------------------------------------------------------------------


def test_acknowledging_a_firing_alert_records_who_and_when(flag, django_user_model):
    user = django_user_model.objects.create_user("oncall", password="pw")
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    alert = Alert.objects.get(rule=error_rule(flag))
    before = timezone.now()
    acknowledged = alert_services.acknowledge(alert=alert, user=user)
    after = timezone.now()
    alert.refresh_from_db()
    assert acknowledged.state == alert.state == AlertState.ACKNOWLEDGED
    assert alert.acknowledged_by == "oncall"
    assert before <= alert.acknowledged_at <= after
    assert alert.resolved_at is None


def test_an_acknowledged_alert_stays_the_one_open_episode_and_then_resolves(flag, django_user_model, emails):
    user = django_user_model.objects.create_user("oncall", password="pw")
    rule = error_rule(flag)
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    alert_services.acknowledge(alert=Alert.objects.get(rule=rule), user=user)
    result = by_metric(alert_services.check_flag(flag.key, now=t + timedelta(minutes=1)))["error_rate"]
    assert result.state == FIRING and "alert opened" not in result.actions
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.ACKNOWLEDGED and alert.acknowledged_by == "oncall"
    assert Notification.objects.filter(alert=alert, event="firing").count() == 1

    feed(calls=20, at=t + timedelta(minutes=20))
    alert_services.check_flag(flag.key, now=t + timedelta(minutes=21))
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == t + timedelta(minutes=21)
    assert alert.acknowledged_by == "oncall"
    assert Notification.objects.filter(alert=alert, event="resolved").count() == 1


def test_acknowledging_a_resolved_alert_changes_nothing(flag, django_user_model):
    user = django_user_model.objects.create_user("oncall", password="pw")
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    alert_services.check_flag(flag.key, now=t)
    feed(calls=20, at=t + timedelta(minutes=20))
    alert_services.check_flag(flag.key, now=t + timedelta(minutes=21))
    alert = Alert.objects.get(rule=error_rule(flag))
    assert alert_services.acknowledge(alert=alert, user=user).state == AlertState.RESOLVED
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.acknowledged_by == "" and alert.acknowledged_at is None


# --- concurrency (PostgreSQL) -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_open_one_alert_notify_once_and_remediate_once(flag, actor, settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://...")
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    enqueued: list[int] = []
    # Delivery itself is tested in test_notify: here, what the checks hand to Celery after they commit.
    monkeypatch.setattr(alert_services, "_enqueue", enqueued.append)
    set_rollout(flag, actor, 80)
    t = minute_ago()
    feed(calls=20, failures=4, at=t)
    barrier = threading.Barrier(2)
    outcomes: list = []
    errors: list = []

    def check() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(alert_services.check_flag(flag.key, now=t))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(outcomes) == 2
    firing_rules = {r.rule.pk for r in outcomes[0] if r.state == FIRING}
    assert firing_rules == {error_rule(flag).pk, AlertRule.objects.get(flag=flag, metric="success_rate").pk}
    assert {r.rule.pk for r in outcomes[1] if r.state == FIRING} == firing_rules
    assert Alert.objects.filter(flag=flag).count() == len(firing_rules)
    opened = [r.rule.pk for results in outcomes for r in results if "alert opened" in r.actions]
    assert sorted(opened) == sorted(firing_rules)
    notifications = list(Notification.objects.filter(event="firing").values_list("id", flat=True))
    assert len(notifications) == len(firing_rules)
    assert sorted(enqueued) == sorted(notifications)
    (entry,) = alert_audits(flag)
    assert entry.after["rollout_percentage"] == "50.00"
    reduced = [reductions(r.actions) for results in outcomes for r in results if reductions(r.actions)]
    assert reduced == [[(80, 50)]]
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal("50")
