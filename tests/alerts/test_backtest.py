"""The backtest: `manage.py backtest_alerts` replays the alert check minute by minute over recorded traffic,
reports what it would have done, and changes nothing (flag, alerts, audit log, rules, plans)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from alerts import backtest, plans
from alerts import services as alert_services
from alerts.models import Alert, AlertRule, PlanState, RolloutPlan
from flags import services as flag_services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from monitoring import services as monitoring
from tests.alerts import begin_stage, minute_ago

pytestmark = pytest.mark.django_db

MIN = timedelta(minutes=1)
ERROR_RULE = "Patch Mode error rate above 5%"
DELTA_RULE = "Patch Mode errors more than 1 point above Single Mode"
_ids = itertools.count()


def feed_minutes(start: datetime, minutes: int, *, patch_failures: int, calls: int = 50) -> None:
    """`calls` Patch and `calls` Single Mode calls in each of `minutes` whole minutes from `start`; the first
    `patch_failures` Patch calls of every minute fail, Single Mode never fails. Patch uses half the tokens."""
    records: list[dict] = []
    for m in range(minutes):
        at = (start + m * MIN + timedelta(seconds=7)).isoformat()
        for mode, failures, tokens in (("patch", patch_failures, 500), ("single", 0, 1000)):
            for i in range(calls):
                records.append({"user_id": f"bt{next(_ids)}", "mode": mode, "success": i >= failures,
                                "latency_ms": 100.0, "tokens_used": tokens, "occurred_at": at})
    for offset in range(0, len(records), monitoring.MAX_RECORDS):
        monitoring.ingest(records[offset:offset + monitoring.MAX_RECORDS])


def stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def snapshot() -> dict:
    return {
        "flags": list(Flag.objects.order_by("pk").values()),
        "alerts": list(Alert.objects.order_by("pk").values()),
        "audit": list(AuditEntry.objects.order_by("pk").values_list("pk", "created_at", "action", "after")),
        "rules": list(AlertRule.objects.order_by("pk").values()),
        "plans": list(RolloutPlan.objects.order_by("pk").values()),
    }


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command("backtest_alerts", *args, stdout=out)
    return out.getvalue().splitlines()


@pytest.fixture
def recorded(flag):
    """A stage at 20% begun three hours ago, a healthy hour, then one minute of Patch calls half failing
    (minute 60 of the stage), so a check at the end of that minute (t + 61) is the first to see it."""
    t = minute_ago(3)
    begin_stage(flag, t, 20)
    feed_minutes(t, 60, patch_failures=0)
    feed_minutes(t + 60 * MIN, 1, patch_failures=25)
    return t


def rule(flag: Flag, metric: str) -> AlertRule:
    return AlertRule.objects.get(flag=flag, metric=metric)


def range_args(flag: Flag, t: datetime, *extra: str) -> list[str]:
    return ["--flag", flag.key, "--since", (t - 5 * MIN).isoformat(), "--until", (t + 65 * MIN).isoformat(),
            *extra]


def test_replay_reports_the_episode_and_rollback_at_the_right_minute_and_changes_nothing(flag, recorded):
    t = recorded
    # What really happened later: a check at t + 70 opened the episode and rolled the flag back to 0%.
    alert_services.check_flag(flag.key, now=t + 70 * MIN)
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0 and Alert.objects.filter(flag=flag).exists()
    before = snapshot()

    output = run(*range_args(flag, t))

    assert snapshot() == before
    opened = [line for line in output if "  opened  " in line]
    actions = [line for line in output if "  action  " in line]
    assert opened and all(line.startswith(stamp(t + 61 * MIN)) for line in opened)
    assert any(ERROR_RULE in line for line in opened)
    # The flag is at 0% now, but at 20% in the replayed range: it is rolled back in the replay.
    first_action = actions[0]
    assert first_action.startswith(stamp(t + 61 * MIN))
    assert ERROR_RULE in first_action and "rollout reduced from 20" in first_action and "to 0" in first_action
    # The stage's beginning was replayed where it was recorded.
    recorded_lines = [line for line in output if "  recorded  " in line]
    assert len(recorded_lines) == 1 and recorded_lines[0].startswith(stamp(t))
    assert "-> 20" in recorded_lines[0] and "test-suite" in recorded_lines[0]
    assert output[0].startswith(f"backtest of {flag.key}") and "70 checks" in output[0]
    assert output[-1].startswith("summary: ") and "1 recorded change(s)" in output[-1]


def test_the_flag_state_at_since_is_restored_for_the_replay(flag, recorded):
    t = recorded
    # A person turned the flag off after the range; it was at 20% during it.
    flag_services.flag_update(flag=flag, enabled=False, rollout_percentage=0, actor=Actor.system("someone"),
                              source=Source.CLI, now=t + 90 * MIN)
    before = snapshot()
    events = backtest.backtest(flag, t - 5 * MIN, t + 65 * MIN)
    assert snapshot() == before
    kinds = [(e.at, e.kind) for e in events]
    assert (t, "recorded") in kinds
    assert (t + 61 * MIN, "opened") in kinds and (t + 61 * MIN, "action") in kinds
    assert not [e for e in events if e.kind in ("opened", "action") and e.at < t + 61 * MIN]
    reductions = [e for e in events if e.kind == "action" and "rollout reduced" in e.text]
    assert len(reductions) == 1 and "from 20" in reductions[0].text
    flag.refresh_from_db()
    assert (flag.enabled, flag.rollout_percentage) == (False, Decimal(0))


def test_a_range_starting_after_the_stage_began_starts_from_the_flag_state_then(flag, recorded):
    t = recorded
    flag_services.flag_update(flag=flag, rollout_percentage=0, actor=Actor.system("someone"), source=Source.CLI,
                              now=t + 90 * MIN)
    events = backtest.backtest(flag, t + 30 * MIN, t + 62 * MIN)
    assert not [e for e in events if e.kind == "recorded"]
    assert [e.at for e in events if e.kind == "action" and "rollout reduced from 20" in e.text] == [t + 61 * MIN]


def test_a_running_plan_and_rules_are_untouched(flag, recorded):
    t = recorded
    plan = plans.plan_create(flag=flag, created_by="test")
    plans.plan_start(plan=plan, actor=Actor.system("test-suite"), confirmed=True)
    assert RolloutPlan.objects.get(pk=plan.pk).state == PlanState.RUNNING
    before = snapshot()
    output = run(*range_args(flag, t))
    assert any("  action  " in line for line in output)
    assert snapshot() == before
    assert RolloutPlan.objects.get(pk=plan.pk).state == PlanState.RUNNING


def test_set_overrides_change_the_replay_but_not_the_rules(flag, recorded):
    t = recorded
    error, delta = rule(flag, "error_rate"), rule(flag, "error_rate_delta")
    success = rule(flag, "success_rate")
    before = snapshot()

    baseline = run(*range_args(flag, t))
    assert any("  action  " in line for line in baseline)

    quiet = run(*range_args(flag, t, "--set", f"{error.pk}.threshold=60", "--set", f"{delta.pk}.enabled=false",
                            "--set", f"{success.pk}.enabled=false"))
    assert not [line for line in quiet if "  opened  " in line or "  action  " in line], quiet
    assert "0 episode(s) opened" in quiet[-1] and "0 action(s)" in quiet[-1]

    # Only the delta rule raised: the error-rate rule still rolls back at the same minute.
    only_delta = run(*range_args(flag, t, "--set", f"{delta.pk}.threshold=60"))
    opened = [line for line in only_delta if "  opened  " in line]
    assert opened and not any(DELTA_RULE in line for line in opened)
    assert any(line.startswith(stamp(t + 61 * MIN)) and ERROR_RULE in line for line in opened)

    assert snapshot() == before
    error.refresh_from_db()
    assert error.threshold == Decimal(5) and rule(flag, "error_rate_delta").enabled


def test_a_lower_threshold_fires_where_the_saved_rule_does_not(flag):
    """Patch Mode at 3% errors for an hour: the saved 5% rule stays quiet; a trial threshold of 1% fires."""
    t = minute_ago(3)
    begin_stage(flag, t, 20)
    feed_minutes(t, 40, patch_failures=3, calls=100)
    AlertRule.objects.filter(flag=flag).exclude(metric="error_rate").update(enabled=False)
    error = rule(flag, "error_rate")
    args = ["--flag", flag.key, "--since", t.isoformat(), "--until", (t + 40 * MIN).isoformat()]
    assert not [line for line in run(*args) if "  opened  " in line]
    tried = run(*args, "--set", f"{error.pk}.threshold=1")
    opened = [line for line in tried if "  opened  " in line]
    assert len(opened) == 1 and ERROR_RULE in opened[0]
    error.refresh_from_db()
    assert error.threshold == Decimal(5)


@pytest.mark.parametrize("case", [
    "unknown flag", "malformed since", "malformed until", "until before since", "more than 31 days",
    "set without =", "set unknown field", "set non-number threshold", "set rule of another flag",
    "set enabled not boolean",
])
def test_bad_input_is_one_line_command_error_and_changes_nothing(flag, recorded, make_flag, case):
    t = recorded
    error = rule(flag, "error_rate")
    other = make_flag("other_flag")
    since, until = (t - 5 * MIN).isoformat(), (t + 65 * MIN).isoformat()
    key, extra = flag.key, []
    match case:
        case "unknown flag":
            key = "no_such_flag"
        case "malformed since":
            since = "yesterday"
        case "malformed until":
            until = "2026-13-45T99:00"
        case "until before since":
            since, until = until, since
        case "more than 31 days":
            since = (t - timedelta(days=40)).isoformat()
        case "set without =":
            extra = ["--set", f"{error.pk}.threshold"]
        case "set unknown field":
            extra = ["--set", f"{error.pk}.name=bad"]
        case "set non-number threshold":
            extra = ["--set", f"{error.pk}.threshold=high"]
        case "set rule of another flag":
            extra = ["--set", f"{rule(other, 'error_rate').pk}.threshold=3"]
        case "set enabled not boolean":
            extra = ["--set", f"{error.pk}.enabled=maybe"]
    before = snapshot()
    with pytest.raises(CommandError) as caught:
        run("--flag", key, "--since", since, "--until", until, *extra)
    message = str(caught.value)
    assert message and "\n" not in message
    assert snapshot() == before
    expected_word = {"unknown flag": "no_such_flag", "malformed since": "since", "malformed until": "until",
                     "until before since": "until", "more than 31 days": "31",
                     "set without =": "RULE_ID.field=value", "set unknown field": "threshold",
                     "set non-number threshold": "number", "set rule of another flag": flag.key,
                     "set enabled not boolean": "true or false"}[case]
    assert expected_word in message


@pytest.mark.django_db(transaction=True)
def test_a_backtest_holds_no_lock_that_the_real_flag_or_other_changes_wait_for(flag, make_flag, monkeypatch):
    """While a replay that has already rolled its shadow back is still running, the real flag's slider and
    another flag's change (which moves the global config stamp) go through at once."""
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL (on SQLite any write transaction locks the whole file)")
    t = minute_ago(3)
    begin_stage(flag, t, 20)
    feed_minutes(t, 60, patch_failures=0)
    feed_minutes(t + 60 * MIN, 1, patch_failures=25)
    other = make_flag("other_flag")
    reached, release = threading.Event(), threading.Event()
    original = alert_services.check_all
    errors: list[Exception] = []
    events: list = []

    def paused_after_acting(**kwargs):  # type: ignore[no-untyped-def]
        results = original(**kwargs)
        if any(result.acted for result in results.get(kwargs.get("flag_key"), [])):
            reached.set()
            release.wait(30)
        return results

    def replay() -> None:
        try:
            events.extend(backtest.backtest(flag, t - 5 * MIN, t + 65 * MIN))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    monkeypatch.setattr(alert_services, "check_all", paused_after_acting)
    thread = threading.Thread(target=replay)
    thread.start()
    try:
        assert reached.wait(30), "the replay never acted"
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        flag_services.flag_update(flag=flag, rollout_percentage=5, actor=Actor.system("person"), source=Source.UI,
                                  reason="meanwhile")
        flag_services.flag_update(flag=other, rollout_percentage=7, actor=Actor.system("person"), source=Source.UI,
                                  reason="meanwhile")
    finally:
        release.set()
        thread.join(30)
    assert errors == []
    assert any(event.kind == "action" for event in events)
    flag.refresh_from_db()
    other.refresh_from_db()
    assert (flag.rollout_percentage, other.rollout_percentage) == (5, 7)
    assert not Flag.objects.filter(key__startswith="backtest-").exists()
