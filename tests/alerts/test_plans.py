"""Rollout plans: the seed's 10% -> 20% -> 50% -> 100% schedule, gated on the alert rules' statistics.

Every plan function here is given its `now`: plans start at T0 (a whole minute an hour from now), the
records a tick judges are fed at moments inside the stage (ingest accepts them when told the time is
theirs), and ticks are judged at chosen moments after the stage began. Healthy data is 1% errors in both
modes, the same latency, and the treatment using fewer tokens than the baseline, in batches large enough
for every default rule to decide.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from alerts import guardrails, plans
from alerts import services as alert_services
from alerts.models import Action, Alert, AlertRule, AlertState, PlanState, RolloutPlan, Severity
from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from monitoring import services as monitoring
from tests.alerts import by_metric, feed

pytestmark = pytest.mark.django_db

WEEK = timedelta(days=7)
MINUTE = timedelta(minutes=1)
ALICE = Actor("user", "alice")
BOB = Actor("user", "bob")
ERROR_RULE = "Patch Mode error rate above 5%"
DELTA_RULE = "Patch Mode errors more than 1 point above Single Mode"
LATENCY_RULE = "Latency above 1.5x baseline"


@pytest.fixture
def t0() -> datetime:
    """A whole minute after the flag's creation: plans start here."""
    return timezone.now().replace(second=0, microsecond=0) + timedelta(hours=1)


def start(flag: Flag, t0: datetime, **kwargs) -> RolloutPlan:  # type: ignore[no-untyped-def]
    plan = plans.plan_create(flag=flag, created_by="alice", **kwargs)
    return plans.plan_start(plan=plan, actor=ALICE, now=t0)


def admin_made_plan(flag: Flag) -> RolloutPlan:
    """A draft plan made in the admin, which does not go through plan_create."""
    plan = RolloutPlan.objects.create(flag=flag, created_by="admin")
    plan.stages.create(order=0, percentage=Decimal(10), min_duration_minutes=60)
    return plan


def feed_many(*, calls: int, failures: int = 0, mode: str = "patch", at: datetime, latency_ms: float = 100.0,
              tokens: int = 800) -> None:
    """Like feed, in chunks of the ingest's batch limit, failures spread over the chunks."""
    done_calls = done_failures = 0
    while done_calls < calls:
        chunk = min(5000, calls - done_calls)
        chunk_failures = min(chunk, round(failures * (done_calls + chunk) / calls) - done_failures)
        feed(calls=chunk, failures=chunk_failures, mode=mode, at=at, latency_ms=latency_ms, tokens=tokens)
        done_calls, done_failures = done_calls + chunk, done_failures + chunk_failures


def healthy(at: datetime, *, calls: int = 10_000, failures: int | None = None, baseline_failures: int | None = None,
            latency_ms: float = 100.0) -> None:
    """`calls` treatment and `calls` baseline calls at `at`: 1% errors each unless told otherwise, the same
    latency, and treatment tokens at half the baseline's. Enough for every default rule to be healthy."""
    feed_many(calls=calls, failures=calls // 100 if failures is None else failures, at=at, latency_ms=latency_ms,
              tokens=500)
    feed_many(calls=calls, failures=calls // 100 if baseline_failures is None else baseline_failures,
              mode="single", at=at, tokens=1000)


def regression(at: datetime, *, calls: int = 200, rate: float = 0.30) -> None:
    """A clear regression: `rate` of the treatment's calls fail, the baseline keeps 1%."""
    feed(calls=calls, failures=round(calls * rate), at=at, tokens=500)
    feed(calls=calls, failures=calls // 100, mode="single", at=at, tokens=1000)


def stage_start(plan: RolloutPlan) -> datetime:
    plan.refresh_from_db()
    return plan.stage_started_at


def tick_after(plan: RolloutPlan, after: timedelta, **kwargs) -> dict:  # type: ignore[no-untyped-def]
    return plans.tick(plan.pk, now=stage_start(plan) + after, **kwargs)


def last_audit(flag: Flag) -> AuditEntry:
    return AuditEntry.objects.filter(flag=flag).latest("id")


def rollout(flag: Flag) -> Decimal:
    flag.refresh_from_db()
    return flag.rollout_percentage


def rule(flag: Flag, name: str) -> AlertRule:
    return AlertRule.objects.get(flag=flag, name=name)


def open_alert(flag: Flag, name: str = ERROR_RULE, state: str = AlertState.FIRING) -> Alert:
    r = rule(flag, name)
    return Alert.objects.create(rule=r, flag=flag, severity=r.severity, state=state, message="20% errors")


def advance_by_hand(plan: RolloutPlan, now: datetime) -> RolloutPlan:
    return plans.plan_advance_now(plan=plan, actor=ALICE, now=now)


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
