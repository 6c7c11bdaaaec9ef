from django.urls import path, re_path

from . import views

OFREP_FALLBACK = "ofrep-fallback"

urlpatterns = [
    re_path(r"^(?:/)?ofrep/v1/evaluate/flags/(?P<key>[^/]+)/?$", views.hot_view),
    re_path(r"^(?:/)?ofrep/v1/evaluate/flags/?$", views.hot_view),
    path("api/v1/evaluate", views.hot_view),
    path("api/v1/flags/<str:key>/evaluate", views.hot_view),
    path("api/v1/openapi.json", views.openapi_view, name="api-openapi"),
    path("api/v1/flags", views.flags_list, name="api-flags"),
    path("api/v1/flags/<str:key>", views.flag_detail, name="api-flag"),
    path("api/v1/flags/<str:key>/overrides", views.overrides, name="api-overrides"),
    path("api/v1/audit", views.audit, name="api-audit"),
    path("api/v1/executions", views.executions, name="api-executions"),
    path("api/v1/flags/<str:key>/metrics", views.metrics, name="api-metrics"),
    # Anything else under ofrep/ (a key with "/", an unknown path): api/routing.py answers it in OFREP's
    # JSON (FLAG_NOT_FOUND, 404, 405), never a page of Django's. Not an operation of its own.
    re_path(r"^(?:/)?ofrep/", views.hot_view, name=OFREP_FALLBACK),
]
