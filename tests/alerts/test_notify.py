"""Notifications: a Slack-compatible webhook POST to a real local HTTP server, and email to ALERT_EMAILS."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.db import connection, connections, transaction

from alerts import notify, tasks
from alerts import services as alert_services
from alerts.models import Alert, Notification, NotificationStatus
from flags.models import Flag
from tests.alerts import begin_stage, feed, minute_ago

pytestmark = pytest.mark.django_db

ERROR_RULE = "Patch Mode error rate above 5%"
DELTA_RULE = "Patch Mode errors more than 1 point above Single Mode"
SUCCESS_RULE = "Success rate below 95%"


class Hook(BaseHTTPRequestHandler):
    """Records every POST on its server and answers with the server's chosen status, after its delay."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append({"path": self.path, "content_type": self.headers.get("Content-Type"),  # type: ignore[attr-defined]
                                     "body": json.loads(body)})
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        try:
            self.send_response(self.server.status)  # type: ignore[attr-defined]
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:
            pass  # the client gave up waiting (the timeout test)

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def webhook():
    """start(status=200, delay=0) -> (server, url): a real HTTP server on 127.0.0.1 in a thread."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int = 200, delay: float = 0.0) -> tuple[ThreadingHTTPServer, str]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        server.block_on_close = False
        server.received, server.status, server.delay = [], status, delay  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/alerts"


def failing_stage(flag: Flag, rollout: int = 20) -> datetime:
    """A stage at `rollout` begun three hours ago, then a minute of Patch Mode calls all failing beside healthy
    Single Mode calls (half their tokens, the same latency: only the error rules regress). Returns the moment
    to check at: after that minute is complete."""
    t = minute_ago()
    begin_stage(flag, t, rollout)
    feed(calls=40, failures=40, at=t + timedelta(minutes=1), tokens=400)
    feed(calls=40, mode="single", at=t + timedelta(minutes=1), tokens=800)
    return t + timedelta(minutes=3)


def fire(flag: Flag, *, rollout: int = 20) -> Alert:
    """Open the error-rate alert of the flag (every Patch Mode call failing), rolling it back from `rollout`."""
    alert_services.check_flag(flag.key, now=failing_stage(flag, rollout))
    return Alert.objects.get(flag=flag, rule__name=ERROR_RULE)


def only(alert: Alert, channel: str, event: str = "firing") -> Notification:
    return Notification.objects.get(alert=alert, channel=channel, event=event)


@pytest.fixture
def webhook_only(settings):
    def configure(url: str):
        settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], url
        return settings

    return configure


# --- webhook --------------------------------------------------------------------------------------------


def test_the_webhook_receives_a_slack_compatible_json_body_with_text(flag, webhook, webhook_only):
    server, url = webhook()
    webhook_only(url)
    alert = fire(flag, rollout=80)
    notification = only(alert, "webhook")
    assert notification.status == NotificationStatus.PENDING and notification.attempts == 0
    notify.send(notification.pk)
    (request,) = server.received
    assert request["path"] == "/hooks/alerts" and request["content_type"] == "application/json"
    body = request["body"]
    assert isinstance(body["text"], str)
    assert "[CRITICAL] patch_mode_enabled: Patch Mode error rate above 5% firing" in body["text"]
    assert alert.message in body["text"]
    assert "Actions: rollout reduced from 80.00% to 0%" in body["text"]
    assert body["alert"] == {"id": alert.pk, "event": "firing", "flag": "patch_mode_enabled", "rule": ERROR_RULE,
                             "severity": "critical", "value": str(alert.value)}
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and notification.attempts == 1
    assert notification.sent_at is not None and notification.last_error == ""


def test_a_resolved_notification_says_resolved(flag, webhook, webhook_only):
    server, url = webhook()
    webhook_only(url)
    alert = fire(flag)
    t = alert.last_checked_at  # the rollback began a new stage then: healthy calls in it resolve the alert
    feed(calls=300, at=t + timedelta(minutes=20), tokens=400)
    feed(calls=300, mode="single", at=t + timedelta(minutes=20), tokens=800)
    alert_services.check_flag(flag.key, now=t + timedelta(minutes=21))
    alert.refresh_from_db()
    assert alert.state == "resolved"
    notify.send(only(alert, "webhook", "resolved").pk)
    (request,) = server.received
    assert request["body"]["alert"]["event"] == "resolved"
    first_line = request["body"]["text"].splitlines()[0]
    assert first_line.endswith("resolved") and ":white_check_mark:" in first_line


def test_a_webhook_answering_500_marks_the_notification_failed_and_raises_temporary_failure(
        flag, webhook, webhook_only):
    server, url = webhook(status=500)
    webhook_only(url)
    notification = only(fire(flag), "webhook")
    with pytest.raises(notify.TemporaryFailure):
        notify.send(notification.pk)
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED and notification.attempts == 1
    assert "500" in notification.last_error and notification.sent_at is None
    assert len(server.received) == 1

    with pytest.raises(notify.TemporaryFailure):
        notify.send(notification.pk)
    notification.refresh_from_db()
    assert notification.attempts == 2 and notification.status == NotificationStatus.FAILED


def test_a_failed_notification_is_sent_when_the_webhook_recovers(flag, webhook, webhook_only):
    server, url = webhook(status=503)
    webhook_only(url)
    notification = only(fire(flag), "webhook")
    with pytest.raises(notify.TemporaryFailure):
        notify.send(notification.pk)
    server.status = 200  # type: ignore[attr-defined]
    notify.send(notification.pk)
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and notification.attempts == 2
    assert notification.last_error == "" and len(server.received) == 2


def test_a_closed_port_marks_the_notification_failed(flag, webhook_only):
    webhook_only(closed_port_url())
    notification = only(fire(flag), "webhook")
    with pytest.raises(notify.TemporaryFailure) as caught:
        notify.send(notification.pk)
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED and notification.attempts == 1
    assert "URLError" in notification.last_error and str(caught.value) == notification.last_error


def test_a_webhook_slower_than_the_timeout_marks_the_notification_failed(flag, webhook, webhook_only, settings):
    _server, url = webhook(delay=1.0)
    webhook_only(url)
    settings.ALERT_WEBHOOK_TIMEOUT = 0.2
    notification = only(fire(flag), "webhook")
    started = time.monotonic()
    with pytest.raises(notify.TemporaryFailure):
        notify.send(notification.pk)
    assert time.monotonic() - started < 0.9
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED and "timed out" in notification.last_error.lower()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/hook", "127.0.0.1:8000/hook"])
def test_a_webhook_url_that_is_not_http_is_refused(flag, webhook_only, url):
    webhook_only(url)
    notification = only(fire(flag), "webhook")
    with pytest.raises(notify.TemporaryFailure):
        notify.send(notification.pk)
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED
    assert "must be an http(s) URL" in notification.last_error


def test_a_sent_webhook_notification_is_not_sent_again(flag, webhook, webhook_only):
    server, url = webhook()
    webhook_only(url)
    notification = only(fire(flag), "webhook")
    notify.send(notification.pk)
    notification.refresh_from_db()
    sent_at = notification.sent_at
    notify.send(notification.pk)
    notification.refresh_from_db()
    assert len(server.received) == 1
    assert notification.attempts == 1 and notification.sent_at == sent_at


# --- email ----------------------------------------------------------------------------------------------


def test_email_goes_to_every_address_in_alert_emails(flag, settings):
    settings.ALERT_EMAILS = ["ops@example.com", "oncall@example.com"]
    settings.ALERT_WEBHOOK_URL = ""
    alert = fire(flag, rollout=80)
    notification = only(alert, "email")
    notify.send(notification.pk)
    (message,) = mail.outbox
    assert message.to == ["ops@example.com", "oncall@example.com"]
    assert message.subject.endswith("[CRITICAL] patch_mode_enabled: Patch Mode error rate above 5% firing")
    assert alert.message in message.body and "Actions: rollout reduced from 80.00% to 0%" in message.body
    assert message.from_email == settings.DEFAULT_FROM_EMAIL
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and notification.attempts == 1


def test_a_sent_email_notification_is_not_sent_again(flag, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    notification = only(fire(flag), "email")
    notify.send(notification.pk)
    notify.send(notification.pk)
    assert len(mail.outbox) == 1
    notification.refresh_from_db()
    assert notification.attempts == 1


# --- through Celery (eager) -------------------------------------------------------------------------------


def test_a_check_delivers_its_notifications_after_commit_through_the_celery_task(
        flag, webhook, settings, django_capture_on_commit_callbacks):
    server, url = webhook()
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], url
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # Fires the error-rate and the error-rate-delta rules; the success-rate rule is covered by the error-rate
    # rule and opens no episode of its own.
    now = failing_stage(flag)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        alert_services.check_flag(flag.key, now=now)
    assert server.received == [] and mail.outbox == []  # nothing goes out before the check commits
    for callback in callbacks:
        callback()
    rules = sorted(request["body"]["alert"]["rule"] for request in server.received)
    assert rules == sorted([ERROR_RULE, DELTA_RULE])
    assert sorted(m.subject.rsplit(": ", 1)[1] for m in mail.outbox) == sorted([
        f"{ERROR_RULE} firing", f"{DELTA_RULE} firing"])
    assert not Alert.objects.filter(rule__name=SUCCESS_RULE).exists()
    assert set(Notification.objects.values_list("status", flat=True)) == {NotificationStatus.SENT}
    assert Notification.objects.count() == 4


def test_the_task_retries_a_failing_webhook_then_gives_up_failed(flag, webhook, webhook_only, settings):
    server, url = webhook(status=500)
    webhook_only(url)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    notification = only(fire(flag), "webhook")
    result = tasks.send_notification.apply(args=(notification.pk,))
    assert result.failed() and isinstance(result.result, notify.TemporaryFailure)
    notification.refresh_from_db()
    expected = 1 + tasks.send_notification.max_retries
    assert notification.attempts == expected and len(server.received) == expected
    assert notification.status == NotificationStatus.FAILED


# --- locking ------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sending_a_notification_while_a_check_of_its_flag_runs_does_not_deadlock(flag, settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://...")
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    monkeypatch.setattr(alert_services, "_enqueue", lambda pk: None)  # the test sends by hand below
    alert = fire(flag)
    notification = only(alert, "email")
    flag_locked, sent, errors = threading.Event(), threading.Event(), []

    def check() -> None:
        """The beat's check of the same flag: holds the flag's row lock while it measures, then updates the
        open alert."""
        try:
            with transaction.atomic():
                Flag.objects.select_for_update().get(pk=flag.pk)
                flag_locked.set()
                wait_for_a_blocked_lock(unless=sent)
                alert_services.check_flag(flag.key, now=alert.last_checked_at + timedelta(minutes=1))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def send() -> None:
        try:
            flag_locked.wait(timeout=10)
            notify.send(notification.pk)
        except Exception as exc:
            errors.append(exc)
        finally:
            sent.set()
            connections.close_all()

    threads = [threading.Thread(target=check), threading.Thread(target=send)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and len(mail.outbox) == 1


def wait_for_a_blocked_lock(*, unless: threading.Event, timeout: float = 10.0) -> None:
    """Until another session waits for a lock (the sender, on the flag row) or `unless` is set (it finished)."""
    deadline = time.monotonic() + timeout
    watcher = connections.create_connection("default")
    try:
        with watcher.cursor() as cursor:
            while time.monotonic() < deadline and not unless.is_set():
                cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                if cursor.fetchone()[0]:
                    return
                time.sleep(0.02)
    finally:
        watcher.close()


# --- the outbox: what could not be queued or sent is flushed by beat --------------------------------------


@pytest.fixture
def refused_broker(monkeypatch):
    """Every enqueue of the send task fails as it does when Redis refuses the connection."""
    from kombu.exceptions import OperationalError

    tried: list[tuple] = []

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        tried.append(args)
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.send_notification, "apply_async", refuse)
    return tried


def one_alert(flag: Flag) -> Flag:
    """Only the error-rate rule fires (the comparative one is off): one notification per channel."""
    from alerts.models import AlertRule

    assert AlertRule.objects.filter(flag=flag, metric="error_rate_delta").update(enabled=False) == 1
    return flag


def fire_unqueued(flag: Flag, django_capture_on_commit_callbacks) -> Notification:
    """Fire the error-rate alert with the broker refusing; its callbacks run as after a real commit."""
    with django_capture_on_commit_callbacks(execute=True):
        alert = fire(one_alert(flag))
    assert Notification.objects.count() == 1
    return only(alert, "webhook")


def later(notification: Notification) -> datetime:
    """Just after the notification's grace period (or back-off) is over, in real time."""
    notification.refresh_from_db()
    return notification.next_attempt_at + timedelta(seconds=1)


