"""End to end with a real Celery worker and beat (processes), on whichever broker this run uses: kombu's
file broker on the embedded defaults, Redis when REDIS_URL is set. Failing Patch Mode calls go in; within
two beat periods the alert is open, the rollout is rolled back to 0%, the audit entry exists and the webhook
got the notification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.utils import timezone

from alerts.models import Alert, Notification
from flags.models import AuditEntry, Flag
from monitoring import services as monitoring
from tests.alerts import begin_stage
from tests.live import ROOT, database_url, redis_url

pytestmark = pytest.mark.django_db(transaction=True)

BEAT_PERIOD = 3.0


class Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Webhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def webhook():
    Webhook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "rolloutadmin", *args], cwd=ROOT, env=env,
                            stdout=handle, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, step: float = 0.1) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    return None


@pytest.fixture
def flag(make_flag, monkeypatch):
    """patch_mode_enabled, created (and its creation audited) an hour ago: a rollout stage can then begin a
    few minutes before the wall clock that the beat's checks use."""
    created = timezone.now() - timedelta(hours=1)
    with monkeypatch.context() as patched:
        patched.setattr(timezone, "now", lambda: created)
        return make_flag()


def test_failing_patch_mode_is_caught_and_rolled_back_by_the_real_worker_and_beat(tmp_path, webhook, flag):
    # The guardrails judge the complete minutes of the flag's current stage: the stage at 80% began a few
    # minutes ago, and the failures below fall in a complete minute of it, so the next check sees them.
    at = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)
    begin_stage(flag, at, 80)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({
        "DATABASE_URL": database_url(), "DEBUG": "0", "SECRET_KEY": "e2e-" + "k" * 50,
        "ROLLOUTADMIN_VAR_DIR": str(tmp_path / "var"),  # worker and beat share this file broker
        "ALERT_CHECK_INTERVAL": str(BEAT_PERIOD), "ALERT_WEBHOOK_URL": webhook,
    })
    if redis_url():
        env["REDIS_URL"] = redis_url()
    (tmp_path / "var").mkdir()
    worker = start(["worker", "--pool=solo", "--loglevel=INFO", "--without-gossip", "--without-mingle"], env,
                   tmp_path / "worker.log")
    beat = None
    try:
        ready = wait_for(lambda: "ready." in (tmp_path / "worker.log").read_text(), timeout=60)
        assert ready is not None, (tmp_path / "worker.log").read_text()[-3000:]
        beat = start(["beat", "--loglevel=INFO", "-s", str(tmp_path / "beat-schedule")], env, tmp_path / "beat.log")
        time.sleep(1.0)  # let beat come up before the failures begin
        failed_at = (at + timedelta(minutes=1)).isoformat()
        monitoring.ingest([{"user_id": f"u{i}", "mode": "patch", "latency_ms": 200, "tokens_used": 800,
                            "success": False, "patch_count": 2, "failed_patches": 2, "occurred_at": failed_at}
                           for i in range(40)])
        injected = time.monotonic()

        def contained() -> bool:
            flag_now = Flag.objects.get(pk=flag.pk)
            return (flag_now.rollout_percentage == Decimal("0.00")
                    and Alert.objects.filter(flag=flag, rule__metric="error_rate", state="firing").exists()
                    and Notification.objects.filter(alert__flag=flag, event="firing", channel="webhook",
                                                    status="sent").exists()
                    and bool(Webhook.received))

        waited = wait_for(contained, timeout=6 * BEAT_PERIOD)
        logs = (tmp_path / "worker.log").read_text()[-4000:] + (tmp_path / "beat.log").read_text()[-2000:]
        assert waited is not None, logs
        elapsed = time.monotonic() - injected
        # Two beat periods, plus a moment for the notification task and this loop's polling.
        assert elapsed <= 2 * BEAT_PERIOD + 1.5, f"contained after {elapsed:.1f}s\n{logs}"
        entry = AuditEntry.objects.filter(flag=flag, source="alert").get()
        assert entry.actor.startswith("alert-rule:") and entry.after["rollout_percentage"] == "0.00"
        assert any("Patch Mode error rate above 5%" in body["text"] for body in Webhook.received)
    finally:
        for process in (beat, worker):
            if process is not None:
                process.terminate()
        for process in (beat, worker):
            if process is not None:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
