"""Celery tasks: thin adapters over alerts.services and alerts.notify."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from . import notify, plans, services


@shared_task(name="alerts.check_alerts", soft_time_limit=50, time_limit=55, ignore_result=True)
def check_alerts() -> None:
    now = timezone.now()  # the check and the plans judge the same minutes
    services.check_all(now=now)
    plans.tick_all(now=now)


@shared_task(name="alerts.send_notification", bind=True, max_retries=5, soft_time_limit=20, time_limit=30,
             ignore_result=True)
def send_notification(self, notification_id: int) -> None:  # type: ignore[no-untyped-def]
    try:
        notify.send(notification_id)
    except notify.TemporaryFailure as exc:
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc
