from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from dashboard.urls import alert_urls, flag_urls, segment_urls

from . import health, metrics_endpoint

urlpatterns = [
    # For load balancers and orchestrators: no login, no CSRF, never a 500 (rolloutadmin/health.py).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_endpoint.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin): answer instead of a 404.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("api.urls")),
    path("", include((flag_urls, "flags"))),
    path("", include((alert_urls, "alerts"))),
    path("", include((segment_urls, "segments"))),
]
