from __future__ import annotations

from celery import shared_task
from django.conf import settings

from . import services


@shared_task(name="monitoring.prune_raw_records", time_limit=3600)
def prune_raw_records() -> int:
    return services.prune_raw_records(older_than_days=settings.EXECUTION_RETENTION_DAYS)
