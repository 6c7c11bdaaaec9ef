"""Alerts and rollout plans on the dashboard: HTMX panels loaded into the flag page, and the history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from alerts import health, plans, services
from alerts.models import OPEN_STATES, Alert, AlertState, PlanState, RolloutPlan, Severity
from flags import selectors
from flags.actors import Actor
from flags.models import Flag
from monitoring import selectors as metrics

from ..access import can_manage, flag_or_404, manager_required, viewer_required


def _alerts_panel(request: HttpRequest, flag: Flag, **extra: Any) -> HttpResponse:
    context = {"flag": flag, "can_manage": can_manage(request.user),
               "alerts": Alert.objects.filter(flag=flag, state__in=OPEN_STATES).select_related("rule"), **extra}
    return render(request, "alerts/panels.html#alerts", context)


@require_GET
@viewer_required
def flag_alerts(request: HttpRequest, key: str) -> HttpResponse:
    return _alerts_panel(request, flag_or_404(key))


@require_POST
@manager_required("acknowledge alerts")
def acknowledge(request: HttpRequest, key: str, alert_id: int) -> HttpResponse:
    flag = flag_or_404(key)
    alert = get_object_or_404(Alert, pk=alert_id, flag=flag)
    services.acknowledge(alert=alert, user=request.user)
    return _alerts_panel(request, flag, message=f"Acknowledged: {alert.rule.name}.")


@require_GET
@viewer_required
def flag_guardrails(request: HttpRequest, key: str) -> HttpResponse:
    """One tile per enabled rule: its state on the current stage, estimate, interval, threshold, the CUSUM of
    the recent minutes, and the estimate with its interval over the page's window."""
    flag = flag_or_404(key)
    window = metrics.window_named(request.GET.get("window"))
    now = timezone.now()
    stage, results = health.flag_health(flag, now)
    series = health.guardrail_series(flag, [result.rule for result in results], window, now)
    tiles = [{"rule": r.rule, "state": r.state, "verdict": r.verdict, "detail": r.detail} for r in results]
    return render(request, "alerts/panels.html#guardrails",
                  {"flag": flag, "tiles": tiles, "series": series, "stage": stage, "window": window})


def _plan_context(request: HttpRequest, flag: Flag, **extra: Any) -> dict[str, Any]:
    plan = plans.active_plan(flag) or RolloutPlan.objects.filter(flag=flag).first()
    context: dict[str, Any] = {"flag": flag, "plan": plan, "can_manage": can_manage(request.user), **extra}
    if plan is not None:
        context["stages"] = list(plan.stages.order_by("order"))
        if plan.state in (PlanState.RUNNING, PlanState.PAUSED) and plan.stage_started_at:
            context["gate"] = plans.gate(plan, timezone.now())
    return context


@require_GET
@viewer_required
def flag_plan(request: HttpRequest, key: str) -> HttpResponse:
    return render(request, "alerts/panels.html#plan", _plan_context(request, flag_or_404(key)))


PLAN_ACTIONS: dict[str, Callable[..., RolloutPlan]] = {
    "start": plans.plan_start,
    "pause": plans.plan_pause,
    "resume": plans.plan_resume,
    "advance": plans.plan_advance_now,
    "abort": plans.plan_abort,
}


# Plan actions that raise exposure: while a critical guardrail fires they need "confirmed".
RAISING = {"start", "resume", "advance"}


@require_POST
@manager_required("steer rollout plans")
def plan_action(request: HttpRequest, key: str) -> HttpResponse:
    flag = flag_or_404(key)
    action = request.POST.get("action", "")
    actor = Actor.for_user(request.user)
    status = 200
    try:
        if action == "create":
            plans.plan_create(flag=flag, created_by=actor.name)
            message = "Draft plan created: 10% → 20% → 50% → 100%, one week each."
        elif action in PLAN_ACTIONS:
            plan = plans.active_plan(flag) or get_object_or_404(RolloutPlan, flag=flag, state=PlanState.DRAFT)
            if action in RAISING:
                PLAN_ACTIONS[action](plan=plan, actor=actor, confirmed=request.POST.get("confirmed") == "yes")
            else:
                PLAN_ACTIONS[action](plan=plan, actor=actor)
            message = f"Plan {action}: done."
        else:
            raise ValidationError(f"unknown action {action!r}")
    except plans.NeedsConfirmation as exc:
        status, message, extra = 400, "; ".join(exc.messages), {"confirm_action": action}
    except ValidationError as exc:
        status, message, extra = 400, "; ".join(exc.messages), {}
    else:
        extra = {}
    response = render(request, "alerts/panels.html#plan",
                      _plan_context(request, flag, **({"error": message} if status == 400 else {"message": message}),
                                    **extra),
                      status=status)
    if status == 200:
        trigger_client_event(response, "plan-changed", {})
    return response


@require_GET
@viewer_required
def history(request: HttpRequest) -> HttpResponse:
    alerts = Alert.objects.select_related("rule", "flag").order_by("-opened_at", "-id")
    filters = {name: request.GET.get(name, "") for name in ("flag", "state", "severity")}
    if filters["flag"]:
        flag = selectors.flag_get(filters["flag"])
        alerts = alerts.filter(flag=flag) if flag else alerts.none()
    if filters["state"] in AlertState.values:
        alerts = alerts.filter(state=filters["state"])
    if filters["severity"] in Severity.values:
        alerts = alerts.filter(severity=filters["severity"])
    page = Paginator(alerts, 50).get_page(request.GET.get("page"))
    return render(request, "alerts/alert_list.html", {
        "page": page, "filters": filters, "flags": Flag.objects.values_list("key", flat=True),
        "states": AlertState.values, "severities": Severity.values,
    })
