"""How checks run: dry runs, check_all over every flag, two checks at once (PostgreSQL), and a failing or
extreme flag not stopping the others (the helpers: tests/alerts/checks.py).
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection, connections

from alerts import plans
from alerts import services as alert_services
from alerts.models import Alert, AlertRule, AlertState, Notification, PlanState
from flags.actors import Actor
from flags.models import AuditEntry
from tests.alerts import begin_stage, by_metric, feed, minute_ago
from tests.alerts.checks import (
    HEALTHY,
    MIN,
    REGRESSING,
    alert_audits,
    bad,
    check,
    error_rule,
    good,
    reductions,
    rollout,
)

pytestmark = pytest.mark.django_db


# --- dry run ------------------------------------------------------------------------------------------------


def test_a_dry_run_reports_what_it_would_do_and_changes_nothing(flag, t, emails, django_capture_on_commit_callbacks):
    begin_stage(flag, t, 80)
    flag.refresh_from_db()
    version, audits = flag.version, AuditEntry.objects.count()
    bad(t + MIN)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        results = check(flag, t + 30 * MIN, dry_run=True)
    assert results["error_rate"].state == REGRESSING
    assert results["error_rate"].actions[0] == "alert opened"
    assert reductions(results["error_rate"].actions) == [(80, 0)]
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled, flag.version) == (Decimal("80"), True, version)
    assert Alert.objects.count() == 0 and Notification.objects.count() == 0
    assert AuditEntry.objects.count() == audits
    assert callbacks == [] and mail.outbox == []


def test_a_dry_run_does_not_resolve_an_open_alert(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    result = check(flag, stage + 10 * MIN, dry_run=True)["error_rate"]
    assert result.state == HEALTHY and result.actions == ["alert resolved"]
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None
    assert alert.last_checked_at == stage + 2 * MIN
    assert not Notification.objects.filter(event="resolved").exists()


def test_a_dry_run_on_a_plan_neither_steps_back_nor_pauses_it(flag, t):
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t - 60 * MIN)
    plans.plan_advance_now(plan=plan, actor=actor, now=t)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN, dry_run=True)["error_rate"]
    assert reductions(result.actions) == [(20, 10)]
    assert rollout(flag) == 20
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage) == (PlanState.RUNNING, 1)


def test_check_all_checks_every_flag_or_only_the_one_named(make_flag, t):
    for key in ("alpha_flag", "beta_flag"):
        begin_stage(make_flag(key), t, 20)
    bad(t + MIN)  # records without a flag count for every flag comparing patch and single
    everything = alert_services.check_all(now=t + 30 * MIN)
    assert list(everything) == ["alpha_flag", "beta_flag"]
    assert all(len(results) == 5 for results in everything.values())
    assert Alert.objects.filter(flag__key="beta_flag", rule__metric="error_rate").count() == 1
    assert list(alert_services.check_all(now=t + 30 * MIN, flag_key="beta_flag")) == ["beta_flag"]


def test_check_all_writes_nothing_for_a_flag_without_regressions_or_open_alerts(flag, stage):
    good(stage + MIN)
    results = alert_services.check_all(now=stage + 30 * MIN)[flag.key]
    assert by_metric(results)["error_rate"].state == HEALTHY
    assert Alert.objects.count() == 0 and alert_audits(flag) == []


# --- concurrency (PostgreSQL) -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_open_each_episode_once_notify_once_and_remediate_once(flag, settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://...")
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    enqueued: list[int] = []
    # Delivery itself is tested in test_notify: here, what the checks hand to Celery after they commit.
    monkeypatch.setattr(alert_services, "_enqueue", enqueued.append)
    t = minute_ago()
    begin_stage(flag, t, 80)
    bad(t + MIN)
    feed(calls=500, mode="single", at=t + MIN)  # a clean baseline: the delta rule regresses too
    now = t + 30 * MIN
    barrier = threading.Barrier(2)
    outcomes: list = []
    errors: list = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(alert_services.check_all(now=now)[flag.key])
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(outcomes) == 2
    expected = {error_rule(flag).pk, AlertRule.objects.get(flag=flag, metric="error_rate_delta").pk}
    # The check that got the lock second re-reads under it: the rollback at `now` began a new stage with no
    # calls yet, so it sees nothing regressing (and keeps the episodes open).
    regressing = sorted(({r.rule.pk for r in results if r.state == REGRESSING} for results in outcomes), key=len)
    assert regressing == [set(), expected]
    assert Alert.objects.filter(flag=flag).count() == len(expected)
    opened = [r.rule.pk for results in outcomes for r in results if "alert opened" in r.actions]
    assert sorted(opened) == sorted(expected)
    notifications = list(Notification.objects.filter(event="firing").values_list("id", flat=True))
    assert len(notifications) == len(expected)
    assert sorted(enqueued) == sorted(notifications)
    (entry,) = alert_audits(flag)
    assert entry.after["rollout_percentage"] == "0.00" and entry.created_at == now
    reduced = [reductions(r.actions) for results in outcomes for r in results if reductions(r.actions)]
    assert reduced == [[(80, 0)]]
    assert rollout(flag) == 0


def test_an_estimate_beyond_what_an_alert_stores_is_kept_at_its_edge_and_the_check_goes_on(flag, t, stage):
    # Tokens per call 10^9 against a baseline of 1 token in 1,200 calls: the ratio (about 10^12) does not
    # fit Alert.value (14 digits, 3 decimals: below 10^11). The check stores the edge of the range.
    from alerts.services import VALUE_LIMIT

    feed(calls=1, mode="single", at=t + MIN, tokens=1)
    for offset in range(1, 4):
        feed(calls=40, at=t + offset * MIN, tokens=10**9)
        feed(calls=400, mode="single", at=t + offset * MIN, tokens=0)
    results = check(flag, t + 10 * MIN)
    assert results["tokens_ratio"].state == "regressing"
    assert results["tokens_ratio"].value > VALUE_LIMIT
    alert = Alert.objects.get(flag=flag, rule__metric="tokens_ratio")
    assert alert.value == Decimal(VALUE_LIMIT)


def test_one_flag_failing_its_check_does_not_stop_the_others(flag, make_flag, t, stage, monkeypatch):
    other = make_flag("other_flag")
    begin_stage(other, t, 20)
    bad(t + MIN, flag="other_flag")
    original = alert_services.check_flag

    def broken(key, **kwargs):  # type: ignore[no-untyped-def]
        if key == flag.key:
            raise RuntimeError("boom")
        return original(key, **kwargs)

    bad(t + MIN, flag=flag.key)
    monkeypatch.setattr(alert_services, "check_flag", broken)
    results = alert_services.check_all(now=t + 10 * MIN)
    assert results[flag.key] == []
    assert Alert.objects.filter(flag=other).exists()
    other.refresh_from_db()
    assert other.rollout_percentage == 0


def test_a_dry_run_reports_one_reduction_when_two_rules_see_the_same_regression(flag, t, stage):
    # The error-rate and error-delta rules both regress; a real check reduces once and the second rule
    # finds nothing left to reduce. The dry run must say the same, and change nothing.
    bad(t + MIN)
    feed(calls=400, mode="single", at=t + MIN)
    dry = alert_services.check_flag(flag.key, now=t + 30 * MIN, dry_run=True)
    assert [reductions(r.actions) for r in dry if reductions(r.actions)] == [[(20, 0)]]
    assert rollout(flag) == 20 and not Alert.objects.filter(flag=flag).exists()
    real = alert_services.check_flag(flag.key, now=t + 30 * MIN)
    assert [reductions(r.actions) for r in real if reductions(r.actions)] == [[(20, 0)]]
    assert rollout(flag) == 0
