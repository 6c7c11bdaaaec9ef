"""Remediation only ever reduces exposure: rollback, cap, disable and pause-plan actions, how fast a step
change is caught, and the cooldown between actions (the helpers: tests/alerts/checks.py).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from alerts import plans
from alerts import services as alert_services
from alerts.models import Action, Alert, AlertRule, AlertState, PlanState
from flags.actors import Actor
from tests.alerts import begin_stage
from tests.alerts.checks import (
    ERROR_RULE,
    MIN,
    REGRESSING,
    alert_audits,
    bad,
    check,
    feed_minutes,
    good,
    reductions,
    rollout,
    set_action,
)

pytestmark = pytest.mark.django_db


# --- remediation only ever reduces exposure -----------------------------------------------------------------


def test_the_default_critical_action_rolls_a_20_percent_rollout_back_to_0(flag, stage):
    bad(stage + MIN)
    now = stage + 30 * MIN
    result = check(flag, now)["error_rate"]
    assert rollout(flag) == 0 and flag.enabled is True
    assert reductions(result.actions) == [(20, 0)]
    (entry,) = alert_audits(flag)
    assert entry.actor.startswith(f"alert-rule:{result.rule.pk} ") and entry.actor_kind == "system"
    assert entry.reason.startswith(f"alert '{ERROR_RULE}'")
    assert entry.before["rollout_percentage"] == "20.00" and entry.after["rollout_percentage"] == "0.00"
    assert entry.created_at == now
    alert = Alert.objects.get(rule=result.rule)
    assert [reductions(step["what"]) for step in alert.actions_taken] == [[(20, 0)]]
    assert alert.actions_taken[0]["at"] == now.isoformat()


def test_a_critical_cap_at_50_on_a_10_percent_rollout_does_not_raise_it(flag, t):
    set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, 10)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert result.state == REGRESSING
    assert rollout(flag) == Decimal("10") and flag.enabled is True
    assert any("nothing to reduce" in action for action in result.actions)
    assert reductions(result.actions) == []
    assert alert_audits(flag) == []
    assert Alert.objects.get(rule=result.rule).actions_taken == []


@pytest.mark.parametrize(
    ("start", "expected"),
    [("0", "0"), ("10", "10"), ("49.99", "49.99"), ("50", "50"), ("50.01", "50"), ("80", "50"), ("100", "50")],
)
def test_the_cap_never_raises_the_rollout(flag, t, start, expected):
    set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, start)
    bad(t + MIN)
    alert_services.check_flag(flag.key, now=t + 30 * MIN)
    assert rollout(flag) == Decimal(expected)
    assert flag.rollout_percentage <= Decimal(start)
    assert len(alert_audits(flag)) == (1 if Decimal(start) > 50 else 0)


def test_a_cap_on_an_80_percent_rollout_caps_it_at_50_with_an_alert_audit_entry(flag, t):
    set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, 80)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert rollout(flag) == Decimal("50")
    assert reductions(result.actions) == [(80, 50)]
    (entry,) = alert_audits(flag)
    assert entry.before["rollout_percentage"] == "80.00" and entry.after["rollout_percentage"] == "50.00"


def test_a_disable_rule_turns_the_flag_off_and_leaves_the_percentage(flag, t):
    set_action(flag, Action.DISABLE)
    begin_stage(flag, t, 30)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert rollout(flag) == Decimal("30") and flag.enabled is False
    assert "flag disabled (kill switch)" in result.actions
    (entry,) = alert_audits(flag)
    assert (entry.action, entry.before["enabled"], entry.after["enabled"]) == ("disable", True, False)


def test_a_disable_rule_on_a_disabled_flag_does_nothing(flag, t):
    set_action(flag, Action.DISABLE)
    begin_stage(flag, t, 30, enabled=False)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert result.actions == ["alert opened", "flag already disabled"]
    assert alert_audits(flag) == []


def test_a_rollback_during_a_running_plan_steps_back_a_stage_and_pauses_it(flag, t):
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60), (50, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t - 60 * MIN)
    plans.plan_advance_now(plan=plan, actor=actor, now=t)  # 20% since t
    bad(t + MIN)
    now = t + 30 * MIN
    result = check(flag, now)["error_rate"]
    assert rollout(flag) == Decimal("10")
    assert reductions(result.actions) == [(20, 10)]
    assert any("stepped back to stage 1" in action for action in result.actions)
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.stage_started_at) == (PlanState.PAUSED, 0, now)
    (entry,) = alert_audits(flag)
    assert entry.created_at == now


def test_a_pause_plan_rule_pauses_the_plan_and_leaves_the_flag(flag, t):
    set_action(flag, Action.PAUSE_PLAN)
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert "rollout plan paused" in result.actions
    assert rollout(flag) == Decimal("10")
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED


def test_a_later_rule_sees_the_rollout_an_earlier_rule_left(flag, t):
    rule = set_action(flag, Action.CAP_ROLLOUT, "50")
    AlertRule.objects.create(flag=flag, name="roll back on errors", metric="error_rate", comparison="gt",
                             threshold=Decimal("10"), severity="critical", action=Action.ROLLBACK)
    begin_stage(flag, t, 80)
    bad(t + MIN)
    results = alert_services.check_flag(flag.key, now=t + 30 * MIN)
    actions = {result.rule.name: result.actions for result in results}
    assert reductions(actions[rule.name]) == [(80, 50)]
    assert reductions(actions["roll back on errors"]) == [(50, 0)]
    assert [(e.before["rollout_percentage"], e.after["rollout_percentage"]) for e in alert_audits(flag)] == [
        ("80.00", "50.00"), ("50.00", "0.00")]


# --- a step change is caught in minutes ---------------------------------------------------------------------


def test_a_step_from_1_to_10_percent_errors_after_an_hour_is_rolled_back_within_2_checks(flag, stage):
    # 60 healthy minutes at 20%: 100 patch calls (1% failing) and 400 single calls (1% failing) a minute.
    feed_minutes(stage, 60, patch=100, patch_failures=1, single=400, single_failures=4)
    for minute in range(1, 61):  # a check every minute: none raises a false alarm
        results = alert_services.check_all(now=stage + minute * MIN + timedelta(seconds=5))[flag.key]
        assert all(result.state != REGRESSING for result in results), minute
    assert Alert.objects.count() == 0 and rollout(flag) == 20
    # The step: patch errors go to 10% from minute 60.
    feed_minutes(stage + 60 * MIN, 2, patch=100, patch_failures=10, single=400, single_failures=4)
    rolled_back_at = None
    for minute in (61, 62):
        alert_services.check_all(now=stage + minute * MIN + timedelta(seconds=5))
        if rollout(flag) == 0:
            rolled_back_at = minute
            break
    assert rolled_back_at is not None, "still at 20% two checks after the step"
    assert {a.rule.severity for a in Alert.objects.filter(flag=flag)} == {"critical"}
    (entry,) = alert_audits(flag)
    assert entry.after["rollout_percentage"] == "0.00"


# --- cooldown -----------------------------------------------------------------------------------------------


def test_within_the_cooldown_a_regressing_rule_takes_no_second_action(flag, stage):
    rule = set_action(flag, Action.ROLLBACK, cooldown_minutes=30)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    assert rollout(flag) == 0 and len(alert_audits(flag)) == 1

    begin_stage(flag, stage + 3 * MIN, 40)  # someone raises it again while errors continue
    bad(stage + 4 * MIN)
    result = check(flag, stage + 5 * MIN)["error_rate"]
    assert result.state == REGRESSING
    assert any("in cooldown" in action for action in result.actions)
    assert rollout(flag) == Decimal("40") and len(alert_audits(flag)) == 1

    result = check(flag, stage + 31 * MIN)["error_rate"]  # 29 minutes after the action
    assert any("in cooldown" in action for action in result.actions)
    assert rollout(flag) == Decimal("40") and len(alert_audits(flag)) == 1

    result = check(flag, stage + 32 * MIN)["error_rate"]  # 30 minutes after it
    assert reductions(result.actions) == [(40, 0)]
    assert rollout(flag) == 0 and len(alert_audits(flag)) == 2
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING
    assert [step["at"] for step in alert.actions_taken] == [(stage + 2 * MIN).isoformat(),
                                                             (stage + 32 * MIN).isoformat()]


def test_the_cooldown_outlasts_a_resolved_episode(flag, stage):
    set_action(flag, Action.ROLLBACK, cooldown_minutes=60)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    check(flag, stage + 10 * MIN)  # resolved
    assert Alert.objects.get(flag=flag).state == AlertState.RESOLVED
    begin_stage(flag, stage + 20 * MIN, 40)
    bad(stage + 21 * MIN)
    result = check(flag, stage + 22 * MIN)["error_rate"]
    assert "alert opened" in result.actions and any("in cooldown" in a for a in result.actions)
    assert rollout(flag) == Decimal("40") and len(alert_audits(flag)) == 1


def test_a_cap_that_had_nothing_to_reduce_starts_no_cooldown(flag, t):
    rule = set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, 10)
    bad(t + MIN)
    check(flag, t + 2 * MIN)  # 10% is below the cap: nothing done
    begin_stage(flag, t + 3 * MIN, 90)
    bad(t + 4 * MIN)
    result = check(flag, t + 5 * MIN)["error_rate"]
    assert reductions(result.actions) == [(90, 50)]
    assert rollout(flag) == Decimal("50")
    assert Alert.objects.filter(rule=rule).count() == 1
