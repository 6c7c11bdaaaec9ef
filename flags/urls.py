from django.urls import path

from . import views, views_audit, views_explain, views_list

app_name = "flags"

urlpatterns = [
    path("", views_list.flag_list, name="list"),
    # No trailing slash, so it never shadows the page of a flag whose key is "new" (flags/new/).
    path("flags/new", views_list.flag_new, name="new"),
    path("audit/", views_audit.audit_log, name="audit"),
    path("flags/<str:key>/", views.flag_detail, name="detail"),
    path("flags/<str:key>/explain", views_explain.flag_explain, name="explain"),
    path("flags/<str:key>/rollout", views.flag_rollout, name="rollout"),
    path("flags/<str:key>/enabled", views.flag_enabled, name="enabled"),
    path("flags/<str:key>/client-side", views.flag_client_side, name="client_side"),
]
