from django.urls import re_path

from . import management_api, routing, views

OFREP_FALLBACK = "ofrep-fallback"

urlpatterns = [
    # The evaluation endpoints, from the lean path's own table (api/routing.py), to the same handlers.
    *(re_path(route.pattern("(?:/)?"), views.hot_view, name=route.name) for route in routing.ROUTES),
    # The management API (django-ninja), the OpenAPI document among it.
    *management_api.url_patterns(),
    # Anything else under ofrep/ (a key with "/", an unknown path): api/routing.py answers it in OFREP's
    # JSON (FLAG_NOT_FOUND, 404, 405), never a page of Django's. Not an operation of its own.
    re_path(r"^(?:/)?" + routing.OFREP_PREFIX.lstrip("/"), views.hot_view, name=OFREP_FALLBACK),
]
