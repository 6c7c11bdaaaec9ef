"""Sending alert notifications: email through Django's backend, and a Slack-compatible webhook POST.

Notifications are an outbox. A check writes each notification in its own transaction, due for the flush a
grace period after it was written (`next_attempt_at`, in real time: the check's own time may be simulated),
and hands it to Celery once it commits; the task sends it and retries a failure with a short back-off.
Whatever goes wrong on the way (the broker refused the enqueue or a retry, a worker died in the middle of a
send, the endpoint stayed down through the task's retries), the row stays due, and `flush` (a beat task,
alerts.flush_notifications) sends it, again with a longer back-off after each failure, until it is sent or
given up: after NOTIFICATION_MAX_ATTEMPTS attempts, or NOTIFICATION_MAX_AGE_SECONDS after it was queued, it
is marked failed with a last_error that says why it was given up (the admin lists it; "send again" there
gives it a fresh start). No notification stays pending without something due to send it.

Every attempt, by the task or by the flush, runs under a row lock on the notification and records its
outcome in the same transaction; a sent notification is never sent again. The flush skips rows another
session holds (SKIP LOCKED on PostgreSQL) and re-reads under the lock whether the row is still due, so two
flushes, or a flush and the task, never send one notification twice.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from .models import Notification, NotificationStatus

logger = logging.getLogger(__name__)

# Defaults of the outbox's settings (each can be set in Django's settings under the same name).
NOTIFICATION_GRACE_SECONDS = 120  # the task's own retries (5 s doubling, five of them) take 155 s at most
NOTIFICATION_RETRY_MAX_SECONDS = 3600  # the flush's back-off doubles from the grace period up to this
NOTIFICATION_MAX_ATTEMPTS = 10
NOTIFICATION_MAX_AGE_SECONDS = 24 * 3600  # an alert older than a day is news no longer: give it up
NOTIFICATION_FLUSH_BATCH = 50
NOTIFICATION_FLUSH_BUDGET_SECONDS = 30.0  # no new send starts after this (one send takes up to ~10 s)


class TemporaryFailure(Exception):
    """The attempt failed and another one is due (the task retries sooner; the flush in any case)."""


class GaveUp(Exception):
    """The attempt failed and was the last: the notification is failed for good (until "send again")."""


def _setting(name: str) -> float:
    return getattr(settings, name, globals()[name])


def grace() -> timedelta:
    return timedelta(seconds=_setting("NOTIFICATION_GRACE_SECONDS"))


def max_attempts() -> int:
    return int(_setting("NOTIFICATION_MAX_ATTEMPTS"))


def max_age() -> timedelta:
    return timedelta(seconds=_setting("NOTIFICATION_MAX_AGE_SECONDS"))


def backoff(attempts: int) -> timedelta:
    """How long after its `attempts`-th failed attempt the flush tries a notification again: the grace period,
    doubling with each attempt, at most NOTIFICATION_RETRY_MAX_SECONDS."""
    return min(grace() * 2 ** max(0, attempts - 1), timedelta(seconds=_setting("NOTIFICATION_RETRY_MAX_SECONDS")))


def duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def _locked(**lock: bool) -> QuerySet[Notification]:
    # Lock only the notification row: locking the joined alert and flag too would take them in the
    # opposite order from a check of the same flag, and the two would deadlock.
    return (Notification.objects.select_for_update(of=("self",), **lock)
            .select_related("alert__flag", "alert__rule"))


def text(notification: Notification) -> str:
    alert = notification.alert
    icon = ":rotating_light:" if notification.event == "firing" else ":white_check_mark:"
    head = f"{icon} [{alert.severity.upper()}] {alert.flag.key}: {alert.rule.name} {notification.event}"
    actions = "; ".join(what for step in alert.actions_taken for what in step["what"])
    return head + f"\n{alert.message}" + (f"\nActions: {actions}" if actions else "")


def send(notification_id: int, *, now: datetime | None = None) -> None:
    """Deliver one notification (the task's path). Raises TemporaryFailure when it failed and another attempt
    is due (the task retries it with back-off), GaveUp when it failed for the last time. A sent notification
    is not sent again, nor one given up (the admin's "send again" starts it afresh first)."""
    now = now or timezone.now()
    with transaction.atomic():
        notification = _locked().get(pk=notification_id)
        if notification.status == NotificationStatus.SENT:
            return  # a retried task after a success, or the flush sent it first: idempotent
        if notification.status == NotificationStatus.FAILED and notification.next_attempt_at is None:
            logger.info("notification %s was given up: not sending it", notification_id)
            return
        failure = _attempt(notification, now)
    if failure is not None:
        raise failure


def _attempt(notification: Notification, now: datetime) -> Exception | None:
    """One delivery attempt of a locked notification, its outcome saved on it: None when sent, else the
    exception for the caller to raise once the outcome is committed."""
    notification.attempts += 1
    failure: Exception | None = None
    try:
        if notification.channel == "email":
            send_mail(subject=text(notification).splitlines()[0][:200], message=text(notification),
                      from_email=None, recipient_list=list(settings.ALERT_EMAILS), fail_silently=False)
        else:
            _post_webhook(notification)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        notification.status = NotificationStatus.FAILED
        age = now - notification.queued_at
        if notification.attempts >= max_attempts():
            why = f"{notification.attempts} attempts (NOTIFICATION_MAX_ATTEMPTS)"
        elif age >= max_age():
            why = f"{duration(age)} since it was queued (NOTIFICATION_MAX_AGE_SECONDS)"
        else:
            why = ""
        if why:
            notification.last_error = f"gave up after {why}; last error: {error}"[:2000]
            notification.next_attempt_at = None
            logger.error("notification %s given up: %s", notification.pk, notification.last_error)
            failure = GaveUp(notification.last_error)
        else:
            notification.last_error = error[:2000]
            notification.next_attempt_at = now + backoff(notification.attempts)
            logger.warning("notification %s failed (attempt %s): %s", notification.pk, notification.attempts, exc)
            failure = TemporaryFailure(notification.last_error)
    else:
        notification.status, notification.sent_at = NotificationStatus.SENT, timezone.now()
        notification.last_error, notification.next_attempt_at = "", None
    notification.save(update_fields=["status", "attempts", "sent_at", "last_error", "next_attempt_at"])
    return failure


def _due(now: datetime) -> Q:
    """Not sent, not given up, and its time has come; a pending row without a due time (written by other code
    than a check) is due a grace period after it was queued."""
    return (Q(status__in=[NotificationStatus.PENDING, NotificationStatus.FAILED], next_attempt_at__lte=now)
            | Q(status=NotificationStatus.PENDING, next_attempt_at__isnull=True, queued_at__lte=now - grace()))


def flush(*, now: datetime | None = None, budget: float | None = None) -> dict[str, int]:
    """Send what is due in the outbox, oldest due first: at most NOTIFICATION_FLUSH_BATCH, none started after
    `budget` seconds (NOTIFICATION_FLUSH_BUDGET_SECONDS). Returns how many were sent, failed (and are due
    again later), given up, skipped (another session held them, or they were no longer due) and deferred
    (left for the next flush by the budget).

    The flush sends in its own worker, with the same code and timeouts as the task, rather than enqueueing the
    task again: the broker is what failed for most of these rows, and a second enqueue would depend on it
    again (refused again, or accepted by a Redis that loses it when it restarts), and would need a "queued"
    state to avoid enqueueing the row every minute: a state that could itself get stuck. Sent here, each
    notification is sent and its outcome written in the one transaction that holds its row lock, so the row
    is the only truth about it. The cost is that a backlog goes out one by one, a batch per beat period;
    while the broker is down the flush task does not run either, and the rows wait, due, until it is back.
    """
    now = now or timezone.now()
    deadline = time.monotonic() + (budget if budget is not None else _setting("NOTIFICATION_FLUSH_BUDGET_SECONDS"))
    batch = int(_setting("NOTIFICATION_FLUSH_BATCH"))
    due = list(Notification.objects.filter(_due(now)).order_by("next_attempt_at", "pk")
               .values_list("pk", flat=True)[:batch])
    outcomes: Counter[str] = Counter()
    for done, notification_id in enumerate(due):
        if time.monotonic() >= deadline:
            outcomes["deferred"] += len(due) - done
            break
        try:
            outcomes[_flush_one(notification_id, now)] += 1
        except Exception:
            logger.exception("flushing notification %s", notification_id)
            outcomes["error"] += 1
    if outcomes:
        logger.info("notification outbox flushed: %s", dict(outcomes))
    return dict(outcomes)


def _flush_one(notification_id: int, now: datetime) -> str:
    with transaction.atomic():
        notification = _locked(skip_locked=True).filter(_due(now), pk=notification_id).first()
        if notification is None:
            return "skipped"  # another flush or the task holds it, or it was sent or rescheduled meanwhile
        age = now - notification.queued_at
        if age >= max_age():
            notification.status, notification.next_attempt_at = NotificationStatus.FAILED, None
            notification.last_error = (
                f"gave up after {duration(age)} since it was queued (NOTIFICATION_MAX_AGE_SECONDS), "
                f"{notification.attempts} attempts" + (f"; last error: {notification.last_error}"
                                                      if notification.last_error else ""))[:2000]
            notification.save(update_fields=["status", "next_attempt_at", "last_error"])
            logger.error("notification %s given up: %s", notification.pk, notification.last_error)
            return "given_up"
        failure = _attempt(notification, now)
    if failure is None:
        return "sent"
    return "given_up" if isinstance(failure, GaveUp) else "failed"


def restart(notification: Notification, *, by: str, now: datetime | None = None) -> bool:
    """The admin's "send again" of a failed notification: a fresh start (attempts and age from now, the
    earlier outcome kept in last_error), due for the flush after the grace period. Returns False when it is
    not failed (any more)."""
    now = now or timezone.now()
    with transaction.atomic():
        row = Notification.objects.select_for_update(of=("self",)).filter(
            pk=notification.pk, status=NotificationStatus.FAILED).first()
        if row is None:
            return False
        row.last_error = (f"sent again by {by} after {row.attempts} attempts; before: {row.last_error}")[:2000]
        row.status, row.attempts, row.queued_at = NotificationStatus.PENDING, 0, now
        row.next_attempt_at = now + grace()
        row.save(update_fields=["status", "attempts", "queued_at", "next_attempt_at", "last_error"])
    return True


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