def test_a_notification_the_broker_refused_is_sent_by_the_flush_after_the_grace_period_once(
        flag, webhook, webhook_only, refused_broker, django_capture_on_commit_callbacks, settings):
    from django.utils import timezone

    server, url = webhook()
    webhook_only(url)
    before = timezone.now()
    notification = fire_unqueued(flag, django_capture_on_commit_callbacks)
    assert len(refused_broker) == 1  # the check did try to enqueue it after commit
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.PENDING and notification.attempts == 0
    assert "not queued" in notification.last_error and "Connection refused" in notification.last_error
    # The grace period runs in real time from when the row was written, not from the check's (past) time.
    assert notification.created_at < before - timedelta(hours=2)
    assert notification.next_attempt_at - notification.queued_at == notify.grace() == timedelta(minutes=2)
    assert before <= notification.queued_at <= timezone.now()

    assert notify.flush() == {}  # still within the grace period: the task may yet be on its way
    assert notify.flush(now=notification.next_attempt_at - timedelta(seconds=1)) == {}
    assert server.received == []

    assert notify.flush(now=later(notification)) == {"sent": 1}
    (request,) = server.received
    assert request["body"]["alert"]["id"] == notification.alert_id and request["body"]["alert"]["event"] == "firing"
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and notification.attempts == 1
    assert notification.last_error == "" and notification.sent_at is not None and notification.next_attempt_at is None
    assert notify.flush(now=timezone.now() + timedelta(days=3)) == {}
    assert len(server.received) == 1
    # Beat runs it: the task is scheduled, and the worker runs it (here directly; nothing is due any more).
    (entry,) = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "alerts.flush_notifications"]
    assert entry["schedule"] == settings.ALERT_CHECK_INTERVAL
    tasks.flush_notifications()
    assert len(server.received) == 1


