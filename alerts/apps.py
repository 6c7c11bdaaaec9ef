from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from flags import services as flag_services

        from . import plans, services

        flag_services.created_listeners.append(services.ensure_default_rules)
        flag_services.exposure_listeners.append(plans.on_exposure_change)
