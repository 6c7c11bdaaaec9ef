"""Celery tasks: thin adapters over alerts.services and alerts.notify."""

from __future__ import annotations

import time

from celery import shared_task
from django.utils import timezone

from rolloutadmin import metrics

from . import notify, plans, services


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


@shared_task(name="alerts.send_notification", bind=True, max_retries=5, soft_time_limit=20, time_limit=30,
             ignore_result=True)
def send_notification(self, notification_id: int) -> None:  # type: ignore[no-untyped-def]
    """Send one notification, retrying a failure soon with back-off (GaveUp ends it). Whatever this task does
    not finish (its retries spent, a retry the broker refused, a worker lost) the outbox flush takes over."""
    try:
        notify.send(notification_id)
    except notify.TemporaryFailure as exc:
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc


@shared_task(name="alerts.flush_notifications", soft_time_limit=50, time_limit=55, ignore_result=True)
def flush_notifications() -> None:
    """The outbox: send the notifications still unsent after their grace period or back-off (alerts.notify)."""
    notify.flush()