def test_the_beat_task_sends_a_pending_notification_once_its_grace_period_is_over(
        flag, webhook, webhook_only, refused_broker, django_capture_on_commit_callbacks):
    server, url = webhook()
    webhook_only(url)
    notification = fire_unqueued(flag, django_capture_on_commit_callbacks)
    tasks.flush_notifications()
    assert server.received == []
    Notification.objects.filter(pk=notification.pk).update(  # two minutes and a second have passed
        queued_at=notification.queued_at - timedelta(seconds=121),
        next_attempt_at=notification.next_attempt_at - timedelta(seconds=121))
    tasks.flush_notifications()
    assert len(server.received) == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT


def test_an_endpoint_that_keeps_failing_is_given_up_after_the_maximum_attempts_and_never_tried_again(
        flag, webhook, webhook_only, refused_broker, django_capture_on_commit_callbacks, settings):
    from django.utils import timezone

    server, url = webhook(status=500)
    webhook_only(url)
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    notification = fire_unqueued(flag, django_capture_on_commit_callbacks)

    at = later(notification)
    assert notify.flush(now=at) == {"failed": 1}
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED and notification.attempts == 1
    assert notification.last_error == "HTTPError: HTTP Error 500: Internal Server Error"
    assert notification.next_attempt_at == at + timedelta(minutes=2)  # the back-off after one failure
    assert notify.flush(now=at + timedelta(minutes=1)) == {}  # not before its back-off is over
    assert len(server.received) == 1

    at = later(notification)
    assert notify.flush(now=at) == {"failed": 1}
    notification.refresh_from_db()
    assert notification.attempts == 2 and notification.next_attempt_at == at + timedelta(minutes=4)  # doubled

    assert notify.flush(now=later(notification)) == {"given_up": 1}
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED and notification.attempts == 3
    assert notification.next_attempt_at is None and notification.sent_at is None
    assert notification.last_error == ("gave up after 3 attempts (NOTIFICATION_MAX_ATTEMPTS); "
                                       "last error: HTTPError: HTTP Error 500: Internal Server Error")
    assert len(server.received) == 3

    server.status = 200  # type: ignore[attr-defined]
    assert notify.flush(now=timezone.now() + timedelta(days=30)) == {}
    notify.send(notification.pk)  # a stale task: given up means given up
    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert tasks.send_notification.apply(args=(notification.pk,)).successful()
    notification.refresh_from_db()
    assert len(server.received) == 3 and notification.attempts == 3
    assert notification.status == NotificationStatus.FAILED and notification.last_error.startswith("gave up")


