from django.urls import path, re_path

from . import views

urlpatterns = [
    # Everything under ofrep/: api/routing.py answers it (the evaluation, or OFREP's JSON 404 and 405).
    re_path(r"^(?:/)?ofrep/", views.hot_view),
    path("api/v1/evaluate", views.hot_view),
    path("api/v1/flags/<str:key>/evaluate", views.hot_view),
    path("api/v1/openapi.json", views.openapi_view, name="api-openapi"),
    path("api/v1/flags", views.flags_list, name="api-flags"),
    path("api/v1/flags/<str:key>", views.flag_detail, name="api-flag"),
    path("api/v1/flags/<str:key>/overrides", views.overrides, name="api-overrides"),
    path("api/v1/audit", views.audit, name="api-audit"),
    path("api/v1/executions", views.executions, name="api-executions"),
    path("api/v1/flags/<str:key>/metrics", views.metrics, name="api-metrics"),
]
