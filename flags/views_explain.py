"""The "Why does this user get it?" box: one user's decision on one flag, explained, on the flag page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from .views import viewer_required


@viewer_required
def flag_explain(request: HttpRequest, key: str) -> HttpResponse:
    raise NotImplementedError
