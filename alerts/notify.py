"""Sending alert notifications: email through Django's backend, and a Slack-compatible webhook POST."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from .models import Notification, NotificationStatus

logger = logging.getLogger(__name__)


class TemporaryFailure(Exception):
    pass


def text(notification: Notification) -> str:
    alert = notification.alert
    icon = ":rotating_light:" if notification.event == "firing" else ":white_check_mark:"
    head = f"{icon} [{alert.severity.upper()}] {alert.flag.key}: {alert.rule.name} {notification.event}"
    actions = "; ".join(what for step in alert.actions_taken for what in step["what"])
    return head + f"\n{alert.message}" + (f"\nActions: {actions}" if actions else "")


def send(notification_id: int) -> None:
    """Deliver one notification; raise TemporaryFailure for the task to retry with back-off."""
    with transaction.atomic():
        # Lock only the notification row: locking the joined alert and flag too would take them in the
        # opposite order from a check of the same flag, and the two would deadlock.
        notification = (Notification.objects.select_for_update(of=("self",))
                        .select_related("alert__flag", "alert__rule").get(pk=notification_id))
        if notification.status == NotificationStatus.SENT:
            return  # a retried task after a success: idempotent
        notification.attempts += 1
        try:
            if notification.channel == "email":
                send_mail(subject=text(notification).splitlines()[0][:200], message=text(notification),
                          from_email=None, recipient_list=list(settings.ALERT_EMAILS), fail_silently=False)
            else:
                _post_webhook(notification)
        except Exception as exc:
            notification.status = NotificationStatus.FAILED
            notification.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            notification.save(update_fields=["status", "attempts", "last_error"])
            logger.warning("notification %s failed (attempt %s): %s", notification_id, notification.attempts, exc)
            failed = True
        else:
            notification.status, notification.sent_at, notification.last_error = NotificationStatus.SENT, \
                timezone.now(), ""
            notification.save(update_fields=["status", "attempts", "sent_at", "last_error"])
            failed = False
    if failed:
        raise TemporaryFailure(notification.last_error)


def _post_webhook(notification: Notification) -> None:
    body = json.dumps({"text": text(notification), "alert": {
        "id": notification.alert_id, "event": notification.event, "flag": notification.alert.flag.key,
        "rule": notification.alert.rule.name, "severity": notification.alert.severity,
        "value": str(notification.alert.value) if notification.alert.value is not None else None,
    }}).encode()
    url = settings.ALERT_WEBHOOK_URL
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"ALERT_WEBHOOK_URL must be an http(s) URL, not {url[:40]!r}")
    request = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - http(s) checked above
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=settings.ALERT_WEBHOOK_TIMEOUT) as response:  # noqa: S310
        if response.status >= 300:
            raise RuntimeError(f"webhook answered {response.status}")
