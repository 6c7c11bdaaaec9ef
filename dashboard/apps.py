from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """The pages that compose flags, monitoring and alerts. No models: it only reads and calls services."""

    name = "dashboard"
