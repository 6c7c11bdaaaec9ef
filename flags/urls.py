from django.urls import path

from . import views

app_name = "flags"

urlpatterns = [
    path("", views.flag_list, name="list"),
    path("flags/<str:key>/", views.flag_detail, name="detail"),
    path("flags/<str:key>/rollout", views.flag_rollout, name="rollout"),
    path("flags/<str:key>/enabled", views.flag_enabled, name="enabled"),
    path("flags/<str:key>/client-side", views.flag_client_side, name="client_side"),
]
