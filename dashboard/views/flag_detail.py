"""A flag's page: its rollout controls, metrics, charts and audit trail.

Function views; an HTMX request gets one named partial of the page template. Who may do what:
dashboard.access.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from alerts import charts, health
from flags import selectors, services
from flags.actors import Actor
from flags.models import Flag, Source
from monitoring import selectors as metrics

from ..access import HtmxHttpRequest, can_manage, flag_or_404, manager_required, viewer_required


def _detail_context(request: HtmxHttpRequest, flag: Flag, **extra: Any) -> dict[str, Any]:
    window = metrics.window_named(request.GET.get("window"))
    now = timezone.now()  # one moment for the numbers and the charts drawn from them
    summary = metrics.summary(flag, window, now)
    return {
        **_controls_context(request, flag),
        "window": window,
        "windows": list(metrics.WINDOWS),
        "summary": summary,
        "modes": [(mode, summary["modes"][mode]) for mode in (flag.treatment_mode, flag.baseline_mode)],
        "criteria": metrics.success_criteria(summary),
        "chart_data": charts.chart_data(flag, window, now),
        "audit": selectors.audit_for_flag(flag, limit=15),
        "counts": selectors.override_counts(flag),
        **extra,
    }


@require_GET
@viewer_required
def flag_detail(request: HtmxHttpRequest, key: str) -> HttpResponse:
    flag = flag_or_404(key)
    template = "flags/flag_detail.html"
    partial = request.GET.get("partial")
    if request.htmx and partial in {"metrics", "audit", "controls"}:
        template += f"#{partial}"
    return render(request, template, _detail_context(request, flag))


def _firing(flag: Flag) -> str:
    """Why raising this flag needs confirmation now: its open critical guardrail episodes, or ''."""
    firing = health.firing_critical(flag)
    return health.firing_reason(firing) if firing else ""


def _controls_context(request: HtmxHttpRequest, flag: Flag) -> dict[str, Any]:
    """What the controls partial needs, on the full page and in every answer to a control."""
    return {"flag": flag, "can_manage": can_manage(request.user), "last_change": selectors.last_change(flag),
            "firing": _firing(flag), "reason_required": settings.DASHBOARD_REASON_REQUIRED,
            "big_step": services.ROLLOUT_BIG_STEP}


def _controls(request: HtmxHttpRequest, flag: Flag, *, status: int = 200, **extra: Any) -> HttpResponse:
    context = {**_controls_context(request, flag), **extra}
    response = render(request, "flags/flag_detail.html#controls", context, status=status)
    if extra.get("changed"):
        trigger_client_event(response, "flag-changed", {"version": flag.version})
    return response


def _expected_version(request: HtmxHttpRequest) -> int | None:
    raw = request.POST.get("expected_version", "")
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    return int(raw) if re.fullmatch(r"[0-9]{1,18}", raw) else None


def _write(request: HtmxHttpRequest, flag: Flag, service: Callable[..., Flag], **kwargs: Any) -> Flag | HttpResponse:
    """Apply a change from the controls as the request's user: the changed flag, or the panel that refuses
    it (409 with the current state when the flag has moved on, 400 when the change is invalid)."""
    try:
        return service(flag=flag, actor=Actor.for_user(request.user), source=Source.UI, **kwargs)
    except services.VersionConflict as exc:
        return _controls(request, exc.flag, status=409, error=f"Refused: {exc}")
    except ValidationError as exc:
        return _controls(request, flag, status=400, error=" ".join(exc.messages))


@require_POST
@manager_required("change a rollout")
def flag_rollout(request: HtmxHttpRequest, key: str) -> HttpResponse:
    """The slider, applied on release. A big raise must be confirmed (services.rollout_needs_confirmation)."""
    flag = flag_or_404(key)
    try:
        target = services.parse_percentage(request.POST.get("rollout_percentage", ""))
    except ValidationError as exc:
        return _controls(request, flag, status=400, error=" ".join(exc.message_dict["rollout_percentage"]))
    expected = _expected_version(request)
    if expected is not None and expected != flag.version:
        # A stale page first learns what changed: "needs confirmation" would judge a move it never meant.
        conflict = services.VersionConflict(flag, expected, selectors.last_change(flag))
        return _controls(request, flag, status=409, error=f"Refused: {conflict}")
    reason = request.POST.get("reason", "").strip()[:1000]
    current = flag.rollout_percentage
    if target != current:
        # Before the confirmation: a user who confirmed a big step must not then learn the reason was missing.
        try:
            services.require_reason(source=Source.UI, reason=reason)
        except ValidationError as exc:
            return _controls(request, flag, status=400, error=" ".join(exc.message_dict["reason"]))
    unconfirmed = services.rollout_needs_confirmation(
        current=current, target=target, firing=_firing(flag) if target > current else "")
    if unconfirmed and request.POST.get("confirmed") != "yes":
        return _controls(request, flag, status=400, error=unconfirmed)
    written = _write(request, flag, services.flag_set_rollout, percentage=target, reason=reason,
                     expected_version=expected)
    if isinstance(written, HttpResponse):
        return written
    return _controls(request, written, changed=True, message=f"Rollout set to {written.rollout_percentage}%.")


@require_POST
@manager_required("flip the kill switch")
def flag_enabled(request: HtmxHttpRequest, key: str) -> HttpResponse:
    """The kill switch."""
    flag = flag_or_404(key)
    wanted = request.POST.get("enabled")
    if wanted not in {"on", "off"}:
        return _controls(request, flag, status=400, error="enabled must be on or off.")
    reason = request.POST.get("reason", "").strip()[:1000]
    if wanted == "on" and not flag.enabled:
        try:  # before the confirmation, as for the slider
            services.require_reason(source=Source.UI, reason=reason)
        except ValidationError as exc:
            return _controls(request, flag, status=400, error=" ".join(exc.messages))
    firing = _firing(flag) if wanted == "on" and not flag.enabled else ""
    if firing and request.POST.get("confirmed") != "yes":
        return _controls(request, flag, status=400, error=f"Turning the flag on needs confirmation ({firing}).")
    # Turning a flag off is always safe: it works from any page, whatever changed meanwhile (the audit entry
    # records the state it overrode). Turning it on still needs the version the page showed.
    expected = _expected_version(request) if wanted == "on" else None
    was = flag.version
    written = _write(request, flag, services.flag_update, enabled=wanted == "on", reason=reason,
                     expected_version=expected)
    if isinstance(written, HttpResponse):
        return written
    if written.version == was:
        return _controls(request, written, message=f"Flag already {'enabled' if written.enabled else 'disabled'}.")
    state = "enabled" if written.enabled else "disabled (kill switch)"
    return _controls(request, written, changed=True, message=f"Flag {state}.")


@require_POST
@manager_required("change who may evaluate a flag")
def flag_client_side(request: HtmxHttpRequest, key: str) -> HttpResponse:
    """Whether client keys (a browser's, scope `client`) may evaluate the flag. Audited like any change."""
    flag = flag_or_404(key)
    wanted = request.POST.get("client_side")
    if wanted not in {"on", "off"}:
        return _controls(request, flag, status=400, error="client_side must be on or off.")
    written = _write(request, flag, services.flag_update, client_side=wanted == "on",
                     reason=request.POST.get("reason", "").strip()[:1000],
                     expected_version=_expected_version(request))
    if isinstance(written, HttpResponse):
        return written
    state = "evaluable by client keys (browsers)" if written.client_side else "server-side only"
    return _controls(request, written, changed=True, message=f"Flag now {state}.")
