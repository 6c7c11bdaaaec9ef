"""Celery tasks: thin adapters over alerts.services, alerts.plans and alerts.notify (the notification tasks
live in alerts.outbox, which alerts.services uses to queue them; re-exported here for autodiscovery)."""

from __future__ import annotations

import time

from celery import shared_task
from django.utils import timezone

from rolloutadmin import metrics

from . import plans, services
from .outbox import flush_notifications, send_notification

__all__ = ["check_alerts", "flush_notifications", "send_notification"]


@shared_task(name="alerts.check_alerts", soft_time_limit=50, time_limit=55, ignore_result=True)
def check_alerts() -> None:
    now = timezone.now()  # the check and the plans judge the same minutes
    started = time.monotonic()
    result = "failed"
    try:
        services.check_all(now=now)
        plans.tick_all(now=now)
        result = "ok"
    finally:  # counted for /metrics either way: a check that keeps failing must show
        metrics.alert_check(result, time.monotonic() - started, time.time())
