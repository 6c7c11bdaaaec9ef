"""Who may see and change what on the dashboard, and the decorators every page uses.

Viewers (group "Rollout viewers") see everything; managers ("Rollout managers") may also move the slider,
flip the kill switch, keep lists and steer plans. Everyone else gets 403. Every page sends the strict
Content-Security-Policy (rolloutadmin/csp.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csp import csp_override
from django_htmx.middleware import HtmxDetails

from flags import selectors
from flags.models import Flag
from rolloutadmin.csp import STRICT_CSP

VIEWERS = "Rollout viewers"
MANAGERS = "Rollout managers"
SESSION_ENDED = "Your session has ended: log in again, then retry. Nothing was changed."


class HtmxHttpRequest(HttpRequest):
    """A request as the dashboard's views see it: django-htmx's middleware sets `htmx` on every one."""

    htmx: HtmxDetails


View = Callable[..., HttpResponse]


def _groups(user: Any) -> set[str]:
    if not hasattr(user, "_rollout_groups"):
        user._rollout_groups = set(user.groups.values_list("name", flat=True))
    return user._rollout_groups


def can_view(user: Any) -> bool:
    return user.is_active and (user.is_superuser or bool(_groups(user) & {VIEWERS, MANAGERS}))


def can_manage(user: Any) -> bool:
    return user.is_active and (user.is_superuser or MANAGERS in _groups(user))


def viewer_required(view: View) -> View:
    logged_in = login_required(view)

    @csp_override(STRICT_CSP)
    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
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


def manager_required(what: str) -> Callable[[View], View]:
    """viewer_required, and 403 unless the user is a Rollout manager: `what` says what was refused."""

    def decorate(view: View) -> View:
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
