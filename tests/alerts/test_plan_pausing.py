"""A running plan and everyone else: a change from a person or an alert pauses it or steps it back, and
raising exposure while a critical alert is open needs confirmation (the helpers: tests/alerts/plan_steps.py).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from alerts import guardrails, plans
from alerts import services as alert_services
from alerts.models import Action, AlertRule, AlertState, PlanState, Severity
from flags import services
from flags.models import AuditEntry, Flag, Source
from tests.alerts import by_metric
from tests.alerts.plan_steps import (
    ALICE,
    BOB,
    DELTA_RULE,
    ERROR_RULE,
    LATENCY_RULE,
    MINUTE,
    WEEK,
    advance_by_hand,
    healthy,
    last_audit,
    open_alert,
    regression,
    rollout,
    stage_start,
    start,
    tick_after,
)

pytestmark = pytest.mark.django_db


# --- pausing: people and alerts -------------------------------------------------------------------------


@pytest.mark.parametrize("source", [Source.UI, Source.API, Source.CLI, Source.ADMIN])
def test_a_manual_rollout_change_pauses_the_running_plan_naming_who_at_the_change_time(flag, t0, source):
    plan = start(flag, t0)
    changed_at = t0 + timedelta(hours=3)
    services.flag_update(flag=flag, rollout_percentage=5, actor=BOB, source=source, reason="too many tickets",
                         now=changed_at)
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED
    # The source by its name, as every page says it ("dashboard", "command line").
    assert plan.status_note == f"paused: bob ({Source(source).label}) changed the flag: too many tickets"
    healthy(t0 + timedelta(days=1))
    assert tick_after(plan, WEEK + MINUTE) == {"decision": "not running"}
    assert rollout(flag) == 5  # the plan does not raise back what a person lowered


def test_a_plan_paused_by_a_change_from_elsewhere_records_the_time_of_that_change(flag, t0):
    plan = start(flag, t0)
    changed_at = t0 + timedelta(hours=3)
    services.flag_update(flag=flag, rollout_percentage=5, actor=BOB, source=Source.CLI, now=changed_at)
    assert last_audit(flag).created_at == changed_at
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at) == (PlanState.PAUSED, changed_at)


def test_a_plan_paused_by_an_alert_cap_records_the_checks_now(flag, t0):
    AlertRule.objects.filter(flag=flag, severity=Severity.CRITICAL).update(action=Action.CAP_ROLLOUT,
                                                                          action_value=5)
    plan = start(flag, t0)
    regression(t0 + MINUTE)
    now = t0 + 3 * MINUTE
    alert_services.check_flag(flag.key, now=now)
    assert last_audit(flag).created_at == now
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at) == (PlanState.PAUSED, now)


def test_the_slider_pauses_the_plan(flag, t0):
    plan = start(flag, t0)
    services.flag_set_rollout(flag=flag, percentage=5, actor=BOB, source=Source.UI, reason="too many tickets")
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED and plan.updated_at == Flag.objects.get(pk=flag.pk).updated_at


def test_turning_the_flag_off_by_hand_pauses_the_plan(flag, t0):
    plan = start(flag, t0)
    services.flag_update(flag=flag, enabled=False, actor=BOB, source=Source.UI, reason="test", now=t0 + MINUTE)
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED and "bob" in plan.status_note


def test_a_change_that_does_not_touch_exposure_leaves_the_plan_running(flag, t0):
    plan = start(flag, t0)
    services.flag_update(flag=flag, name="Patch Mode (renamed)", description="new words", actor=BOB,
                         source=Source.UI, reason="test", now=t0 + MINUTE)
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at) == (PlanState.RUNNING, t0)


def test_a_critical_alert_during_stage_2_steps_the_plan_back_to_stage_1_and_pauses_it(flag, t0):
    # Only the error-rate rule may act here (two critical rules at once: see the test below).
    AlertRule.objects.filter(flag=flag, name=DELTA_RULE).update(enabled=False)
    plan = start(flag, t0)
    stage_2 = t0 + timedelta(hours=1)
    advance_by_hand(plan, stage_2)
    regression(stage_2 + timedelta(minutes=10))
    now = stage_2 + timedelta(minutes=12)
    results = by_metric(alert_services.check_flag(flag.key, now=now))
    error = results["error_rate"]
    assert error.state == guardrails.REGRESSING
    assert "rollout plan stepped back to stage 1 (10.00%) and paused" in error.actions
    assert "rollout reduced from 20.00% to 10.00%" in error.actions
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.stage_started_at, plan.updated_at) == (PlanState.PAUSED, 0, now,
                                                                                        now)
    assert plan.status_note.startswith(f"paused at stage 1 after a regression: alert '{ERROR_RULE}'")
    assert rollout(flag) == 10
    entry = last_audit(flag)
    assert (entry.source, entry.created_at, entry.after["rollout_percentage"]) == ("alert", now, "10.00")
    assert entry.actor.startswith(f"alert-rule:{error.rule.pk} ")


def test_one_regression_caught_by_both_critical_rules_steps_back_only_one_stage(flag, t0):
    # 30% errors against a 1% baseline: the error-rate rule and the comparative rule (both critical,
    # both ROLLBACK) regress in the same check. One regression during a plan is one step back.
    plan = start(flag, t0)
    stage_2 = t0 + timedelta(hours=1)
    advance_by_hand(plan, stage_2)
    regression(stage_2 + timedelta(minutes=10))
    results = by_metric(alert_services.check_flag(flag.key, now=stage_2 + timedelta(minutes=12)))
    assert results["error_rate"].state == results["error_rate_delta"].state == guardrails.REGRESSING
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage) == (PlanState.PAUSED, 0)
    assert rollout(flag) == 10


def test_a_critical_alert_at_stage_1_rolls_back_to_0_and_ends_the_plan(flag, t0):
    plan = start(flag, t0)
    regression(t0 + MINUTE)
    now = t0 + 3 * MINUTE
    result = by_metric(alert_services.check_flag(flag.key, now=now))["error_rate"]
    assert "rollout plan rolled back to 0%" in result.actions
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at) == (PlanState.ROLLED_BACK, now)
    assert plan.status_note.startswith(f"rolled back: alert '{ERROR_RULE}'")
    assert rollout(flag) == 0
    assert last_audit(flag).created_at == now


def test_an_alert_cap_above_the_stage_changes_nothing_and_leaves_the_plan_running(flag, t0):
    AlertRule.objects.filter(flag=flag, severity=Severity.CRITICAL).update(action=Action.CAP_ROLLOUT,
                                                                          action_value=50)
    plan = start(flag, t0)  # 10%, under the cap
    regression(t0 + MINUTE)
    alert_services.check_flag(flag.key, now=t0 + 3 * MINUTE)
    plan.refresh_from_db()
    assert plan.state == PlanState.RUNNING and rollout(flag) == 10


def test_an_alert_cap_below_the_stage_pauses_the_plan(flag, t0):
    AlertRule.objects.filter(flag=flag, severity=Severity.CRITICAL).update(action=Action.CAP_ROLLOUT,
                                                                          action_value=5)
    plan = start(flag, t0)
    regression(t0 + MINUTE)
    now = t0 + 3 * MINUTE
    result = by_metric(alert_services.check_flag(flag.key, now=now))["error_rate"]
    assert "rollout reduced from 10.00% to 5.00%" in result.actions
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED
    assert plan.status_note.startswith(f"paused: alert-rule:{result.rule.pk} ")
    assert "(alert remediation)" in plan.status_note
    assert rollout(flag) == 5


def test_a_pause_plan_rule_pauses_the_plan_and_leaves_the_flag(flag, t0):
    AlertRule.objects.filter(flag=flag, severity=Severity.CRITICAL).update(action=Action.PAUSE_PLAN)
    plan = start(flag, t0)
    version = Flag.objects.get(pk=flag.pk).version
    regression(t0 + MINUTE)
    now = t0 + 3 * MINUTE
    result = by_metric(alert_services.check_flag(flag.key, now=now))["error_rate"]
    assert "rollout plan paused" in result.actions
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at) == (PlanState.PAUSED, now)
    assert f"alert-rule:{result.rule.pk}" in plan.status_note
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled, flag.version) == (Decimal("10"), True, version)


def test_a_pause_plan_rule_without_a_running_plan_says_so(flag, t0):
    AlertRule.objects.filter(flag=flag, name=ERROR_RULE).update(action=Action.PAUSE_PLAN)
    regression(t0)
    result = by_metric(alert_services.check_flag(flag.key, now=t0 + 2 * MINUTE))["error_rate"]
    assert result.actions == ["alert opened", "no running plan to pause"]


# --- raising exposure while a critical alert is open ----------------------------------------------------


@pytest.mark.parametrize("state", [AlertState.FIRING, AlertState.ACKNOWLEDGED])
def test_starting_a_plan_while_a_critical_alert_is_open_needs_confirmation(flag, t0, state):
    open_alert(flag, state=state)
    plan = plans.plan_create(flag=flag, created_by="alice")
    audits = AuditEntry.objects.count()
    with pytest.raises(plans.NeedsConfirmation) as caught:
        plans.plan_start(plan=plan, actor=ALICE, now=t0)
    assert isinstance(caught.value, ValidationError)
    message = " ".join(caught.value.message_dict["confirm"])
    assert f"critical guardrail firing: '{ERROR_RULE}'" in message and "confirm" in message
    plan.refresh_from_db()
    assert (plan.state, plan.stage_started_at, rollout(flag), AuditEntry.objects.count()) == (
        PlanState.DRAFT, None, Decimal("0"), audits)
    started = plans.plan_start(plan=plan, actor=ALICE, now=t0, confirmed=True)
    assert (started.state, started.stage_started_at, rollout(flag)) == (PlanState.RUNNING, t0, Decimal("10"))


def test_the_confirmation_names_every_open_critical_alert(flag, t0):
    open_alert(flag, ERROR_RULE)
    open_alert(flag, DELTA_RULE)
    plan = plans.plan_create(flag=flag, created_by="alice")
    with pytest.raises(plans.NeedsConfirmation) as caught:
        plans.plan_start(plan=plan, actor=ALICE, now=t0)
    assert f"critical guardrails firing: '{ERROR_RULE}', '{DELTA_RULE}'" in str(caught.value)


@pytest.mark.parametrize(("name", "state"), [(ERROR_RULE, AlertState.RESOLVED), (LATENCY_RULE, AlertState.FIRING)])
def test_a_resolved_or_warning_alert_needs_no_confirmation(flag, t0, name, state):
    open_alert(flag, name, state=state)
    assert start(flag, t0).state == PlanState.RUNNING


def test_resuming_a_plan_while_a_critical_alert_is_open_needs_confirmation(flag, t0):
    plan = plans.plan_pause(plan=start(flag, t0), actor=ALICE, now=t0 + MINUTE)
    services.flag_update(flag=flag, rollout_percentage=0, actor=BOB, source=Source.UI, reason="test",
                         now=t0 + 2 * MINUTE)
    open_alert(flag)
    with pytest.raises(plans.NeedsConfirmation):
        plans.plan_resume(plan=plan, actor=ALICE, now=t0 + 3 * MINUTE)
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at, rollout(flag)) == (PlanState.PAUSED, t0 + MINUTE, Decimal("0"))
    resumed = plans.plan_resume(plan=plan, actor=ALICE, now=t0 + 4 * MINUTE, confirmed=True)
    assert (resumed.state, resumed.stage_started_at, rollout(flag)) == (PlanState.RUNNING, t0 + 4 * MINUTE,
                                                                        Decimal("10"))


def test_advancing_by_hand_while_a_critical_alert_is_open_needs_confirmation(flag, t0):
    plan = start(flag, t0)
    open_alert(flag)
    with pytest.raises(plans.NeedsConfirmation):
        advance_by_hand(plan, t0 + MINUTE)
    assert (stage_start(plan), rollout(flag)) == (t0, Decimal("10"))
    advanced = plans.plan_advance_now(plan=plan, actor=ALICE, now=t0 + MINUTE, confirmed=True)
    assert (advanced.current_stage, rollout(flag)) == (1, Decimal("20"))


def test_pausing_and_aborting_need_no_confirmation(flag, t0):
    plan = start(flag, t0)
    open_alert(flag)
    assert plans.plan_pause(plan=plan, actor=ALICE, now=t0 + MINUTE).state == PlanState.PAUSED
    assert plans.plan_abort(plan=plan, actor=ALICE, now=t0 + 2 * MINUTE).state == PlanState.ROLLED_BACK
    assert rollout(flag) == 0
