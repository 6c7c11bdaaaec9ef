"""The page django-axes answers with when an account is locked out (AXES_LOCKOUT_CALLABLE).

HTTP 429 with the time left as an integer Retry-After and a readable page (the dashboard's look, on
/login/ and /admin/login/ alike); JSON for XMLHttpRequest callers, like axes' own response.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone

LOCKOUT_STATUS = 429


def _cool_off() -> timedelta | None:
    cool_off = getattr(settings, "AXES_COOLOFF_TIME", None)
    if isinstance(cool_off, int | float):
        return timedelta(hours=cool_off)  # axes reads a number as hours
    return cool_off if isinstance(cool_off, timedelta) else None


def _seconds_left(username: str, cool_off: timedelta) -> int:
    """Until the last recorded failure is older than the cool-off (the lockout's end, as axes sees it)."""
    from axes.models import AccessAttempt

    last = AccessAttempt.objects.filter(username=username).aggregate(last=Max("attempt_time"))["last"]
    if last is None:
        return math.ceil(cool_off.total_seconds())
    return max(1, math.ceil((last + cool_off - timezone.now()).total_seconds()))


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict[str, Any] | None = None) -> HttpResponse:
    from axes.helpers import get_client_username, get_failure_limit

    username = get_client_username(request, credentials) or ""
    cool_off = _cool_off()
    seconds = _seconds_left(username, cool_off) if cool_off else 0
    context = {
        "username": username,
        "failure_limit": get_failure_limit(request, credentials),
        "retry_after": seconds,
        "retry_minutes": max(1, math.ceil(seconds / 60)),
        "cooloff_total_minutes": max(1, math.ceil(cool_off.total_seconds() / 60)) if cool_off else 0,
    }
    if request.headers.get("x-requested-with") == "XMLHttpRequest":
        response: HttpResponse = JsonResponse({"error": "locked_out", **context}, status=LOCKOUT_STATUS)
    else:
        response = render(request, "registration/locked_out.html", context, status=LOCKOUT_STATUS)
    if seconds:
        response["Retry-After"] = str(seconds)
    return response
