"""Staged rollout plans: 10% -> 20% -> 50% -> 100% by default, one week each, gated on health.

The gate judges only the stage's own calls (calls before the stage do not count) with the same
statistics as the alert rules (alerts.health): a stage advances when its time is up, it has its
minimum of treatment calls, every enabled guardrail of the flag is healthy and its error rate is shown
below `advance_below`; it holds and says why otherwise; a critical guardrail regressing, or an error
rate shown above `rollback_above`, steps it back to the previous stage and pauses the plan (from the
first stage: back to 0%, and the plan ends rolled back).

Every change a plan makes goes through flags.services (audit source `plan`). A change to the flag from
anywhere else while the plan runs (the slider, the API, the CLI, an alert's remediation) pauses the
plan, so that it never raises back what a person or an alert has just lowered: flag_update sends
flags.signals.exposure_changed, with by_plan=True for the plan's own steps, and alerts/receivers.py calls
on_exposure_change. Every time a plan writes is its caller's `now`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from flags import services as flag_services
from flags.actors import Actor
from flags.models import Flag, Source
from rolloutadmin import metrics

from . import guardrails, health
from .models import DEFAULT_STAGES, PlanStage, PlanState, RolloutPlan, Severity

PLAN_ACTOR = Actor.system("rollout-plan")
# A flag has at most one plan in these states (plan_create refuses a second one).
OPEN_PLAN_STATES = (PlanState.DRAFT, PlanState.RUNNING, PlanState.PAUSED)


@transaction.atomic
def plan_create(*, flag: Flag, created_by: str, stages: list[tuple[Any, int]] | None = None,
                min_samples: int = 100, advance_below: Any = "2", rollback_above: Any = "5") -> RolloutPlan:
    """A draft plan for the flag, which may have only one plan in draft, running or paused at a time."""
    Flag.objects.select_for_update().get(pk=flag.pk)  # two creations at once: the second waits, then sees the first
    if RolloutPlan.objects.filter(flag=flag, state__in=OPEN_PLAN_STATES).exists():
        raise ValidationError("this flag already has a plan in draft, running or paused")
    stages = stages or DEFAULT_STAGES
    errors: dict[str, list[str]] = {}
    clean: list[tuple[Decimal, int]] = []
    previous = Decimal(-1)
    for index, (percentage, minutes) in enumerate(stages):
        try:
            value = flag_services.parse_percentage(percentage, field_name=f"stages[{index}].percentage")
        except ValidationError as exc:
            errors.update(exc.message_dict)
            continue
        if value <= previous:
            errors[f"stages[{index}].percentage"] = ["stages must rise"]
        if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 0:
            errors[f"stages[{index}].min_duration_minutes"] = ["must be a whole number of minutes >= 0"]
        previous = value
        clean.append((value, minutes))
    gate = {}
    for name, raw in (("advance_below", advance_below), ("rollback_above", rollback_above)):
        try:
            gate[name] = flag_services.parse_percentage(raw, field_name=name)
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if len(gate) == 2 and gate["advance_below"] > gate["rollback_above"]:
        errors["advance_below"] = ["must not be above rollback_above"]
    if not clean and not errors:
        errors["stages"] = ["give at least one stage"]
    if errors:
        raise ValidationError(errors)
    plan = RolloutPlan.objects.create(flag=flag, created_by=created_by, min_samples=min_samples, **gate)
    PlanStage.objects.bulk_create(PlanStage(plan=plan, order=i, percentage=p, min_duration_minutes=m)
                                  for i, (p, m) in enumerate(clean))
    return plan


def active_plan(flag: Flag) -> RolloutPlan | None:
    return RolloutPlan.objects.filter(flag=flag, state__in=[PlanState.RUNNING, PlanState.PAUSED]).first()


def running_plan(flag: Flag) -> RolloutPlan | None:
    return RolloutPlan.objects.select_for_update().filter(flag=flag, state=PlanState.RUNNING).first()


def _stages(plan: RolloutPlan) -> list[PlanStage]:
    return list(plan.stages.order_by("order"))


def _save(plan: RolloutPlan, now: datetime, *fields: str) -> None:
    plan.updated_at = now
    plan.save(update_fields=[*fields, "updated_at"])


def _counted(transition: str) -> None:
    """Count a plan transition for /metrics once its transaction commits (a rolled-back one never happened)."""
    transaction.on_commit(lambda: metrics.plan_transition(transition))


def _set_stage(plan: RolloutPlan, index: int, *, actor: Actor, source: str, reason: str, now: datetime) -> None:
    stage = _stages(plan)[index]
    plan.current_stage, plan.stage_started_at = index, now
    _save(plan, now, "current_stage", "stage_started_at", "state", "status_note")
    flag_services.flag_update(flag=plan.flag.key, rollout_percentage=stage.percentage, enabled=True, actor=actor,
                              source=source, reason=reason, by_plan=True, now=now)


class NeedsConfirmation(ValidationError):
    """Raising exposure while a critical guardrail fires: the caller must confirm, having read why."""


def check_raise_allowed(flag: Flag, *, confirmed: bool) -> None:
    """Raising a flag's exposure (a plan start, the slider) while a critical guardrail fires asks first."""
    firing = health.firing_critical(flag)
    if firing and not confirmed:
        raise NeedsConfirmation({"confirm": f"{health.firing_reason(firing)}; confirm to raise the rollout anyway"})


