"""The evaluation endpoints under Django (tests, runserver without the WSGI wrapper): adapters over the lean
path's handlers. The management API is api/management_api.py."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .core import http_response, request_from_django
from .hot import api_error
from .routing import dispatch


@csrf_exempt
def hot_view(request: HttpRequest, **_kwargs: str) -> HttpResponse:
    resp = dispatch(request_from_django(request))
    if resp is None:  # pragma: no cover - urls.py only routes matching paths here
        resp = api_error(404, "not_found", "no such endpoint")
    return http_response(resp)
