"""GET /metrics: Prometheus text format, what it counts, its token, and its sums across gunicorn workers."""

from __future__ import annotations

import os
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring import record

pytestmark = pytest.mark.django_db(transaction=True)

FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client, **headers) -> str:  # type: ignore[no-untyped-def]
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


@pytest.fixture
def keys(make_key, flag) -> dict[str, str]:
    return {"ingest": make_key("ingester", "ingest"), "evaluate": make_key("svc", "evaluate")}


def ofrep(client, token: str, key: str = FLAG, user: str = "u1"):  # type: ignore[no-untyped-def]
    return client.post(f"/ofrep/v1/evaluate/flags/{key}", {"context": {"targetingKey": user}},
                       content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")


def test_evaluations_are_counted_by_flag_and_reason_and_unknown_keys_never_become_labels(client, keys):
    before = scrape(client)
    for user in ("a", "b", "c"):
        assert ofrep(client, keys["evaluate"], user=user).status_code == 200
    assert ofrep(client, keys["evaluate"], key="made-up-by-a-caller").status_code == 404
    bulk = client.post("/api/v1/evaluate", {"user_ids": ["x", "y"], "flags": [FLAG]},
                       content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {keys['evaluate']}")
    assert bulk.status_code == 200
    after = scrape(client)
    name = "rolloutadmin_evaluations_total"
    # The flag is off: every decision says DISABLED.
    assert value(after, name, flag=FLAG, reason="DISABLED") - value(before, name, flag=FLAG, reason="DISABLED") == 5
    assert value(after, name, flag="(unknown)", reason="FLAG_NOT_FOUND") - value(
        before, name, flag="(unknown)", reason="FLAG_NOT_FOUND") == 1
    assert "made-up-by-a-caller" not in after


def test_ingested_records_are_counted_by_mode_once_committed(client, keys):
    before = scrape(client)
    batch = {"records": [record(user_id="u1", mode="patch"), record(user_id="u2", mode="patch"),
                         record(user_id="u3", mode="single")]}
    response = client.post("/api/v1/executions", batch, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {keys['ingest']}")
    assert response.status_code == 200, response.content
    bad = client.post("/api/v1/executions", {"records": [{"mode": "nonsense"}]}, content_type="application/json",
                      HTTP_AUTHORIZATION=f"Bearer {keys['ingest']}")
    assert bad.status_code == 400
    after = scrape(client)
    name = "rolloutadmin_ingested_records_total"
    assert value(after, name, mode="patch") - value(before, name, mode="patch") == 2
    assert value(after, name, mode="single") - value(before, name, mode="single") == 1


def test_the_database_state_is_read_at_scrape_time(client, flag):
    from alerts.models import Alert, AlertRule, AlertState, Notification, NotificationStatus, Severity

    rule = AlertRule.objects.filter(flag=flag).first()
    alert = Alert.objects.create(flag=flag, rule=rule, state=AlertState.FIRING, severity=Severity.CRITICAL,
                                 value=9, message="test")
    Notification.objects.create(alert=alert, event="firing", channel="webhook", status=NotificationStatus.FAILED,
                                last_error="gave up")
    text = scrape(client)
    assert value(text, "rolloutadmin_database_up") == 1
    assert value(text, "rolloutadmin_alerts_open", severity="critical") == 1
    assert value(text, "rolloutadmin_alerts_open", severity="warning") == 0
    assert value(text, "rolloutadmin_notifications_failed") == 1


def test_with_the_database_down_the_scrape_still_answers_and_says_so(client, flag):
    from tests.test_outage import refused

    with refused():
        response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert value(text, "rolloutadmin_database_up") == 0
    assert "rolloutadmin_alerts_open" not in text  # unknown, not zero


def test_a_token_is_required_when_set_and_compared_exactly(client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token-longer").status_code == 401
    assert "rolloutadmin_database_up" in scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert client.post("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 405


def test_plan_transitions_and_alert_checks_are_counted(client, flag, actor):
    from alerts import plans, tasks

    before = scrape(client)
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (50, 60)])
    plans.plan_start(plan=plan, actor=actor)
    plans.plan_pause(plan=plan, actor=actor)
    tasks.check_alerts()
    after = scrape(client)
    for transition in ("started", "paused"):
        name = "rolloutadmin_plan_transitions_total"
        assert value(after, name, transition=transition) - value(before, name, transition=transition) == 1
    assert value(after, "rolloutadmin_alert_checks_total", result="ok") - value(
        before, "rolloutadmin_alert_checks_total", result="ok") == 1
    assert value(after, "rolloutadmin_alert_check_seconds_count") - value(
        before, "rolloutadmin_alert_check_seconds_count") == 1


def test_a_rolled_back_plan_change_is_not_counted(client, flag, actor):
    from django.core.exceptions import ValidationError

    from alerts import plans

    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60)])
    before = scrape(client)
    with pytest.raises(ValidationError):
        plans.plan_pause(plan=plan, actor=actor)  # a draft cannot pause: nothing happens, nothing counted
    assert value(scrape(client), "rolloutadmin_plan_transitions_total", transition="paused") == value(
        before, "rolloutadmin_plan_transitions_total", transition="paused")


# --- across gunicorn workers ----------------------------------------------------------------------------


def _raw(server, path: str, token: str = "") -> tuple[int, str]:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    request = urllib.request.Request(server.url + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_under_gunicorn_every_scrape_sums_all_workers(servers, keys):
    server = servers(GUNICORN_WORKERS="3", METRICS_TOKEN="scrape-me")
    assert _raw(server, "/metrics")[0] == 401
    count = 60
    for i in range(count):
        assert server.request("POST", OFREP, {"context": {"targetingKey": f"u{i}"}}, keys["evaluate"])[0] == 200
    log = server.log.read_text()
    pids = set(re.findall(r"Booting worker with pid: (\d+)", log))
    assert len(pids) == 3
    totals = set()
    for _ in range(6):  # whichever worker answers the scrape, the sum is the same
        status, text = _raw(server, "/metrics", "scrape-me")
        assert status == 200
        totals.add(value(text, "rolloutadmin_evaluations_total", flag=FLAG, reason="DISABLED"))
        assert value(text, "rolloutadmin_evaluation_seconds_count", api="ofrep") == count
        assert value(text, "rolloutadmin_snapshot_stale") == 0
        assert value(text, "rolloutadmin_database_up") == 1
    assert totals == {float(count)}


def test_at_start_only_the_files_of_gone_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from rolloutadmin.metric_files import remove_gone

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(gone.stdout), os.getpid()
    for pid in (dead_pid, live_pid):
        for name in (f"counter_{pid}.db", f"histogram_{pid}.db", f"gauge_livemin_{pid}.db"):
            (tmp_path / name).write_bytes(b"x")
    (tmp_path / "unrelated.txt").write_text("kept")
    assert remove_gone(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{live_pid}.db", f"histogram_{live_pid}.db", f"gauge_livemin_{live_pid}.db", "unrelated.txt"])