def _locked(plan: RolloutPlan) -> RolloutPlan:
    Flag.objects.select_for_update().get(pk=plan.flag_id)
    return RolloutPlan.objects.select_for_update().get(pk=plan.pk)


@transaction.atomic
def plan_start(*, plan: RolloutPlan, actor: Actor, source: str = Source.UI, now: datetime | None = None,
               confirmed: bool = False) -> RolloutPlan:
    """Start a draft plan at its first stage. While a critical guardrail fires this needs `confirmed`."""
    now = now or timezone.now()
    plan = _locked(plan)
    if plan.state != PlanState.DRAFT:
        raise ValidationError({"state": f"only a draft plan can start; this one is {plan.state}"})
    if active_plan(plan.flag):
        raise ValidationError({"state": "the flag already has a running or paused plan"})
    percentages = [stage.percentage for stage in _stages(plan)]
    # Plans made in the admin skip plan_create's checks: check the stages again before they act.
    if not percentages or any(not 0 <= p <= 100 for p in percentages) or percentages != sorted(set(percentages)):
        raise ValidationError({"stages": "a plan needs stages rising between 0% and 100%"})
    check_raise_allowed(plan.flag, confirmed=confirmed)
    plan.state, plan.status_note = PlanState.RUNNING, f"started by {actor.name}"
    _counted("started")
    _set_stage(plan, 0, actor=actor, source=source, reason="rollout plan started: stage 1", now=now)
    return plan


@transaction.atomic
def plan_pause(*, plan: RolloutPlan, actor: Actor, reason: str = "", now: datetime | None = None) -> RolloutPlan:
    plan = _locked(plan)
    if plan.state != PlanState.RUNNING:
        raise ValidationError({"state": f"only a running plan can pause; this one is {plan.state}"})
    plan.state, plan.status_note = PlanState.PAUSED, f"paused by {actor.name}" + (f": {reason}" if reason else "")
    _counted("paused")
    _save(plan, now or timezone.now(), "state", "status_note")
    return plan


@transaction.atomic
def plan_resume(*, plan: RolloutPlan, actor: Actor, now: datetime | None = None,
                confirmed: bool = False) -> RolloutPlan:
    """Resume at the stage in force; its clock starts again, since its data was interrupted."""
    plan = _locked(plan)
    if plan.state != PlanState.PAUSED:
        raise ValidationError({"state": f"only a paused plan can resume; this one is {plan.state}"})
    check_raise_allowed(plan.flag, confirmed=confirmed)
    plan.state, plan.status_note = PlanState.RUNNING, f"resumed by {actor.name}"
    _counted("resumed")
    _set_stage(plan, plan.current_stage, actor=actor, source=Source.UI,
               reason=f"rollout plan resumed at stage {plan.current_stage + 1}", now=now or timezone.now())
    return plan


@transaction.atomic
def plan_advance_now(*, plan: RolloutPlan, actor: Actor, now: datetime | None = None,
                     confirmed: bool = False) -> RolloutPlan:
    plan = _locked(plan)
    if plan.state not in (PlanState.RUNNING, PlanState.PAUSED):
        raise ValidationError({"state": f"this plan is {plan.state}"})
    stages = _stages(plan)
    if plan.current_stage + 1 >= len(stages):
        raise ValidationError({"state": "the plan is at its last stage"})
    check_raise_allowed(plan.flag, confirmed=confirmed)
    plan.state, plan.status_note = PlanState.RUNNING, f"advanced by {actor.name}"
    _counted("advanced_by_hand")
    _set_stage(plan, plan.current_stage + 1, actor=actor, source=Source.UI,
               reason=f"rollout plan advanced by hand to stage {plan.current_stage + 2}", now=now or timezone.now())
    return plan


