"""Rollout plans: the seed's 10% -> 20% -> 50% -> 100% schedule, gated on the alert rules' statistics.

Every plan function here is given its `now`: plans start at T0 (a whole minute an hour from now), the
records a tick judges are fed at moments inside the stage (ingest accepts them when told the time is
theirs), and ticks are judged at chosen moments after the stage began. Healthy data is 1% errors in both
modes, the same latency, and the treatment using fewer tokens than the baseline, in batches large enough
for every default rule to decide.

This module: creating, starting, resuming, advancing by hand and aborting plans. The gate has
test_plan_gate, pausing and confirmations test_plan_pausing; the helpers are in tests/alerts/plan_steps.py.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from alerts import plans
from alerts.models import PlanState, RolloutPlan
from flags import services
from flags.models import AuditEntry, Source
from tests.alerts.plan_steps import (
    ALICE,
    BOB,
    MINUTE,
    WEEK,
    admin_made_plan,
    advance_by_hand,
    last_audit,
    regression,
    rollout,
    stage_start,
    start,
    tick_after,
)

pytestmark = pytest.mark.django_db


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
        ({"stages": [("10.001", 60)]}, "stages[0].percentage"),
        ({"stages": [(10, 60), (20, -5)]}, "stages[1].min_duration_minutes"),
        ({"stages": [(10, 1.5)]}, "stages[0].min_duration_minutes"),
        ({"stages": [(10, True)]}, "stages[0].min_duration_minutes"),
        ({"advance_below": "6", "rollback_above": "5"}, "advance_below"),
        ({"rollback_above": "150"}, "rollback_above"),
        ({"advance_below": "x"}, "advance_below"),
    ],
)
def test_plan_create_rejects_invalid_input_naming_the_field_and_creates_nothing(flag, kwargs, field):
    with pytest.raises(ValidationError) as caught:
        plans.plan_create(flag=flag, created_by="alice", **kwargs)
    assert field in caught.value.message_dict
    assert RolloutPlan.objects.count() == 0


# --- starting -------------------------------------------------------------------------------------------


def test_plan_start_sets_the_flag_to_10_percent_enabled_audited_as_the_person_at_its_now(flag, t0):
    plan = start(flag, t0)
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled) == (Decimal("10"), True)
    assert (plan.state, plan.current_stage, plan.status_note) == (PlanState.RUNNING, 0, "started by alice")
    assert plan.stage_started_at == plan.updated_at == t0
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.actor_kind, entry.created_at) == ("ui", "alice", "user", t0)
    assert entry.after["rollout_percentage"] == "10.00" and entry.after["enabled"] is True
    assert "stage 1" in entry.reason


def test_only_a_draft_plan_can_start(flag, t0):
    plan = start(flag, t0)
    with pytest.raises(ValidationError) as caught:
        plans.plan_start(plan=plan, actor=ALICE, now=t0 + MINUTE)
    assert "state" in caught.value.message_dict
    assert stage_start(plan) == t0


@pytest.mark.parametrize("pause_first", [False, True])
def test_a_flag_has_only_one_running_or_paused_plan(flag, t0, pause_first):
    first = start(flag, t0)
    if pause_first:
        plans.plan_pause(plan=first, actor=ALICE, now=t0 + MINUTE)
    second = admin_made_plan(flag)  # plan_create would refuse it (see the next test)
    with pytest.raises(ValidationError) as caught:
        plans.plan_start(plan=second, actor=BOB, now=t0 + 2 * MINUTE)
    assert "already has a running or paused plan" in str(caught.value.message_dict["state"])
    second.refresh_from_db()
    assert second.state == PlanState.DRAFT
    plans.plan_abort(plan=first, actor=ALICE, now=t0 + 3 * MINUTE)
    assert plans.plan_start(plan=second, actor=BOB, now=t0 + 4 * MINUTE).state == PlanState.RUNNING


@pytest.mark.parametrize("state", ["draft", "running", "paused"])
def test_plan_create_refuses_a_second_plan_while_one_is_draft_running_or_paused(flag, t0, state):
    first = plans.plan_create(flag=flag, created_by="alice")
    if state != "draft":
        plans.plan_start(plan=first, actor=ALICE, now=t0)
    if state == "paused":
        plans.plan_pause(plan=first, actor=ALICE, now=t0 + MINUTE)
    with pytest.raises(ValidationError) as caught:
        plans.plan_create(flag=flag, created_by="bob")
    assert caught.value.messages == ["this flag already has a plan in draft, running or paused"]
    assert list(RolloutPlan.objects.filter(flag=flag)) == [first]


@pytest.mark.parametrize("end", ["abort", "complete"])
def test_plan_create_makes_a_new_plan_once_the_last_one_has_ended(flag, t0, end):
    first = start(flag, t0, stages=[(10, 0)])
    if end == "abort":
        plans.plan_abort(plan=first, actor=ALICE, now=t0 + MINUTE)
    else:
        RolloutPlan.objects.filter(pk=first.pk).update(state=PlanState.COMPLETED)
    second = plans.plan_create(flag=flag, created_by="bob")
    assert second.state == PlanState.DRAFT and second.pk != first.pk


def test_plans_of_different_flags_run_side_by_side(make_flag, t0):
    one, two = make_flag("one_flag"), make_flag("two_flag")
    assert start(one, t0).state == start(two, t0).state == PlanState.RUNNING


# --- resume, advance now, abort, and the times they write -----------------------------------------------


def test_resume_restarts_the_stage_in_force_with_a_fresh_clock(flag, t0):
    plan = start(flag, t0)
    changed_at, resumed_at = t0 + timedelta(days=1), t0 + timedelta(days=2)
    services.flag_update(flag=flag, rollout_percentage=5, actor=BOB, source=Source.UI, reason="test", now=changed_at)
    resumed = plans.plan_resume(plan=plan, actor=ALICE, now=resumed_at)
    assert (resumed.state, resumed.current_stage, resumed.status_note) == (PlanState.RUNNING, 0, "resumed by alice")
    assert resumed.stage_started_at == resumed.updated_at == resumed_at
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled) == (Decimal("10"), True)
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.created_at) == ("ui", "alice", resumed_at)
    plan.refresh_from_db()
    assert plan.state == PlanState.RUNNING  # its own change does not pause it again
    assert tick_after(plan, WEEK - MINUTE)["why"] == f"stage runs until {resumed_at + WEEK:%Y-%m-%d %H:%M} UTC"


def test_only_a_paused_plan_resumes(flag, t0):
    plan = start(flag, t0)
    with pytest.raises(ValidationError) as caught:
        plans.plan_resume(plan=plan, actor=ALICE, now=t0 + MINUTE)
    assert "state" in caught.value.message_dict


def test_pause_by_hand_stops_the_ticks_and_only_a_running_plan_pauses(flag, t0):
    plan = plans.plan_pause(plan=start(flag, t0), actor=ALICE, reason="holiday", now=t0 + MINUTE)
    assert (plan.state, plan.status_note, plan.updated_at) == (PlanState.PAUSED, "paused by alice: holiday",
                                                               t0 + MINUTE)
    with pytest.raises(ValidationError):
        plans.plan_pause(plan=plan, actor=ALICE, now=t0 + 2 * MINUTE)
    assert plans.tick(plan.pk, now=t0 + 2 * WEEK) == {"decision": "not running"}
    assert rollout(flag) == 10


def test_advance_now_moves_to_the_next_stage_and_runs_again(flag, t0):
    plan = plans.plan_pause(plan=start(flag, t0), actor=ALICE, now=t0 + MINUTE)
    now = t0 + 2 * MINUTE
    advanced = plans.plan_advance_now(plan=plan, actor=BOB, now=now)
    assert (advanced.state, advanced.current_stage, advanced.status_note) == (PlanState.RUNNING, 1, "advanced by bob")
    assert advanced.stage_started_at == advanced.updated_at == now
    assert rollout(flag) == 20
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.created_at) == ("ui", "bob", now) and "stage 2" in entry.reason


def test_advance_now_at_the_last_stage_is_refused(flag, t0):
    plan = start(flag, t0, stages=[(50, 60), (100, 60)])
    advance_by_hand(plan, t0 + MINUTE)
    with pytest.raises(ValidationError) as caught:
        advance_by_hand(plan, t0 + 2 * MINUTE)
    assert "last stage" in str(caught.value.message_dict["state"])
    assert rollout(flag) == 100


def test_abort_rolls_the_flag_back_to_0_at_its_now_and_a_second_abort_is_refused(flag, t0):
    plan = start(flag, t0)
    now = t0 + timedelta(hours=5)
    aborted = plans.plan_abort(plan=plan, actor=BOB, reason="customer complaints", now=now)
    assert (aborted.state, aborted.status_note, aborted.updated_at) == (
        PlanState.ROLLED_BACK, "aborted by bob: customer complaints", now)
    assert rollout(flag) == 0
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.reason, entry.created_at) == (
        "ui", "bob", "rollout plan aborted: customer complaints", now)
    with pytest.raises(ValidationError):
        plans.plan_abort(plan=plan, actor=BOB, now=now)
    with pytest.raises(ValidationError):
        plans.plan_resume(plan=plan, actor=BOB, now=now)


def test_aborting_a_draft_leaves_the_flag_alone(flag, t0):
    plan = plans.plan_create(flag=flag, created_by="alice")
    audits = AuditEntry.objects.filter(flag=flag).count()
    aborted = plans.plan_abort(plan=plan, actor=ALICE, now=t0)
    assert (aborted.state, aborted.updated_at) == (PlanState.ROLLED_BACK, t0)
    assert AuditEntry.objects.filter(flag=flag).count() == audits
    with pytest.raises(ValidationError):
        plans.plan_start(plan=plan, actor=ALICE, now=t0)


def test_every_time_a_plan_writes_is_the_now_it_was_given(flag, t0):
    # A whole life at chosen moments, none of them the wall clock: each write carries its caller's now.
    times = [t0 + timedelta(days=d, minutes=d) for d in range(8)]
    plan = start(flag, times[0])
    plans.plan_pause(plan=plan, actor=ALICE, now=times[1])
    plans.plan_resume(plan=plan, actor=ALICE, now=times[2])
    advance_by_hand(plan, times[3])
    plans.tick_all(now=times[4])  # holds
    plan.refresh_from_db()
    assert (plan.updated_at, plan.stage_started_at) == (times[4], times[3])
    regression(times[4] + MINUTE)
    assert plans.tick(plan.pk, now=times[5])["decision"] == "rollback"
    plans.plan_resume(plan=plan, actor=ALICE, now=times[6])
    plans.plan_abort(plan=plan, actor=ALICE, now=times[7])
    plan.refresh_from_db()
    assert (plan.updated_at, plan.stage_started_at) == (times[7], times[6])
    entries = AuditEntry.objects.filter(flag=flag, created_at__gte=times[0]).order_by("id")
    assert [(e.created_at, e.after["rollout_percentage"]) for e in entries] == [
        (times[0], "10.00"), (times[3], "20.00"), (times[5], "10.00"), (times[7], "0.00")]


def test_stage_descriptions_for_the_flag_list(flag, t0):
    plan = start(flag, t0)
    assert plans.plan_stages_by_flag() == {flag.pk: "stage 1 of 4 (10%), running"}
    advance_by_hand(plan, t0 + MINUTE)
    plans.plan_pause(plan=plan, actor=ALICE, now=t0 + 2 * MINUTE)
    assert plans.plan_stages_by_flag() == {flag.pk: "stage 2 of 4 (20%), paused"}


# --- plans made in the admin (no plan_create checks) ----------------------------------------------------


def test_plan_start_refuses_falling_stages_made_around_plan_create(flag, t0):
    plan = plans.plan_create(flag=flag, created_by="admin", stages=[(10, 60), (20, 60)])
    plan.stages.filter(order=1).update(percentage=5)
    with pytest.raises(ValidationError) as caught:
        plans.plan_start(plan=plan, actor=ALICE, now=t0)
    assert "stages" in caught.value.message_dict
    assert rollout(flag) == 0
