"""The dashboard's URLs. The names keep the namespaces of the apps they show ("flags:detail",
"alerts:flag_plan"...): rolloutadmin/urls.py includes each list under its namespace."""

from django.urls import path

from .views import alerts, audit, explain, flag_detail, flag_list, rules, segments

flag_urls = [
    path("", flag_list.flag_list, name="list"),
    # No trailing slash, so it never shadows the page of a flag whose key is "new" (flags/new/).
    path("flags/new", flag_list.flag_new, name="new"),
    path("audit/", audit.audit_log, name="audit"),
    path("flags/<str:key>/", flag_detail.flag_detail, name="detail"),
    path("flags/<str:key>/explain", explain.flag_explain, name="explain"),
    path("flags/<str:key>/rollout", flag_detail.flag_rollout, name="rollout"),
    path("flags/<str:key>/enabled", flag_detail.flag_enabled, name="enabled"),
    path("flags/<str:key>/client-side", flag_detail.flag_client_side, name="client_side"),
    path("flags/<str:key>/rules", rules.flag_rules, name="rules"),
]

alert_urls = [
    path("alerts/", alerts.history, name="history"),
    path("flags/<str:key>/alerts", alerts.flag_alerts, name="flag_alerts"),
    path("flags/<str:key>/alerts/<int:alert_id>/acknowledge", alerts.acknowledge, name="acknowledge"),
    path("flags/<str:key>/guardrails", alerts.flag_guardrails, name="flag_guardrails"),
    path("flags/<str:key>/plan", alerts.flag_plan, name="flag_plan"),
    path("flags/<str:key>/plan/action", alerts.plan_action, name="plan_action"),
]

segment_urls = [
    path("segments/", segments.segment_list, name="list"),
    # No trailing slash, so it never shadows the page of a segment whose key is "new" (segments/new/).
    path("segments/new", segments.segment_new, name="new"),
    path("segments/<str:key>/", segments.segment_detail, name="detail"),
    path("segments/<str:key>/edit", segments.segment_edit, name="edit"),
    path("segments/<str:key>/delete", segments.segment_delete, name="delete"),
]