@transaction.atomic
def plan_abort(*, plan: RolloutPlan, actor: Actor, reason: str = "", now: datetime | None = None) -> RolloutPlan:
    """Stop the plan and roll the flag back to 0%."""
    now = now or timezone.now()
    plan = _locked(plan)
    if plan.state not in (PlanState.RUNNING, PlanState.PAUSED, PlanState.DRAFT):
        raise ValidationError({"state": f"this plan is already {plan.state}"})
    was_draft = plan.state == PlanState.DRAFT
    plan.state, plan.status_note = PlanState.ROLLED_BACK, f"aborted by {actor.name}" + (f": {reason}" if reason else "")
    _counted("aborted")
    _save(plan, now, "state", "status_note")
    if not was_draft:
        flag_services.flag_update(flag=plan.flag.key, rollout_percentage=0, actor=actor, source=Source.UI,
                                  reason=f"rollout plan aborted{': ' + reason if reason else ''}", by_plan=True,
                                  now=now)
    return plan


def pause_running_plan(flag: Flag, *, actor: Actor, source: str, reason: str, now: datetime | None = None,
                       dry_run: bool = False) -> bool:
    plan = running_plan(flag)
    if plan is None:
        return False
    if not dry_run:
        plan.state = PlanState.PAUSED
        said = Source(source).label if source in Source.values else source  # "dashboard", as everywhere
        plan.status_note = f"paused: {actor.name} ({said}) changed the flag: {reason}"[:500]
        _counted("paused")
        _save(plan, now or timezone.now(), "state", "status_note")
    return True


def step_back(plan: RolloutPlan, *, actor: Actor, source: str, reason: str, now: datetime,
              dry_run: bool = False) -> tuple[list[str], bool]:
    """A regression during a plan: back to the previous stage's percentage and pause (from the first stage:
    to 0%, and the plan ends rolled back). Never raises exposure. Returns what it did and whether it acted."""
    stages = _stages(plan)
    flag = Flag.objects.get(pk=plan.flag_id)
    if plan.current_stage > 0:
        index = plan.current_stage - 1
        target = min(stages[index].percentage, flag.rollout_percentage)
        done = [f"rollout plan stepped back to stage {index + 1} ({target}%) and paused"]
        if not dry_run:
            plan.state, plan.current_stage, plan.stage_started_at = PlanState.PAUSED, index, now
            plan.status_note = f"paused at stage {index + 1} after a regression: {reason}"[:500]
            _save(plan, now, "state", "current_stage", "stage_started_at", "status_note")
            _counted("stepped_back")
    else:
        target = Decimal(0)
        done = ["rollout plan rolled back to 0%"]
        if not dry_run:
            plan.state, plan.status_note = PlanState.ROLLED_BACK, f"rolled back: {reason}"[:500]
            _save(plan, now, "state", "status_note")
            _counted("rolled_back")
    if flag.rollout_percentage <= target:
        return [*done, f"rollout already at {flag.rollout_percentage}%"], not dry_run
    if not dry_run:
        flag_services.flag_update(flag=flag.key, rollout_percentage=target, only_reduce=True, actor=actor,
                                  source=source, reason=reason, by_plan=True, now=now)
    return [*done, f"rollout reduced from {flag.rollout_percentage}% to {target}%"], True


