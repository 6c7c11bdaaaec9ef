"""Rollout plans: the seed's 10% -> 20% -> 50% -> 100% schedule, advancing on time and a health gate.

Ticks are judged at chosen moments after the stage began; the records they judge are fed at moments inside
the stage (ingest accepts them when told the time is theirs).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from alerts import plans
from alerts import services as alert_services
from alerts.models import Action, AlertRule, PlanState, RolloutPlan
from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from tests.alerts import by_metric, feed

pytestmark = pytest.mark.django_db

WEEK = timedelta(days=7)
ALICE = Actor("user", "alice")
BOB = Actor("user", "bob")


def start(flag: Flag, **kwargs) -> RolloutPlan:  # type: ignore[no-untyped-def]
    plan = plans.plan_create(flag=flag, created_by="alice", **kwargs)
    return plans.plan_start(plan=plan, actor=ALICE)


def feed_stage(plan: RolloutPlan, *, calls: int, failures: int = 0, after: timedelta = timedelta(days=1)) -> None:
    """Treatment calls `after` the current stage began."""
    plan.refresh_from_db()
    feed(calls=calls, failures=failures, at=plan.stage_started_at + after)


def tick_after(plan: RolloutPlan, after: timedelta, **kwargs) -> dict:  # type: ignore[no-untyped-def]
    plan.refresh_from_db()
    return plans.tick(plan.pk, now=plan.stage_started_at + after, **kwargs)


def last_audit(flag: Flag) -> AuditEntry:
    return AuditEntry.objects.filter(flag=flag).latest("id")


def rollout(flag: Flag) -> Decimal:
    flag.refresh_from_db()
    return flag.rollout_percentage


# --- creating -------------------------------------------------------------------------------------------


def test_plan_create_defaults_to_10_20_50_100_one_week_each(flag):
    plan = plans.plan_create(flag=flag, created_by="alice")
    stages = list(plan.stages.order_by("order").values_list("order", "percentage", "min_duration_minutes"))
    assert stages == [(0, 10, 7 * 24 * 60), (1, 20, 7 * 24 * 60), (2, 50, 7 * 24 * 60), (3, 100, 7 * 24 * 60)]
    assert (plan.state, plan.current_stage, plan.stage_started_at) == (PlanState.DRAFT, 0, None)
    assert (plan.advance_below, plan.rollback_above, plan.min_samples) == (Decimal("2"), Decimal("5"), 100)
    assert plan.created_by == "alice"
    assert (rollout(flag), flag.enabled) == (Decimal("0"), False)  # a draft changes nothing


def test_plan_create_accepts_custom_stages_and_gate(flag):
    plan = plans.plan_create(flag=flag, created_by="alice", stages=[("12.5", 60), (30, 0), ("100", 120)],
                             min_samples=20, advance_below="1", rollback_above="3")
    stages = list(plan.stages.order_by("order").values_list("percentage", "min_duration_minutes"))
    assert stages == [(Decimal("12.5"), 60), (Decimal("30"), 0), (Decimal("100"), 120)]
    assert (plan.advance_below, plan.rollback_above, plan.min_samples) == (Decimal("1"), Decimal("3"), 20)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"stages": [(20, 60), (10, 60)]}, "stages[1].percentage"),
        ({"stages": [(10, 60), (10, 60)]}, "stages[1].percentage"),
        ({"stages": [(10, 60), (101, 60)]}, "stages[1].percentage"),
        ({"stages": [(-1, 60)]}, "stages[0].percentage"),
        ({"stages": [("lots", 60)]}, "stages[0].percentage"),
        ({"stages": [(10, 60), (20, -5)]}, "stages[1].min_duration_minutes"),
        ({"stages": [(10, 1.5)]}, "stages[0].min_duration_minutes"),
        ({"advance_below": "6", "rollback_above": "5"}, "advance_below"),
        ({"rollback_above": "150"}, "rollback_above"),
    ],
)
def test_plan_create_rejects_invalid_input_naming_the_field_and_creates_nothing(flag, kwargs, field):
    with pytest.raises(ValidationError) as caught:
        plans.plan_create(flag=flag, created_by="alice", **kwargs)
    assert field in caught.value.message_dict
    assert RolloutPlan.objects.count() == 0


# --- starting -------------------------------------------------------------------------------------------


def test_plan_start_sets_the_flag_to_10_percent_enabled_audited_as_the_person_on_the_dashboard(flag):
    plan = start(flag)
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled) == (Decimal("10"), True)
    assert (plan.state, plan.current_stage) == (PlanState.RUNNING, 0)
    assert plan.stage_started_at is not None and plan.status_note == "started by alice"
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.actor_kind) == ("ui", "alice", "user")
    assert entry.after["rollout_percentage"] == "10.00" and entry.after["enabled"] is True
    assert "stage 1" in entry.reason


def test_only_a_draft_plan_can_start(flag):
    plan = start(flag)
    with pytest.raises(ValidationError) as caught:
        plans.plan_start(plan=plan, actor=ALICE)
    assert "state" in caught.value.message_dict


@pytest.mark.parametrize("pause_first", [False, True])
def test_a_flag_has_only_one_running_or_paused_plan(flag, pause_first):
    first = start(flag)
    if pause_first:
        plans.plan_pause(plan=first, actor=ALICE)
    second = plans.plan_create(flag=flag, created_by="bob")
    with pytest.raises(ValidationError) as caught:
        plans.plan_start(plan=second, actor=BOB)
    assert "already has a running or paused plan" in str(caught.value.message_dict["state"])
    second.refresh_from_db()
    assert second.state == PlanState.DRAFT
    plans.plan_abort(plan=first, actor=ALICE)
    assert plans.plan_start(plan=second, actor=BOB).state == PlanState.RUNNING


def test_plans_of_different_flags_run_side_by_side(make_flag):
    one, two = make_flag("one_flag"), make_flag("two_flag")
    assert start(one).state == start(two).state == PlanState.RUNNING


# --- the gate -------------------------------------------------------------------------------------------


def test_a_tick_before_the_stage_time_holds_and_says_until_when(flag):
    plan = start(flag)
    feed_stage(plan, calls=100)
    info = tick_after(plan, timedelta(days=3))
    plan.refresh_from_db()
    ends = plan.stage_started_at + WEEK
    assert info["decision"] == "hold" and info["why"] == f"stage runs until {ends:%Y-%m-%d %H:%M} UTC"
    assert info["time_left"] == "4d 0h 0m"
    assert plan.status_note == f"holding: {info['why']}"
    assert (plan.state, plan.current_stage, rollout(flag)) == (PlanState.RUNNING, 0, Decimal("10"))


@pytest.mark.parametrize(("after", "decision"), [(WEEK - timedelta(minutes=1), "hold"), (WEEK, "advance")])
def test_a_stage_advances_once_its_full_time_is_up(flag, after, decision):
    plan = start(flag)
    feed_stage(plan, calls=100)
    assert tick_after(plan, after)["decision"] == decision


def test_after_the_stage_time_with_enough_calls_and_under_2_percent_errors_the_plan_advances_to_20(flag):
    plan = start(flag)
    feed_stage(plan, calls=100, failures=1)
    plan.refresh_from_db()
    now = plan.stage_started_at + WEEK + timedelta(minutes=1)
    info = plans.tick(plan.pk, now=now)
    assert info["decision"] == "advance" and info["error_rate"] == 1.0 and info["calls"] == 100
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.stage_started_at) == (PlanState.RUNNING, 1, now)
    assert plan.status_note.startswith("advanced: error rate 1.0%")
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled) == (Decimal("20"), True)
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.actor_kind) == ("plan", "rollout-plan", "system")
    assert (entry.before["rollout_percentage"], entry.after["rollout_percentage"]) == ("10.00", "20.00")
    assert "stage 2" in entry.reason


@pytest.mark.parametrize("failures", [2, 3, 5])
def test_an_error_rate_from_2_to_5_percent_holds_and_says_why(flag, failures):
    plan = start(flag)
    feed_stage(plan, calls=100, failures=failures)
    info = tick_after(plan, WEEK + timedelta(minutes=1))
    assert info["decision"] == "hold"
    assert info["why"] == f"error rate {float(failures)}% is between 2.00% and 5.00%"
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, rollout(flag)) == (PlanState.RUNNING, 0, Decimal("10"))
    assert "between" in plan.status_note


@pytest.mark.parametrize("after", [timedelta(days=1, minutes=1), WEEK + timedelta(minutes=1)])
def test_an_error_rate_above_5_percent_rolls_back_to_0_even_before_the_stage_ends(flag, after):
    plan = start(flag)
    feed_stage(plan, calls=100, failures=6, after=timedelta(hours=1))
    info = tick_after(plan, after)
    assert info["decision"] == "rollback"
    plan.refresh_from_db()
    assert plan.state == PlanState.ROLLED_BACK and plan.status_note == "rolled back: error rate 6.0% > 5.00%"
    assert rollout(flag) == 0
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.after["rollout_percentage"]) == ("plan", "rollout-plan", "0.00")
    assert plans.tick(plan.pk, now=plan.stage_started_at + after) == {"decision": "not running"}


@pytest.mark.parametrize("failures", [0, 99])
def test_fewer_than_min_samples_calls_hold_whatever_their_errors(flag, failures):
    plan = start(flag)
    feed_stage(plan, calls=99, failures=failures)
    info = tick_after(plan, WEEK + timedelta(minutes=1))
    assert info["decision"] == "hold" and info["why"] == "99 of 100 treatment calls needed"
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, rollout(flag)) == (PlanState.RUNNING, 0, Decimal("10"))


def test_calls_before_the_stage_began_do_not_count_for_it(flag):
    plan = start(flag)
    feed_stage(plan, calls=100, after=timedelta(days=-1))
    assert tick_after(plan, WEEK + timedelta(minutes=1))["why"] == "0 of 100 treatment calls needed"


def test_the_last_stage_completes_the_plan(flag):
    plan = start(flag, stages=[(10, 60), (100, 60)], min_samples=20)
    feed_stage(plan, calls=20, after=timedelta(minutes=10))
    assert tick_after(plan, timedelta(minutes=61))["decision"] == "advance"
    assert rollout(flag) == 100
    feed_stage(plan, calls=20, after=timedelta(minutes=10))
    info = tick_after(plan, timedelta(minutes=61))
    assert info["decision"] == "complete" and info["last_stage"] is True
    plan.refresh_from_db()
    assert plan.state == PlanState.COMPLETED and plan.status_note.startswith("completed:")
    assert rollout(flag) == 100


def test_a_healthy_plan_goes_10_20_50_100_and_completes_week_by_week(flag):
    plan = start(flag)
    seen = [rollout(flag)]
    for _ in range(4):
        feed_stage(plan, calls=100)
        tick_after(plan, WEEK + timedelta(minutes=1))
        seen.append(rollout(flag))
    plan.refresh_from_db()
    assert seen == [10, 20, 50, 100, 100]
    assert plan.state == PlanState.COMPLETED
    assert AuditEntry.objects.filter(flag=flag, source=Source.PLAN).count() == 3


def test_a_dry_run_tick_says_what_it_would_do_and_changes_nothing(flag):
    plan = start(flag)
    feed_stage(plan, calls=100)
    plan.refresh_from_db()
    note, version = plan.status_note, Flag.objects.get(pk=flag.pk).version
    info = tick_after(plan, WEEK + timedelta(minutes=1), dry_run=True)
    assert info["decision"] == "advance"
    plan.refresh_from_db()
    flag.refresh_from_db()
    assert (plan.current_stage, plan.status_note) == (0, note)
    assert (flag.rollout_percentage, flag.version) == (Decimal("10"), version)


def test_tick_all_ticks_only_running_plans(make_flag):
    running = start(make_flag("running_flag"))
    paused = plans.plan_pause(plan=start(make_flag("paused_flag")), actor=ALICE)
    draft = plans.plan_create(flag=make_flag("draft_flag"), created_by="alice")
    results = plans.tick_all()
    assert list(results) == [running.pk]
    assert results[running.pk]["decision"] == "hold"
    assert plans.tick(paused.pk) == {"decision": "not running"}
    assert plans.tick(draft.pk) == {"decision": "not running"}


# --- pausing: people and alerts ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [Source.UI, Source.API, Source.CLI, Source.ADMIN])
def test_a_manual_rollout_change_pauses_the_running_plan_naming_who(flag, source):
    plan = start(flag)
    services.flag_set_rollout(flag=flag, percentage=5, actor=BOB, source=source, reason="too many tickets")
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED
    assert plan.status_note == f"paused: bob ({source}) changed the flag: too many tickets"
    feed_stage(plan, calls=100)
    assert tick_after(plan, WEEK + timedelta(minutes=1)) == {"decision": "not running"}
    assert rollout(flag) == 5  # the plan does not raise back what a person lowered


def test_turning_the_flag_off_by_hand_pauses_the_plan(flag):
    plan = start(flag)
    services.flag_update(flag=flag, enabled=False, actor=BOB, source=Source.UI)
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED and "bob" in plan.status_note


def test_a_change_that_does_not_touch_exposure_leaves_the_plan_running(flag):
    plan = start(flag)
    services.flag_update(flag=flag, name="Patch Mode (renamed)", description="new words", actor=BOB,
                         source=Source.UI)
    plan.refresh_from_db()
    assert plan.state == PlanState.RUNNING


def test_an_alert_cap_on_a_plan_stage_above_the_cap_pauses_the_plan(flag):
    plan = start(flag, stages=[(80, 60), (100, 60)])
    feed(calls=20, failures=4)  # now: 20% errors
    result = by_metric(alert_services.check_flag(flag.key))["error_rate"]
    assert any(action.startswith("rollout reduced from 80.00%") for action in result.actions)
    assert rollout(flag) == 50
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED
    assert plan.status_note.startswith(f"paused: alert-rule:{result.rule.pk} ") and "(alert)" in plan.status_note


def test_an_alert_that_changes_nothing_leaves_the_plan_running(flag):
    plan = start(flag)  # 10%, under the error rule's cap of 50%
    feed(calls=20, failures=4)
    alert_services.check_flag(flag.key)
    plan.refresh_from_db()
    assert plan.state == PlanState.RUNNING and rollout(flag) == 10


def test_a_pause_plan_rule_pauses_the_plan_and_leaves_the_flag(flag):
    rule = AlertRule.objects.get(flag=flag, metric="error_rate")
    AlertRule.objects.filter(pk=rule.pk).update(action=Action.PAUSE_PLAN, action_value=None)
    plan = start(flag)
    version = Flag.objects.get(pk=flag.pk).version
    feed(calls=20, failures=4)
    result = by_metric(alert_services.check_flag(flag.key))["error_rate"]
    assert "rollout plan paused" in result.actions
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED and f"alert-rule:{rule.pk}" in plan.status_note
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled, flag.version) == (Decimal("10"), True, version)


def test_a_pause_plan_rule_without_a_running_plan_says_so(flag):
    AlertRule.objects.filter(flag=flag, metric="error_rate").update(action=Action.PAUSE_PLAN, action_value=None)
    feed(calls=20, failures=4)
    result = by_metric(alert_services.check_flag(flag.key))["error_rate"]
    assert result.actions == ["alert opened", "no running plan to pause"]


# --- resume, advance now, abort -----------------------------------------------------------------------------


def test_resume_restarts_the_stage_in_force_with_a_fresh_clock(flag):
    plan = start(flag)
    started = plan.stage_started_at
    services.flag_set_rollout(flag=flag, percentage=5, actor=BOB, source=Source.UI)
    resumed = plans.plan_resume(plan=plan, actor=ALICE)
    assert (resumed.state, resumed.current_stage, resumed.status_note) == (PlanState.RUNNING, 0, "resumed by alice")
    assert resumed.stage_started_at > started
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled) == (Decimal("10"), True)
    entry = last_audit(flag)
    assert (entry.source, entry.actor) == ("ui", "alice")
    plan.refresh_from_db()
    assert plan.state == PlanState.RUNNING  # its own change does not pause it again


def test_only_a_paused_plan_resumes(flag):
    plan = start(flag)
    with pytest.raises(ValidationError) as caught:
        plans.plan_resume(plan=plan, actor=ALICE)
    assert "state" in caught.value.message_dict


def test_pause_by_hand_stops_the_ticks_and_only_a_running_plan_pauses(flag):
    plan = plans.plan_pause(plan=start(flag), actor=ALICE, reason="holiday")
    assert (plan.state, plan.status_note) == (PlanState.PAUSED, "paused by alice: holiday")
    with pytest.raises(ValidationError):
        plans.plan_pause(plan=plan, actor=ALICE)
    assert rollout(flag) == 10


def test_advance_now_moves_to_the_next_stage_and_runs_again(flag):
    plan = plans.plan_pause(plan=start(flag), actor=ALICE)
    advanced = plans.plan_advance_now(plan=plan, actor=BOB)
    assert (advanced.state, advanced.current_stage, advanced.status_note) == (PlanState.RUNNING, 1, "advanced by bob")
    assert rollout(flag) == 20
    entry = last_audit(flag)
    assert (entry.source, entry.actor) == ("ui", "bob") and "stage 2" in entry.reason


def test_advance_now_at_the_last_stage_is_refused(flag):
    plan = start(flag, stages=[(50, 60), (100, 60)])
    plans.plan_advance_now(plan=plan, actor=ALICE)
    with pytest.raises(ValidationError) as caught:
        plans.plan_advance_now(plan=plan, actor=ALICE)
    assert "last stage" in str(caught.value.message_dict["state"])
    assert rollout(flag) == 100


def test_abort_rolls_the_flag_back_to_0_and_a_second_abort_is_refused(flag):
    plan = start(flag)
    aborted = plans.plan_abort(plan=plan, actor=BOB, reason="customer complaints")
    assert (aborted.state, aborted.status_note) == (PlanState.ROLLED_BACK, "aborted by bob: customer complaints")
    assert rollout(flag) == 0
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.reason) == ("ui", "bob", "rollout plan aborted: customer complaints")
    with pytest.raises(ValidationError):
        plans.plan_abort(plan=plan, actor=BOB)
    with pytest.raises(ValidationError):
        plans.plan_resume(plan=plan, actor=BOB)


def test_aborting_a_draft_leaves_the_flag_alone(flag):
    plan = plans.plan_create(flag=flag, created_by="alice")
    audits = AuditEntry.objects.filter(flag=flag).count()
    assert plans.plan_abort(plan=plan, actor=ALICE).state == PlanState.ROLLED_BACK
    assert AuditEntry.objects.filter(flag=flag).count() == audits
    with pytest.raises(ValidationError):
        plans.plan_start(plan=plan, actor=ALICE)


def test_stage_descriptions_for_the_flag_list(flag):
    start(flag)
    assert plans.plan_stages_by_flag() == {flag.pk: "stage 1 of 4 (10%), running"}


# --- plans made in the admin (no plan_create checks) --------------------------------------------------------


def test_plan_start_refuses_falling_stages_made_around_plan_create(flag):
    plan = plans.plan_create(flag=flag, created_by="admin", stages=[(10, 60), (20, 60)])
    plan.stages.filter(order=1).update(percentage=5)
    with pytest.raises(ValidationError) as caught:
        plans.plan_start(plan=plan, actor=ALICE)
    assert "stages" in caught.value.message_dict
    assert rollout(flag) == 0


def test_a_plan_with_min_samples_0_and_no_calls_holds_instead_of_crashing(flag):
    plan = start(flag)
    RolloutPlan.objects.filter(pk=plan.pk).update(min_samples=0)
    info = tick_after(plan, WEEK + timedelta(minutes=1))
    assert info["decision"] == "hold"
    assert rollout(flag) == 10
