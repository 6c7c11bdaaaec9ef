from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the receivers of flags.signals (new flags get default rules; a manual exposure change
        # pauses a running plan).
        from . import receivers  # noqa: F401