def gate(plan: RolloutPlan, now: datetime) -> dict[str, Any]:
    """The stage's health since it began: what the next tick would do, and why."""
    stages = _stages(plan)
    stage = stages[plan.current_stage]
    started = plan.stage_started_at or now
    data, results = health.flag_health(plan.flag, now, since=started)
    error = guardrails.Spec(guardrails.ERROR_RATE, 0.0, stage_minutes=data.minutes)
    rollback = guardrails.judge(replace(error, threshold=float(plan.rollback_above)), data.treatment, data.baseline,
                                data.recent)
    advance = guardrails.judge(replace(error, threshold=float(plan.advance_below)), data.treatment, data.baseline,
                               data.recent)
    calls = data.treatment.calls
    ends_at = started + timedelta(minutes=stage.min_duration_minutes)
    last = plan.current_stage + 1 >= len(stages)
    left = max(timedelta(0), ends_at - now)
    hours, minutes = divmod(int(left.total_seconds()) // 60, 60)
    info: dict[str, Any] = {
        "stage": plan.current_stage + 1, "stages": len(stages), "percentage": stage.percentage, "ends_at": ends_at,
        "time_left": f"{hours // 24}d {hours % 24}h {minutes}m", "calls": calls,
        "error_rate": None if advance.estimate is None else round(advance.estimate, 2), "last_stage": last,
        "guardrails": [(r.rule.name, r.state, r.detail) for r in results],
    }
    critical = [r for r in results if r.state == guardrails.REGRESSING and r.rule.severity == Severity.CRITICAL]
    regressing = [r for r in results if r.state == guardrails.REGRESSING]
    unsure = [r for r in results if r.state == guardrails.NOT_ENOUGH]
    if critical:
        info.update(decision="rollback", why=f"'{critical[0].rule.name}' regressing: {critical[0].detail}")
    elif rollback.state == guardrails.REGRESSING:
        info.update(decision="rollback", why=f"error rate above {plan.rollback_above}%: {rollback.describe()}")
    elif now < ends_at:
        info.update(decision="hold", why=f"stage runs until {ends_at:%Y-%m-%d %H:%M} UTC")
    elif calls < max(1, plan.min_samples):
        info.update(decision="hold", why=f"{calls:,} of {max(1, plan.min_samples):,} treatment calls in this stage")
    elif regressing:
        info.update(decision="hold", why=f"'{regressing[0].rule.name}' regressing: {regressing[0].detail}")
    elif unsure:
        info.update(decision="hold", why=f"'{unsure[0].rule.name}': {unsure[0].detail}")
    elif advance.state != guardrails.HEALTHY:
        info.update(decision="hold", why=f"error rate not yet shown below {plan.advance_below}%: {advance.describe()}")
    else:
        info.update(decision="complete" if last else "advance",
                    why=f"every guardrail healthy over {calls:,} calls; error rate {advance.describe()}")
    return info


def tick(plan_id: int, *, now: datetime | None = None, dry_run: bool = False) -> dict[str, Any]:
    """One beat for one running plan: advance, hold (saying why), complete, or step back."""
    now = now or timezone.now()
    with transaction.atomic():
        plan = RolloutPlan.objects.filter(pk=plan_id).select_related("flag").first()
        if plan is None:
            return {"decision": "gone"}
        plan = _locked(plan)
        if plan.state != PlanState.RUNNING:
            return {"decision": "not running"}
        info = gate(plan, now)
        if dry_run:
            return info
        if info["decision"] == "rollback":
            step_back(plan, actor=PLAN_ACTOR, source=Source.PLAN, reason=f"rollout plan gate: {info['why']}", now=now)
        elif info["decision"] == "advance":
            plan.status_note = f"advanced: {info['why']}"[:500]
            _counted("advanced")
            _set_stage(plan, plan.current_stage + 1, actor=PLAN_ACTOR, source=Source.PLAN,
                       reason=f"rollout plan stage {plan.current_stage + 2}: {info['why']}", now=now)
        elif info["decision"] == "complete":
            plan.state, plan.status_note = PlanState.COMPLETED, f"completed: {info['why']}"[:500]
            _counted("completed")
            _save(plan, now, "state", "status_note")
        else:
            plan.status_note = f"holding: {info['why']}"[:500]
            _save(plan, now, "status_note")
        return info


def tick_all(*, now: datetime | None = None, dry_run: bool = False,
             flag_key: str | None = None) -> dict[int, dict[str, Any]]:
    running = RolloutPlan.objects.filter(state=PlanState.RUNNING)
    if flag_key is not None:
        running = running.filter(flag__key=flag_key)
    ids = list(running.values_list("id", flat=True))
    return {plan_id: tick(plan_id, now=now, dry_run=dry_run) for plan_id in ids}


def on_exposure_change(*, flag: Flag, actor: Actor, source: str, reason: str, by_plan: bool = False) -> None:
    """Someone other than the plan changed the flag's exposure: a running plan pauses and says so. The
    plan's own steps (by_plan) change nothing here. Connected to flags.signals.exposure_changed."""
    if by_plan:
        return
    pause_running_plan(flag, actor=actor, source=source, reason=reason or "no reason given",
                       now=flag.updated_at)


def plan_stages_by_flag() -> dict[int, str]:
    """For the flag list: 'stage 2 of 4 (20%), running' for each flag with a running or paused plan."""
    out: dict[int, str] = {}
    active = RolloutPlan.objects.filter(state__in=[PlanState.RUNNING, PlanState.PAUSED]).prefetch_related("stages")
    for plan in active:
        stages = sorted(plan.stages.all(), key=lambda s: s.order)
        if plan.current_stage < len(stages):
            stage = stages[plan.current_stage]
            out[plan.flag_id] = (f"stage {plan.current_stage + 1} of {len(stages)} "
                                 f"({format(stage.percentage.normalize(), 'f')}%), {plan.get_state_display()}")
    return out
