"""The outbox's way to Celery: the tasks that send notifications, and `enqueue`, which hands one to them.

alerts.services queues a notification through `enqueue` once its check commits; the admin's "send again"
does too. alerts.tasks re-exports the tasks, so Celery's autodiscovery finds them. Kept apart from
alerts.tasks, whose alert check calls alerts.services: so alerts.services can import this module.
"""

from __future__ import annotations

import logging

from celery import shared_task

from . import notify
from .models import Notification, NotificationStatus

logger = logging.getLogger("alerts.notify")


def enqueue(notification_id: int) -> bool:
    """Hand a notification to the Celery task. When the broker refuses, say so on the (pending) row; the
    flush sends it once its grace period is over. Returns whether it was queued."""
    try:
        send_notification.delay(notification_id)
    except Exception as exc:
        logger.exception("could not enqueue notification %s: the outbox flush will send it", notification_id)
        try:
            Notification.objects.filter(pk=notification_id, status=NotificationStatus.PENDING).update(
                last_error=f"not queued ({type(exc).__name__}: {exc}); the outbox flush sends it "
                           f"{notify.duration(notify.grace())} after it was written"[:2000])
        except Exception:
            logger.exception("could not record the failed enqueue of notification %s", notification_id)
        return False
    return True


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
