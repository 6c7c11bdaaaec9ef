from django.urls import path

from . import views

app_name = "alerts"

urlpatterns = [
    path("alerts/", views.history, name="history"),
    path("flags/<str:key>/alerts", views.flag_alerts, name="flag_alerts"),
    path("flags/<str:key>/alerts/<int:alert_id>/acknowledge", views.acknowledge, name="acknowledge"),
    path("flags/<str:key>/guardrails", views.flag_guardrails, name="flag_guardrails"),
    path("flags/<str:key>/plan", views.flag_plan, name="flag_plan"),
    path("flags/<str:key>/plan/action", views.plan_action, name="plan_action"),
]
