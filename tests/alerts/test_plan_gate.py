"""The rollout plan gate: a stage advances, holds saying why, or rolls back, judged on the stage's own
complete minutes (the helpers: tests/alerts/plan_steps.py).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from alerts import guardrails, plans
from alerts import services as alert_services
from alerts.models import Alert, PlanState, RolloutPlan
from flags import services
from flags.models import AuditEntry, Flag, Source
from monitoring import services as monitoring
from tests.alerts import feed
from tests.alerts.plan_steps import (
    ALICE,
    BOB,
    ERROR_RULE,
    LATENCY_RULE,
    MINUTE,
    WEEK,
    advance_by_hand,
    healthy,
    last_audit,
    regression,
    rollout,
    stage_start,
    start,
    tick_after,
)

pytestmark = pytest.mark.django_db


# --- the gate: advancing --------------------------------------------------------------------------------


def test_a_healthy_stage_advances_to_20_percent_after_its_week(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1))
    now = t0 + WEEK + MINUTE
    info = plans.tick(plan.pk, now=now)
    assert info["decision"] == "advance", info["why"]
    assert (info["stage"], info["stages"], info["percentage"], info["last_stage"]) == (1, 4, Decimal("10"), False)
    assert (info["calls"], info["error_rate"], info["ends_at"], info["time_left"]) == (10_000, 1.0, t0 + WEEK,
                                                                                          "0d 0h 0m")
    assert {state for _name, state, _detail in info["guardrails"]} == {guardrails.HEALTHY}
    assert len(info["guardrails"]) == 5
    assert info["why"].startswith("every guardrail healthy over 10,000 calls; error rate 1.00%")
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.stage_started_at, plan.updated_at) == (PlanState.RUNNING, 1, now,
                                                                                        now)
    assert plan.status_note == f"advanced: {info['why']}"
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled) == (Decimal("20"), True)
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.actor_kind, entry.created_at) == ("plan", "rollout-plan", "system", now)
    assert (entry.before["rollout_percentage"], entry.after["rollout_percentage"]) == ("10.00", "20.00")
    assert "stage 2" in entry.reason


@pytest.mark.parametrize(("after", "decision"), [(WEEK - MINUTE, "hold"), (WEEK, "advance")])
def test_a_stage_advances_only_once_its_full_time_is_up(flag, t0, after, decision):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1))
    assert tick_after(plan, after)["decision"] == decision


def test_a_healthy_plan_goes_10_20_50_100_and_completes_week_by_week(flag, t0):
    plan = start(flag, t0)
    seen, decisions, starts = [rollout(flag)], [], []
    for _ in range(4):
        began = stage_start(plan)
        starts.append(began)
        healthy(began + timedelta(days=1))
        decisions.append(plans.tick(plan.pk, now=began + WEEK)["decision"])
        seen.append(rollout(flag))
    plan.refresh_from_db()
    assert decisions == ["advance", "advance", "advance", "complete"]
    assert seen == [10, 20, 50, 100, 100]
    assert starts == [t0, t0 + WEEK, t0 + 2 * WEEK, t0 + 3 * WEEK]
    assert (plan.state, plan.current_stage, plan.updated_at) == (PlanState.COMPLETED, 3, t0 + 4 * WEEK)
    assert plan.status_note.startswith("completed: every guardrail healthy")
    entries = AuditEntry.objects.filter(flag=flag, source=Source.PLAN).order_by("id")
    assert [(e.after["rollout_percentage"], e.created_at) for e in entries] == [
        ("20.00", t0 + WEEK), ("50.00", t0 + 2 * WEEK), ("100.00", t0 + 3 * WEEK)]
    assert plans.tick(plan.pk, now=t0 + 5 * WEEK) == {"decision": "not running"}


def test_the_last_stage_completes_the_plan_and_leaves_the_flag_at_100(flag, t0):
    plan = start(flag, t0, stages=[(10, 60), (100, 60)])
    healthy(t0 + timedelta(minutes=10))
    assert tick_after(plan, timedelta(minutes=60))["decision"] == "advance"
    assert rollout(flag) == 100
    healthy(stage_start(plan) + timedelta(minutes=10))
    now = stage_start(plan) + timedelta(minutes=60)
    info = plans.tick(plan.pk, now=now)
    assert (info["decision"], info["last_stage"], info["stage"]) == ("complete", True, 2)
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at) == (PlanState.COMPLETED, now)
    assert plan.status_note == f"completed: {info['why']}"
    assert rollout(flag) == 100


def test_tick_all_ticks_only_running_plans_at_its_now(make_flag, t0):
    running = start(make_flag("running_flag"), t0)
    paused = plans.plan_pause(plan=start(make_flag("paused_flag"), t0), actor=ALICE, now=t0)
    draft = plans.plan_create(flag=make_flag("draft_flag"), created_by="alice")
    now = t0 + timedelta(hours=1)
    results = plans.tick_all(now=now)
    assert list(results) == [running.pk]
    assert results[running.pk]["decision"] == "hold"
    running.refresh_from_db()
    assert running.updated_at == now and running.status_note.startswith("holding: stage runs until")
    assert plans.tick(paused.pk, now=now) == {"decision": "not running"}
    assert plans.tick(draft.pk, now=now) == {"decision": "not running"}
    assert list(plans.tick_all(now=now, flag_key="paused_flag")) == []


def test_a_dry_run_tick_says_what_it_would_do_and_changes_nothing(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1))
    version, audits = Flag.objects.get(pk=flag.pk).version, AuditEntry.objects.count()
    info = tick_after(plan, WEEK + MINUTE, dry_run=True)
    assert info["decision"] == "advance"
    plan.refresh_from_db()
    flag.refresh_from_db()
    assert (plan.current_stage, plan.status_note, plan.stage_started_at, plan.updated_at) == (
        0, "started by alice", t0, t0)
    assert (flag.rollout_percentage, flag.version, AuditEntry.objects.count()) == (Decimal("10"), version, audits)


def test_a_dry_run_tick_of_a_regression_changes_nothing(flag, t0):
    plan = start(flag, t0)
    regression(t0 + MINUTE)
    info = tick_after(plan, timedelta(minutes=5), dry_run=True)
    assert info["decision"] == "rollback"
    plan.refresh_from_db()
    assert (plan.state, plan.updated_at, rollout(flag)) == (PlanState.RUNNING, t0, Decimal("10"))


# --- the gate: holding, and saying why ------------------------------------------------------------------


def test_a_tick_before_the_stage_time_holds_and_says_until_when(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1))
    now = t0 + timedelta(days=3)
    info = plans.tick(plan.pk, now=now)
    assert info["decision"] == "hold"
    assert info["why"] == f"stage runs until {t0 + WEEK:%Y-%m-%d %H:%M} UTC"
    assert (info["time_left"], info["ends_at"], info["calls"]) == ("4d 0h 0m", t0 + WEEK, 10_000)
    plan.refresh_from_db()
    assert (plan.status_note, plan.updated_at) == (f"holding: {info['why']}", now)
    assert (plan.state, plan.current_stage, plan.stage_started_at, rollout(flag)) == (PlanState.RUNNING, 0, t0,
                                                                                      Decimal("10"))


def test_fewer_than_min_samples_calls_hold_saying_how_many(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1), calls=99, failures=0, baseline_failures=0)
    info = tick_after(plan, WEEK + MINUTE)
    assert info["decision"] == "hold" and info["why"] == "99 of 100 treatment calls in this stage"
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, rollout(flag)) == (PlanState.RUNNING, 0, Decimal("10"))


def test_few_calls_all_failing_are_enough_to_roll_back(flag, t0):
    # The statistics, not a call count, decide a regression: 99 of 99 failing is shown above 5%.
    plan = start(flag, t0)
    feed(calls=99, failures=99, at=t0 + timedelta(days=1))
    assert tick_after(plan, WEEK + MINUTE)["decision"] == "rollback"
    assert rollout(flag) == 0


def test_a_plan_with_min_samples_0_and_no_calls_holds_instead_of_crashing(flag, t0):
    plan = start(flag, t0)
    RolloutPlan.objects.filter(pk=plan.pk).update(min_samples=0)
    info = tick_after(plan, WEEK + MINUTE)
    assert (info["decision"], info["why"], info["error_rate"]) == ("hold", "0 of 1 treatment calls in this stage",
                                                                   None)
    assert rollout(flag) == 10


def test_enough_calls_but_not_enough_data_for_a_rule_holds_saying_how_many_more_calls(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1), calls=300, failures=3, baseline_failures=3)
    info = tick_after(plan, WEEK + MINUTE)
    assert info["decision"] == "hold"
    unsure = [(name, detail) for name, state, detail in info["guardrails"] if state == guardrails.NOT_ENOUGH]
    assert unsure, info["guardrails"]
    assert not [name for name, state, _ in info["guardrails"] if state == guardrails.REGRESSING]
    name, detail = unsure[0]
    assert info["why"] == f"'{name}': {detail}"
    assert "not enough data yet" in info["why"] and "more calls needed" in info["why"]
    plan.refresh_from_db()
    assert plan.status_note == f"holding: {info['why']}" and rollout(flag) == 10


def test_an_error_rate_not_shown_below_advance_below_holds_and_says_so(flag, t0):
    # 1.8% against a 2% gate with every guardrail healthy (the baseline errs more, 3%).
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1), failures=180, baseline_failures=300)
    info = tick_after(plan, WEEK + MINUTE)
    assert {state for _name, state, _detail in info["guardrails"]} == {guardrails.HEALTHY}
    assert info["decision"] == "hold" and info["error_rate"] == 1.8
    assert info["why"].startswith("error rate not yet shown below 2")
    assert "1.80% (interval" in info["why"]
    assert rollout(flag) == 10


def test_a_warning_rule_regressing_holds_without_rolling_back(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1), latency_ms=400)  # 4x the baseline's latency
    info = tick_after(plan, WEEK + MINUTE)
    assert info["decision"] == "hold"
    assert info["why"].startswith(f"'{LATENCY_RULE}' regressing:")
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, rollout(flag)) == (PlanState.RUNNING, 0, Decimal("10"))


def test_calls_before_the_stage_began_do_not_count_for_it(flag, t0):
    healthy(t0 - timedelta(days=1))
    healthy(t0 - MINUTE)
    plan = start(flag, t0)
    info = tick_after(plan, WEEK + MINUTE)
    assert (info["decision"], info["why"], info["calls"]) == ("hold", "0 of 100 treatment calls in this stage", 0)


def test_calls_of_the_previous_stage_do_not_count_for_the_next(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1))
    assert tick_after(plan, WEEK)["decision"] == "advance"
    info = tick_after(plan, WEEK)
    assert (info["stage"], info["calls"], info["decision"]) == (2, 0, "hold")
    assert info["why"] == "0 of 100 treatment calls in this stage"


def test_a_minute_in_progress_does_not_count(flag, t0):
    plan = start(flag, t0)
    healthy(t0 + WEEK)
    info = plans.tick(plan.pk, now=t0 + WEEK + timedelta(seconds=30))
    assert (info["calls"], info["decision"]) == (0, "hold")
    assert plans.tick(plan.pk, now=t0 + WEEK + MINUTE, dry_run=True)["calls"] == 10_000


def test_a_resumed_stage_counts_only_calls_since_it_resumed(flag, t0):
    # Pausing and resuming leaves the percentage as it was (no exposure change): the plan's own stage
    # start still bounds the data.
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1))
    plans.plan_pause(plan=plan, actor=ALICE, now=t0 + timedelta(days=2))
    resumed_at = t0 + timedelta(days=3)
    plans.plan_resume(plan=plan, actor=ALICE, now=resumed_at)
    info = plans.tick(plan.pk, now=resumed_at + WEEK)
    assert (info["calls"], info["decision"]) == (0, "hold")
    healthy(resumed_at + MINUTE)
    assert plans.tick(plan.pk, now=resumed_at + WEEK)["decision"] == "advance"


def test_a_later_exposure_change_that_does_not_pause_the_plan_restarts_its_data(flag, t0):
    # A new salt reshuffles who is in the rollout without touching the percentage: the plan keeps running,
    # and the stage's data starts again from the change.
    plan = start(flag, t0)
    healthy(t0 + timedelta(days=1))
    services.flag_update(flag=flag, salt="reshuffled", confirm_reshuffle=True, actor=BOB, source=Source.UI,
                         reason="test", now=t0 + timedelta(days=2))
    plan.refresh_from_db()
    assert plan.state == PlanState.RUNNING
    info = tick_after(plan, WEEK + MINUTE)
    assert (info["calls"], info["decision"]) == (0, "hold")
    healthy(t0 + timedelta(days=3))
    assert tick_after(plan, WEEK + MINUTE)["decision"] == "advance"


# --- the gate: rolling back -----------------------------------------------------------------------------


@pytest.mark.parametrize("after", [timedelta(minutes=5), WEEK + MINUTE])
def test_a_regression_in_the_first_stage_rolls_back_to_0_and_ends_the_plan(flag, t0, after):
    plan = start(flag, t0)
    regression(t0 + MINUTE)
    now = t0 + after
    info = plans.tick(plan.pk, now=now)
    assert info["decision"] == "rollback"
    assert info["why"].startswith(f"'{ERROR_RULE}' regressing: 30.00%")
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.updated_at) == (PlanState.ROLLED_BACK, 0, now)
    assert plan.status_note == f"rolled back: rollout plan gate: {info['why']}"
    assert rollout(flag) == 0
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.created_at) == ("plan", "rollout-plan", now)
    assert (entry.before["rollout_percentage"], entry.after["rollout_percentage"]) == ("10.00", "0.00")
    assert plans.tick(plan.pk, now=now + MINUTE) == {"decision": "not running"}
    assert plans.plan_stages_by_flag() == {}


def test_a_regression_in_stage_2_steps_back_to_stage_1s_percentage_and_pauses(flag, t0):
    plan = start(flag, t0)
    stage_2 = t0 + timedelta(hours=1)
    advance_by_hand(plan, stage_2)
    assert rollout(flag) == 20
    regression(stage_2 + timedelta(minutes=10))
    now = stage_2 + timedelta(minutes=12)  # long before the stage's week is up
    info = plans.tick(plan.pk, now=now)
    assert info["decision"] == "rollback" and info["stage"] == 2
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.stage_started_at, plan.updated_at) == (PlanState.PAUSED, 0, now,
                                                                                        now)
    assert plan.status_note.startswith("paused at stage 1 after a regression: rollout plan gate: ")
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled) == (Decimal("10"), True)
    entry = last_audit(flag)
    assert (entry.source, entry.actor, entry.created_at) == ("plan", "rollout-plan", now)
    assert (entry.before["rollout_percentage"], entry.after["rollout_percentage"]) == ("20.00", "10.00")
    assert plans.plan_stages_by_flag() == {flag.pk: "stage 1 of 4 (10%), paused"}
    # Paused, it stays where it stepped back to until a person resumes it.
    assert plans.tick(plan.pk, now=now + WEEK) == {"decision": "not running"}
    assert rollout(flag) == 10
    resumed = plans.plan_resume(plan=plan, actor=ALICE, now=now + timedelta(hours=1))
    assert (resumed.state, resumed.current_stage, rollout(flag)) == (PlanState.RUNNING, 0, Decimal("10"))


def test_a_regression_in_stage_3_steps_back_to_20(flag, t0):
    plan = start(flag, t0)
    advance_by_hand(plan, t0 + MINUTE)
    advance_by_hand(plan, t0 + 2 * MINUTE)
    assert rollout(flag) == 50
    regression(t0 + 3 * MINUTE)
    assert plans.tick(plan.pk, now=t0 + 10 * MINUTE)["decision"] == "rollback"
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, rollout(flag)) == (PlanState.PAUSED, 1, Decimal("20"))


def test_an_error_rate_shown_above_rollback_above_rolls_back_when_no_critical_rule_fires(flag, t0):
    # 4.5% errors: under the critical rule's 5% (not shown above it) but shown above this plan's 3%.
    plan = start(flag, t0, rollback_above="3", advance_below="1")
    healthy(t0 + timedelta(hours=1), failures=450, baseline_failures=400)
    info = tick_after(plan, timedelta(hours=2))
    regressing = [name for name, state, _ in info["guardrails"] if state == guardrails.REGRESSING]
    assert regressing == []
    assert info["decision"] == "rollback"
    assert info["why"].startswith("error rate above 3.00%: 4.50% (interval")
    plan.refresh_from_db()
    assert plan.state == PlanState.ROLLED_BACK and rollout(flag) == 0


def test_a_healthy_plan_under_low_traffic_ticked_every_minute_for_two_hours_is_never_paused_or_rolled_back(
        flag, t0):
    # 4 patch and 16 single calls a minute, 2% errors in both, spread as they would come (one failure in
    # every 50 calls of each mode): a minute with 1 of its 4 treatment calls failing is 25% errors, which
    # raw averages would roll back; the statistics must not. Alerts are checked every minute as well.
    plan = start(flag, t0, stages=[(10, 30), (20, 60), (50, 60), (100, 60)])
    minutes = 120
    records = []
    for mode, per_minute, tokens in (("patch", 4, 500), ("single", 16, 1000)):
        for m in range(minutes):
            for i in range(per_minute):
                n = m * per_minute + i
                records.append({"user_id": f"low-{mode}-{n}", "mode": mode, "latency_ms": 80 + (n * 37) % 50,
                                "tokens_used": tokens, "success": n % 50 != 25,
                                "occurred_at": (t0 + m * MINUTE + timedelta(seconds=i)).isoformat()})
    monitoring.ingest(records, now=t0 + minutes * MINUTE)
    decisions, whys = set(), set()
    for m in range(1, minutes + 1):
        now = t0 + m * MINUTE
        alert_services.check_all(now=now)
        info = plans.tick_all(now=now)[plan.pk]
        decisions.add(info["decision"])
        if m > 30:
            whys.add(info["why"])
    assert decisions == {"hold"}
    # After the stage's 30 minutes it holds only for want of data, and says how much more it needs.
    assert whys and all(why.startswith(f"'{ERROR_RULE}': ") and "not enough data yet, about" in why
                        and "more calls needed" in why for why in whys)
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.updated_at) == (PlanState.RUNNING, 0, t0 + minutes * MINUTE)
    assert rollout(flag) == 10
    assert not Alert.objects.filter(flag=flag).exists()
    assert not AuditEntry.objects.filter(flag=flag, created_at__gt=t0).exists()
