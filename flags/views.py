"""The dashboard: every flag, and one flag's rollout controls, metrics, charts and audit trail.

Function views; an HTMX request gets one named partial of the page template. Viewers (group "Rollout
viewers") see everything; managers ("Rollout managers") may also move the slider, flip the kill switch
and keep lists. Everyone else gets 403.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csp import csp_override
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from alerts import charts
from monitoring import selectors as metrics

from . import selectors, services
from .actors import Actor
from .models import Flag, Source

VIEWERS = "Rollout viewers"
MANAGERS = "Rollout managers"
SESSION_ENDED = "Your session has ended: log in again, then retry. Nothing was changed."

# The dashboard runs no inline script or style, so it can always send a strict policy.
STRICT_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}


def _groups(user: Any) -> set[str]:
    if not hasattr(user, "_rollout_groups"):
        user._rollout_groups = set(user.groups.values_list("name", flat=True))
    return user._rollout_groups


def can_view(user: Any) -> bool:
    return user.is_active and (user.is_superuser or bool(_groups(user) & {VIEWERS, MANAGERS}))


def can_manage(user: Any) -> bool:
    return user.is_active and (user.is_superuser or MANAGERS in _groups(user))


def viewer_required(view):  # type: ignore[no-untyped-def]
    logged_in = login_required(view)

    @csp_override(STRICT_CSP)
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            if request.htmx:
                # A redirect would be followed and the login page swapped into a panel: say it instead, next
                # to the control (dashboard.js), and keep what the user typed.
                return HttpResponse(SESSION_ENDED, status=401, content_type="text/plain; charset=utf-8")
            return logged_in(request, *args, **kwargs)
        if not can_view(request.user):
            raise PermissionDenied("You need to be in the Rollout viewers or Rollout managers group.")
        return view(request, *args, **kwargs)

    return wrapper


def manager_required(what: str):  # type: ignore[no-untyped-def]
    """viewer_required, and 403 unless the user is a Rollout manager: `what` says what was refused."""

    def decorate(view):  # type: ignore[no-untyped-def]
        @viewer_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not can_manage(request.user):
                raise PermissionDenied(f"Only Rollout managers may {what}.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def flag_or_404(key: str) -> Flag:
    flag = selectors.flag_get(key)
    if flag is None:
        raise Http404(f"no flag {key!r}")
    return flag


def _window(request: HttpRequest) -> str:
    window = request.GET.get("window", metrics.DEFAULT_WINDOW)
    return window if window in metrics.WINDOWS else metrics.DEFAULT_WINDOW


def _detail_context(request: HttpRequest, flag: Flag, **extra: Any) -> dict[str, Any]:
    window = _window(request)
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
def flag_detail(request: HttpRequest, key: str) -> HttpResponse:
    flag = flag_or_404(key)
    template = "flags/flag_detail.html"
    partial = request.GET.get("partial")
    if request.htmx and partial in {"metrics", "audit", "controls"}:
        template += f"#{partial}"
    return render(request, template, _detail_context(request, flag))


def _firing(flag: Flag) -> str:
    """Why raising this flag needs confirmation now: its open critical guardrail episodes, or ''."""
    from alerts import health

    firing = health.firing_critical(flag)
    return health.firing_reason(firing) if firing else ""


def _controls_context(request: HttpRequest, flag: Flag) -> dict[str, Any]:
    """What the controls partial needs, on the full page and in every answer to a control."""
    return {"flag": flag, "can_manage": can_manage(request.user), "last_change": selectors.last_change(flag),
            "firing": _firing(flag), "reason_required": settings.DASHBOARD_REASON_REQUIRED,
            "big_step": services.ROLLOUT_BIG_STEP}


def _controls(request: HttpRequest, flag: Flag, *, status: int = 200, **extra: Any) -> HttpResponse:
    context = {**_controls_context(request, flag), **extra}
    response = render(request, "flags/flag_detail.html#controls", context, status=status)
    if extra.get("changed"):
        trigger_client_event(response, "flag-changed", {"version": flag.version})
    return response


def _expected_version(request: HttpRequest) -> int | None:
    raw = request.POST.get("expected_version", "")
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    return int(raw) if re.fullmatch(r"[0-9]{1,18}", raw) else None


def _write(request: HttpRequest, flag: Flag, service: Callable[..., Flag], **kwargs: Any) -> Flag | HttpResponse:
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
def flag_rollout(request: HttpRequest, key: str) -> HttpResponse:
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
def flag_enabled(request: HttpRequest, key: str) -> HttpResponse:
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
def flag_client_side(request: HttpRequest, key: str) -> HttpResponse:
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
