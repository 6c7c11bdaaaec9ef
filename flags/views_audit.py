"""The audit log in the dashboard: every change, filtered by flag, actor and source."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from .views import viewer_required


@viewer_required
def audit_log(request: HttpRequest) -> HttpResponse:
    raise NotImplementedError