def test_a_notification_that_could_not_go_out_for_a_day_is_given_up_unsent(
        flag, webhook, webhook_only, refused_broker, django_capture_on_commit_callbacks):
    server, url = webhook()
    webhook_only(url)
    notification = fire_unqueued(flag, django_capture_on_commit_callbacks)
    Notification.objects.filter(pk=notification.pk).update(  # e.g. the workers were down for a day
        queued_at=notification.queued_at - timedelta(hours=25))
    assert notify.flush(now=later(notification)) == {"given_up": 1}
    notification.refresh_from_db()
    assert server.received == [] and notification.attempts == 0
    assert notification.status == NotificationStatus.FAILED and notification.next_attempt_at is None
    assert notification.last_error.startswith(
        "gave up after 25 h since it was queued (NOTIFICATION_MAX_AGE_SECONDS), 0 attempts; last error: not queued")


def test_the_flush_takes_over_when_the_tasks_retries_are_spent(flag, webhook, webhook_only, settings):
    server, url = webhook(status=500)
    webhook_only(url)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    notification = only(fire(one_alert(flag)), "webhook")
    assert tasks.send_notification.apply(args=(notification.pk,)).failed()
    notification.refresh_from_db()
    attempts = 1 + tasks.send_notification.max_retries
    assert notification.attempts == attempts and notification.status == NotificationStatus.FAILED
    assert notification.next_attempt_at is not None  # not given up: the outbox has it
    server.status = 200  # type: ignore[attr-defined]
    assert notify.flush(now=later(notification)) == {"sent": 1}
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and notification.attempts == attempts + 1
    assert len(server.received) == attempts + 1


