"""Staged rollout plans: 10% -> 20% -> 50% -> 100% by default, one week each, gated on health.

Every change a plan makes goes through flags.services (audit source `plan`). A change to the flag from
anywhere else while the plan runs (the slider, the API, the CLI, an alert's remediation) pauses the
plan, so that it never raises back what a person or an alert has just lowered.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from flags import services as flag_services
from flags.actors import Actor
from flags.models import Flag, Source
from monitoring import selectors as metrics

from .models import DEFAULT_STAGES, PlanStage, PlanState, RolloutPlan

PLAN_ACTOR = Actor.system("rollout-plan")


@transaction.atomic
def plan_create(*, flag: Flag, created_by: str, stages: list[tuple[Any, int]] | None = None,
                min_samples: int = 100, advance_below: Any = "2", rollback_above: Any = "5") -> RolloutPlan:
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


def _stages(plan: RolloutPlan) -> list[PlanStage]:
    return list(plan.stages.order_by("order"))


def _set_stage(plan: RolloutPlan, index: int, *, actor: Actor, source: str, reason: str, now: datetime) -> None:
    stage = _stages(plan)[index]
    plan.current_stage, plan.stage_started_at = index, now
    plan.save(update_fields=["current_stage", "stage_started_at", "updated_at", "state", "status_note"])
    flag_services.flag_update(flag=plan.flag.key, rollout_percentage=stage.percentage, enabled=True, actor=actor,
                              source=source, reason=reason, _from_plan=True)


def _locked(plan: RolloutPlan) -> RolloutPlan:
    Flag.objects.select_for_update().get(pk=plan.flag_id)
    return RolloutPlan.objects.select_for_update().get(pk=plan.pk)


@transaction.atomic
def plan_start(*, plan: RolloutPlan, actor: Actor, source: str = Source.UI) -> RolloutPlan:
    plan = _locked(plan)
    if plan.state != PlanState.DRAFT:
        raise ValidationError({"state": f"only a draft plan can start; this one is {plan.state}"})
    if active_plan(plan.flag):
        raise ValidationError({"state": "the flag already has a running or paused plan"})
    percentages = [stage.percentage for stage in _stages(plan)]
    # Plans made in the admin skip plan_create's checks: check the stages again before they act.
    if not percentages or any(not 0 <= p <= 100 for p in percentages) or percentages != sorted(set(percentages)):
        raise ValidationError({"stages": "a plan needs stages rising between 0% and 100%"})
    plan.state, plan.status_note = PlanState.RUNNING, f"started by {actor.name}"
    _set_stage(plan, 0, actor=actor, source=source, reason="rollout plan started: stage 1", now=timezone.now())
    return plan


@transaction.atomic
def plan_pause(*, plan: RolloutPlan, actor: Actor, reason: str = "") -> RolloutPlan:
    plan = _locked(plan)
    if plan.state != PlanState.RUNNING:
        raise ValidationError({"state": f"only a running plan can pause; this one is {plan.state}"})
    plan.state, plan.status_note = PlanState.PAUSED, f"paused by {actor.name}" + (f": {reason}" if reason else "")
    plan.save(update_fields=["state", "status_note", "updated_at"])
    return plan


@transaction.atomic
def plan_resume(*, plan: RolloutPlan, actor: Actor) -> RolloutPlan:
    """Resume at the stage in force; its clock starts again, since its data was interrupted."""
    plan = _locked(plan)
    if plan.state != PlanState.PAUSED:
        raise ValidationError({"state": f"only a paused plan can resume; this one is {plan.state}"})
    plan.state, plan.status_note = PlanState.RUNNING, f"resumed by {actor.name}"
    _set_stage(plan, plan.current_stage, actor=actor, source=Source.UI,
               reason=f"rollout plan resumed at stage {plan.current_stage + 1}", now=timezone.now())
    return plan


@transaction.atomic
def plan_advance_now(*, plan: RolloutPlan, actor: Actor) -> RolloutPlan:
    plan = _locked(plan)
    if plan.state not in (PlanState.RUNNING, PlanState.PAUSED):
        raise ValidationError({"state": f"this plan is {plan.state}"})
    stages = _stages(plan)
    if plan.current_stage + 1 >= len(stages):
        raise ValidationError({"state": "the plan is at its last stage"})
    plan.state, plan.status_note = PlanState.RUNNING, f"advanced by {actor.name}"
    _set_stage(plan, plan.current_stage + 1, actor=actor, source=Source.UI,
               reason=f"rollout plan advanced by hand to stage {plan.current_stage + 2}", now=timezone.now())
    return plan


@transaction.atomic
def plan_abort(*, plan: RolloutPlan, actor: Actor, reason: str = "") -> RolloutPlan:
    """Stop the plan and roll the flag back to 0%."""
    plan = _locked(plan)
    if plan.state not in (PlanState.RUNNING, PlanState.PAUSED, PlanState.DRAFT):
        raise ValidationError({"state": f"this plan is already {plan.state}"})
    was_draft = plan.state == PlanState.DRAFT
    plan.state, plan.status_note = PlanState.ROLLED_BACK, f"aborted by {actor.name}" + (f": {reason}" if reason else "")
    plan.save(update_fields=["state", "status_note", "updated_at"])
    if not was_draft:
        flag_services.flag_update(flag=plan.flag.key, rollout_percentage=0, actor=actor, source=Source.UI,
                                  reason=f"rollout plan aborted{': ' + reason if reason else ''}", _from_plan=True)
    return plan


def pause_running_plan(flag: Flag, *, actor: Actor, source: str, reason: str, dry_run: bool = False) -> bool:
    plan = RolloutPlan.objects.select_for_update().filter(flag=flag, state=PlanState.RUNNING).first()
    if plan is None:
        return False
    if not dry_run:
        plan.state = PlanState.PAUSED
        plan.status_note = f"paused: {actor.name} ({source}) changed the flag: {reason}"[:500]
        plan.save(update_fields=["state", "status_note", "updated_at"])
    return True


def gate(plan: RolloutPlan, now: datetime) -> dict[str, Any]:
    """The stage's health since it began: what the next tick would do, and why."""
    stages = _stages(plan)
    stage = stages[plan.current_stage]
    started = plan.stage_started_at or now
    summary = metrics.summary_between(plan.flag, started.replace(second=0, microsecond=0),
                                      now.replace(second=0, microsecond=0) + timedelta(minutes=1),
                                      unique_users=False)
    treatment = summary["modes"][plan.flag.treatment_mode]
    calls, error_rate = treatment["total_calls"], treatment["error_rate"]
    ends_at = started + timedelta(minutes=stage.min_duration_minutes)
    last = plan.current_stage + 1 >= len(stages)
    left = max(timedelta(0), ends_at - now)
    hours, minutes = divmod(int(left.total_seconds()) // 60, 60)
    info = {"stage": plan.current_stage + 1, "stages": len(stages), "percentage": stage.percentage,
            "ends_at": ends_at, "time_left": f"{hours // 24}d {hours % 24}h {minutes}m", "calls": calls,
            "error_rate": error_rate, "last_stage": last}
    if calls < max(1, plan.min_samples) or error_rate is None:
        info.update(decision="hold", why=f"{calls} of {max(1, plan.min_samples)} treatment calls needed")
    elif error_rate is not None and Decimal(str(error_rate)) > plan.rollback_above:
        info.update(decision="rollback", why=f"error rate {error_rate}% > {plan.rollback_above}%")
    elif now < ends_at:
        info.update(decision="hold", why=f"stage runs until {ends_at:%Y-%m-%d %H:%M} UTC")
    elif Decimal(str(error_rate)) >= plan.advance_below:
        info.update(decision="hold", why=f"error rate {error_rate}% is between {plan.advance_below}% and "
                                         f"{plan.rollback_above}%")
    else:
        info.update(decision="complete" if last else "advance",
                    why=f"error rate {error_rate}% < {plan.advance_below}% over {calls} calls")
    return info


def tick(plan_id: int, *, now: datetime | None = None, dry_run: bool = False) -> dict[str, Any]:
    """One beat for one running plan: advance, hold (saying why), complete, or roll back."""
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
            plan.state, plan.status_note = PlanState.ROLLED_BACK, f"rolled back: {info['why']}"
            plan.save(update_fields=["state", "status_note", "updated_at"])
            flag_services.flag_update(flag=plan.flag.key, rollout_percentage=0, actor=PLAN_ACTOR, source=Source.PLAN,
                                      reason=f"rollout plan gate: {info['why']}", _from_plan=True)
        elif info["decision"] == "advance":
            plan.status_note = f"advanced: {info['why']}"
            _set_stage(plan, plan.current_stage + 1, actor=PLAN_ACTOR, source=Source.PLAN,
                       reason=f"rollout plan stage {plan.current_stage + 2}: {info['why']}", now=now)
        elif info["decision"] == "complete":
            plan.state, plan.status_note = PlanState.COMPLETED, f"completed: {info['why']}"
            plan.save(update_fields=["state", "status_note", "updated_at"])
        else:
            plan.status_note = f"holding: {info['why']}"[:500]
            plan.save(update_fields=["status_note", "updated_at"])
        return info


def tick_all(*, now: datetime | None = None, dry_run: bool = False,
             flag_key: str | None = None) -> dict[int, dict[str, Any]]:
    running = RolloutPlan.objects.filter(state=PlanState.RUNNING)
    if flag_key is not None:
        running = running.filter(flag__key=flag_key)
    ids = list(running.values_list("id", flat=True))
    return {plan_id: tick(plan_id, now=now, dry_run=dry_run) for plan_id in ids}


def on_exposure_change(*, flag: Flag, actor: Actor, source: str, reason: str) -> None:
    """Someone other than the plan changed the flag's exposure: a running plan pauses and says so."""
    pause_running_plan(flag, actor=actor, source=source, reason=reason or "no reason given")


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