def test_a_sent_notification_is_never_sent_again_by_the_flush(
        flag, webhook, webhook_only, settings, django_capture_on_commit_callbacks):
    from django.utils import timezone

    server, url = webhook()
    webhook_only(url)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    with django_capture_on_commit_callbacks(execute=True):
        notification = only(fire(one_alert(flag)), "webhook")
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and len(server.received) == 1
    assert notification.next_attempt_at is None
    for days in (0, 1, 30):
        assert notify.flush(now=timezone.now() + timedelta(days=days, minutes=3)) == {}
    # Even with a due time left on it by mistake, a sent row is not due.
    Notification.objects.filter(pk=notification.pk).update(next_attempt_at=timezone.now() - timedelta(hours=1))
    assert notify.flush() == {}
    assert len(server.received) == 1


def test_send_again_in_the_admin_restarts_a_given_up_notification_and_the_flush_sends_it(
        flag, webhook, webhook_only, refused_broker, django_capture_on_commit_callbacks, settings, admin_client):
    server, url = webhook(status=500)
    webhook_only(url)
    settings.NOTIFICATION_MAX_ATTEMPTS = 1
    notification = fire_unqueued(flag, django_capture_on_commit_callbacks)
    assert notify.flush(now=later(notification)) == {"given_up": 1}
    page = admin_client.get("/admin/alerts/notification/?status__exact=failed").content.decode()
    assert "gave up after 1 attempts (NOTIFICATION_MAX_ATTEMPTS)" in page

    server.status = 200  # type: ignore[attr-defined]
    response = admin_client.post("/admin/alerts/notification/", {
        "action": "retry", "_selected_action": [notification.pk]}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    assert "Queued 0 notification(s) again." in shown
    assert any("1 notification(s) could not be queued" in m for m in shown)  # the broker still refuses
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.PENDING and notification.attempts == 0
    assert notification.last_error.startswith("not queued")
    assert len(server.received) == 1
    assert notify.flush(now=later(notification)) == {"sent": 1}
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and len(server.received) == 2


@pytest.mark.django_db(transaction=True)
def test_two_flushes_at_once_send_a_notification_once(flag, webhook, webhook_only, refused_broker,
                                                     django_capture_on_commit_callbacks):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://...")
    server, url = webhook(delay=0.5)
    webhook_only(url)
    notification = fire_unqueued(flag, django_capture_on_commit_callbacks)
    at = later(notification)
    barrier = threading.Barrier(3)
    outcomes: list[dict] = []
    errors: list[Exception] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(notify.flush(now=at))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(outcomes) == 3
    assert len(server.received) == 1
    assert outcomes.count({"sent": 1}) == 1
    # The others found it locked (or, when they looked after the first had committed, no longer due).
    assert all(o in ({"skipped": 1}, {}) for o in outcomes if o != {"sent": 1})
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and notification.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_flush_skips_a_notification_being_sent_and_the_task_waits_then_does_not_resend(
        flag, webhook, webhook_only, refused_broker, django_capture_on_commit_callbacks):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://...")
    server, url = webhook(delay=1.5)
    webhook_only(url)
    notification = fire_unqueued(flag, django_capture_on_commit_callbacks)
    at = later(notification)
    results: dict[str, object] = {}
    errors: list[Exception] = []

    def in_thread(name: str, call) -> threading.Thread:  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                results[name] = call()
            except Exception as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    first = in_thread("first", lambda: notify.flush(now=at))
    deadline = time.monotonic() + 10
    while not server.received and time.monotonic() < deadline:  # the first flush is sending, row locked
        time.sleep(0.01)
    assert len(server.received) == 1
    started = time.monotonic()
    assert notify.flush(now=at) == {"skipped": 1}  # SKIP LOCKED: it does not wait for the first one
    assert time.monotonic() - started < 1.0
    task = in_thread("task", lambda: notify.send(notification.pk))  # the normal task, late: waits for the lock
    first.join(timeout=30)
    task.join(timeout=30)
    assert errors == [] and results == {"first": {"sent": 1}, "task": None}
    assert len(server.received) == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT and notification.attempts == 1
