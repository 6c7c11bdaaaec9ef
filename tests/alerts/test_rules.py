"""Alert rules judged with confidence on the flag's current stage: the five defaults, episodes, remediation,
cooldown, dry runs, acknowledging, and the timestamps every check writes.

Each test begins a rollout stage in the past (begin_stage), feeds records in whole minutes after it and
checks at a `now` after those minutes: only complete minutes of the stage count.

The seed's defects each have a test here: a critical alert raised a 10% rollout to 50%; ratio rules
without baseline traffic compared against 0 and always fired; rates were strings; every check appended
to an unbounded history instead of one episode per rule; a raw average over a window fired on noise
(3 failures in 56 calls against a 5% rule).
"""

from __future__ import annotations

import itertools
import re
import threading
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection, connections
from django.utils import timezone

from alerts import guardrails, plans
from alerts import services as alert_services
from alerts.health import COVERED, RuleResult
from alerts.models import Action, Alert, AlertRule, AlertState, Notification, PlanState
from flags.actors import Actor
from flags.models import AuditEntry, Source
from monitoring import services as monitoring
from tests.alerts import begin_stage, by_metric, feed, minute_ago

pytestmark = pytest.mark.django_db

REGRESSING, HEALTHY, NOT_ENOUGH = guardrails.REGRESSING, guardrails.HEALTHY, guardrails.NOT_ENOUGH
ERROR_RULE = "Patch Mode error rate above 5%"
DELTA_RULE = "Patch Mode errors more than 1 point above Single Mode"
MIN = timedelta(minutes=1)
_users = itertools.count()


def error_rule(flag) -> AlertRule:  # type: ignore[no-untyped-def]
    return AlertRule.objects.get(flag=flag, metric="error_rate")


def set_action(flag, action: str, value: str | None = None, **fields) -> AlertRule:  # type: ignore[no-untyped-def]
    AlertRule.objects.filter(pk=error_rule(flag).pk).update(action=action, action_value=value, **fields)
    return error_rule(flag)


def reductions(actions: list[str]) -> list[tuple[Decimal, Decimal]]:
    """The (from, to) percentages of every "rollout reduced" action, however the numbers are written."""
    found = (re.fullmatch(r"rollout reduced from ([\d.]+)% to ([\d.]+)%", action) for action in actions)
    return [(Decimal(m[1]), Decimal(m[2])) for m in found if m]


def alert_audits(flag) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    return list(AuditEntry.objects.filter(flag=flag, source=Source.ALERT).order_by("id"))


def rollout(flag) -> Decimal:  # type: ignore[no-untyped-def]
    flag.refresh_from_db()
    return flag.rollout_percentage


def check(flag, now: datetime, **kwargs) -> dict[str, RuleResult]:  # type: ignore[no-untyped-def]
    return by_metric(alert_services.check_flag(flag.key, now=now, **kwargs))


def bad(at: datetime, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """The seed's Test 4: 10 calls, all failing."""
    feed(calls=10, failures=10, at=at, **kwargs)


def good(at: datetime, calls: int = 1000) -> None:
    """Enough successful treatment calls for the 5% rule to be shown healthy (0 in 1,000: below 1.2%)."""
    feed(calls=calls, at=at)


def feed_minutes(start: datetime, minutes: int, *, patch: int, patch_failures: int, single: int = 0,
                 single_failures: int = 0) -> None:
    """Whole minutes of both modes from `start`, in batches of at most 5,000 records (ingest's limit).
    Latency and tokens vary a little within each minute (80/120 ms; patch 400/600 tokens, single 900/1100)."""
    records: list[dict] = []

    def flush() -> None:
        if records:
            monitoring.ingest(records)
            records.clear()

    for m in range(minutes):
        at = (start + m * MIN + timedelta(seconds=7)).isoformat()
        for mode, calls, failures, tokens in (("patch", patch, patch_failures, 500), ("single", single,
                                                                                        single_failures, 1000)):
            if calls > monitoring.MAX_RECORDS - len(records):
                flush()
            for i in range(calls):
                records.append({"user_id": f"u{next(_users)}", "mode": mode, "success": i >= failures,
                                "latency_ms": 80.0 if i % 2 else 120.0,
                                "tokens_used": tokens + (100 if i % 2 else -100), "occurred_at": at})
    flush()


@pytest.fixture
def t():
    """A whole minute three hours back."""
    return minute_ago()


@pytest.fixture
def stage(flag, t):
    """The flag at 20% since `t`."""
    begin_stage(flag, t, 20)
    return t


@pytest.fixture
def emails(settings):
    """Notifications by email only, delivered at once (Celery eager) when on_commit callbacks run."""
    settings.ALERT_EMAILS = ["ops@example.com"]
    settings.ALERT_WEBHOOK_URL = ""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return settings


# --- the five default rules ---------------------------------------------------------------------------


def test_a_new_flag_gets_exactly_the_five_default_rules(make_flag):
    flag = make_flag("brand_new_flag")
    rules = list(AlertRule.objects.filter(flag=flag).order_by("id").values_list(
        "name", "metric", "comparison", "threshold", "severity", "action", "action_value", "enabled"))
    assert rules == [
        (ERROR_RULE, "error_rate", "gt", Decimal("5"), "critical", "rollback", None, True),
        ("Latency above 1.5x baseline", "latency_ratio", "gt", Decimal("1.5"), "warning", "notify", None, True),
        ("Token savings low (tokens above 0.8x baseline)", "tokens_ratio", "gt", Decimal("0.8"), "warning",
         "notify", None, True),
        ("Success rate below 95%", "success_rate", "lt", Decimal("95"), "warning", "notify", None, True),
        (DELTA_RULE, "error_rate_delta", "gt", Decimal("1"), "critical", "rollback", None, True),
    ]


def test_default_rules_use_the_model_defaults_for_alpha_cusum_limit_and_cooldown(flag):
    rows = set(AlertRule.objects.filter(flag=flag).values_list("alpha", "cusum_limit", "cooldown_minutes"))
    assert rows == {(Decimal("0.01"), None, 30)}


def test_ensure_default_rules_adds_nothing_to_a_flag_that_has_rules(flag):
    assert alert_services.ensure_default_rules(flag) == []
    assert AlertRule.objects.filter(flag=flag).count() == 5


def test_each_flag_gets_its_own_five_rules(make_flag):
    first, second = make_flag("first_flag"), make_flag("second_flag")
    assert AlertRule.objects.filter(flag=first).count() == 5
    assert AlertRule.objects.filter(flag=second).count() == 5
    assert AlertRule.objects.count() == 10


# --- confidence, not raw averages ---------------------------------------------------------------------


def test_3_failures_in_56_calls_is_not_enough_data_not_a_false_alarm(flag, stage):
    feed(calls=56, failures=3, at=stage + MIN)  # 5.4% > 5% as a raw average: the seed fired here
    results = check(flag, stage + 30 * MIN)
    error = results["error_rate"]
    assert error.state == NOT_ENOUGH
    assert error.value == pytest.approx(300 / 56)
    assert error.verdict.low < 5 < error.verdict.high
    assert error.verdict.calls_needed and error.verdict.calls_needed > 0
    assert re.search(r"not enough data yet, about [\d,]+ more calls needed", error.detail)
    assert results["success_rate"].state == NOT_ENOUGH
    assert error.actions == []
    assert Alert.objects.filter(flag=flag).count() == 0
    assert rollout(flag) == 20


def test_ten_calls_all_failing_fire_the_error_rate_rule_and_roll_back(flag, stage):  # the seed's Test 4
    bad(stage + MIN)
    results = check(flag, stage + 30 * MIN)
    error = results["error_rate"]
    assert error.state == REGRESSING
    assert error.value == pytest.approx(100.0) and error.verdict.low > 5
    assert "the whole interval is on the worse side" in error.detail
    assert error.actions[0] == "alert opened"
    assert reductions(error.actions) == [(20, 0)]
    (alert,) = Alert.objects.filter(flag=flag)
    assert alert.rule.name == ERROR_RULE and alert.state == AlertState.FIRING
    assert alert.value == Decimal("100") and alert.severity == "critical"
    assert rollout(flag) == 0


def test_a_small_clean_sample_is_not_enough_to_call_healthy(flag, stage):
    feed(calls=50, at=stage + MIN)  # 0 in 50: the interval still reaches above 5%
    result = check(flag, stage + 30 * MIN)["error_rate"]
    assert result.state == NOT_ENOUGH and result.verdict.high > 5
    feed(calls=950, at=stage + 2 * MIN)
    result = check(flag, stage + 30 * MIN)["error_rate"]
    assert result.state == HEALTHY and result.verdict.high < 5 and result.verdict.calls_needed is None


def test_a_stage_with_no_calls_is_not_enough_data_for_every_rule(flag, stage):
    results = alert_services.check_flag(flag.key, now=stage + 30 * MIN)
    assert [result.state for result in results] == [NOT_ENOUGH] * 5
    assert all(result.value is None for result in results)
    assert all("no calls yet" in result.detail for result in results)
    assert Alert.objects.filter(flag=flag).count() == 0


# --- the stage: only its complete minutes count -----------------------------------------------------------


def test_calls_before_the_stage_began_do_not_count(flag, t):
    begin_stage(flag, t - 10 * MIN, 10)
    bad(t - 5 * MIN)  # failures at the previous exposure
    begin_stage(flag, t, 20)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert result.state == NOT_ENOUGH and result.verdict.calls == 0 and result.value is None
    assert Alert.objects.filter(flag=flag).count() == 0
    assert rollout(flag) == 20
    # The same records, judged within the stage they belong to, fire.
    assert check(flag, t - MIN)["error_rate"].state == REGRESSING


def test_calls_in_the_minute_of_the_change_before_it_do_not_count(flag, t):
    bad(t)  # at t:00, in the same minute as the change at t:30
    begin_stage(flag, t + timedelta(seconds=30), 20)
    assert check(flag, t + 30 * MIN)["error_rate"].verdict.calls == 0
    bad(t + MIN)  # the first whole minute after the change counts
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert result.verdict.calls == 10 and result.state == REGRESSING


def test_calls_in_the_minute_of_now_do_not_count(flag, stage):
    bad(stage + 5 * MIN)
    now = stage + 5 * MIN + timedelta(seconds=50)
    result = check(flag, now)["error_rate"]
    assert result.state == NOT_ENOUGH and result.verdict.calls == 0
    assert Alert.objects.filter(flag=flag).count() == 0
    assert check(flag, stage + 6 * MIN)["error_rate"].state == REGRESSING


def test_a_change_after_now_does_not_start_the_stage_now_sees(flag, t):
    begin_stage(flag, t, 20)
    bad(t + MIN)
    begin_stage(flag, t + 40 * MIN, 30)  # later than the check below
    assert check(flag, t + 30 * MIN)["error_rate"].state == REGRESSING


def test_records_of_another_flag_do_not_count(make_flag, t):
    mine, other = make_flag("my_flag"), make_flag("other_flag")
    begin_stage(mine, t, 20)
    begin_stage(other, t, 20)
    bad(t + MIN, flag="other_flag")
    assert check(mine, t + 30 * MIN)["error_rate"].state == NOT_ENOUGH
    assert check(other, t + 30 * MIN)["error_rate"].state == REGRESSING


# --- rates and ratios are numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(("failures", "state"), [(10, HEALTHY), (40, NOT_ENOUGH), (60, NOT_ENOUGH),
                                                 (100, REGRESSING), (500, REGRESSING)])
def test_error_rates_are_compared_as_numbers_not_strings(flag, stage, failures, state):
    feed(calls=1000, failures=failures, at=stage + MIN)  # "10" < "5" as strings, 10 > 5 as numbers
    result = check(flag, stage + 30 * MIN)["error_rate"]
    assert isinstance(result.value, float)
    assert result.value == pytest.approx(failures / 10)
    assert result.state == state


def test_the_alert_stores_the_measured_value_as_a_decimal(flag, stage):
    feed(calls=40, failures=30, at=stage + MIN)  # 75% errors
    check(flag, stage + 30 * MIN)
    alert = Alert.objects.get(rule=error_rule(flag))
    assert isinstance(alert.value, Decimal) and alert.value == Decimal("75")
    assert alert.severity == "critical" and "75.00%" in alert.message


def test_a_slow_treatment_fires_the_latency_ratio_rule_with_the_ratio_as_value(flag, stage):
    for latency in (250, 350):
        feed(calls=100, at=stage + MIN, latency_ms=latency, tokens=500)
    for latency in (80, 120):
        feed(calls=100, mode="single", at=stage + MIN, latency_ms=latency, tokens=1000)
    results = check(flag, stage + 30 * MIN)
    latency = results["latency_ratio"]
    assert latency.state == REGRESSING and latency.verdict.low > 1.5
    assert latency.value == pytest.approx(((251 * 351) / (81 * 121)) ** 0.5)
    assert results["tokens_ratio"].state == HEALTHY and results["tokens_ratio"].value == pytest.approx(0.5)
    assert Alert.objects.get(flag=flag).rule.metric == "latency_ratio"
    assert rollout(flag) == 20  # a warning only notifies


def test_a_costly_treatment_fires_the_tokens_ratio_rule(flag, stage):
    for tokens in (850, 950):
        feed(calls=100, at=stage + MIN, tokens=tokens)
    for tokens in (950, 1050):
        feed(calls=100, mode="single", at=stage + MIN, tokens=tokens)
    result = check(flag, stage + 30 * MIN)["tokens_ratio"]
    assert result.state == REGRESSING and result.value == pytest.approx(0.9)


def test_a_treatment_well_within_the_ratios_is_healthy(flag, stage):
    feed_minutes(stage, 5, patch=100, patch_failures=0, single=100)
    results = check(flag, stage + 30 * MIN)
    assert results["latency_ratio"].state == HEALTHY and results["latency_ratio"].value == pytest.approx(1.0)
    assert results["tokens_ratio"].state == HEALTHY and results["tokens_ratio"].value == pytest.approx(0.5)
    assert Alert.objects.filter(flag=flag).count() == 0


# --- comparative rules need baseline data ---------------------------------------------------------------


def test_comparative_rules_without_baseline_calls_are_not_enough_data(flag, stage):
    feed(calls=500, failures=100, at=stage + MIN, latency_ms=5000, tokens=5000)  # bad, but nothing to compare
    results = check(flag, stage + 30 * MIN)
    for metric in ("latency_ratio", "tokens_ratio", "error_rate_delta"):
        assert results[metric].state == NOT_ENOUGH and results[metric].value is None
        assert results[metric].verdict.baseline_calls == 0
    assert "no baseline calls" in results["error_rate_delta"].detail
    assert results["error_rate"].state == REGRESSING
    assert set(Alert.objects.filter(flag=flag).values_list("rule__metric", flat=True)) == {"error_rate"}


def test_ratio_rules_with_too_few_baseline_calls_are_not_enough_data(flag, stage):
    for latency in (4000, 6000):
        feed(calls=50, at=stage + MIN, latency_ms=latency, tokens=5000)
    feed(calls=29, mode="single", at=stage + MIN, latency_ms=100, tokens=100)  # 30 needed for means
    results = check(flag, stage + 30 * MIN)
    for metric in ("latency_ratio", "tokens_ratio"):
        assert results[metric].state == NOT_ENOUGH and results[metric].value is None
        assert results[metric].verdict.calls_needed == 1
    feed(calls=1, mode="single", at=stage + MIN, latency_ms=110, tokens=110)
    assert check(flag, stage + 30 * MIN)["latency_ratio"].state == REGRESSING


def test_a_tokens_ratio_against_a_zero_token_baseline_is_not_enough_data(flag, stage):
    feed(calls=50, at=stage + MIN, tokens=500)
    feed(calls=50, mode="single", at=stage + MIN, tokens=0)
    result = check(flag, stage + 30 * MIN)["tokens_ratio"]
    assert result.state == NOT_ENOUGH and result.value is None
    assert "the baseline used no tokens" in result.detail


def test_the_error_rate_delta_rule_compares_against_single_mode(flag, stage):
    # 3% errors: under the 5% rule's threshold, but 3 points above a clean Single Mode.
    feed_minutes(stage, 10, patch=300, patch_failures=9, single=300)
    results = check(flag, stage + 30 * MIN)
    delta = results["error_rate_delta"]
    assert delta.state == REGRESSING and delta.value == pytest.approx(3.0)
    assert results["error_rate"].state != REGRESSING
    (alert,) = Alert.objects.filter(flag=flag)
    assert alert.rule.name == DELTA_RULE and alert.severity == "critical"
    assert rollout(flag) == 0


def test_the_error_rate_delta_rule_is_healthy_when_both_modes_fail_alike(flag, stage):
    feed_minutes(stage, 10, patch=1000, patch_failures=10, single=1000, single_failures=10)
    delta = check(flag, stage + 30 * MIN)["error_rate_delta"]
    assert delta.state == HEALTHY and delta.value == pytest.approx(0.0)
    assert Alert.objects.filter(flag=flag).count() == 0


def test_disabled_rules_are_not_checked(flag, stage):
    AlertRule.objects.filter(flag=flag).exclude(metric="error_rate").update(enabled=False)
    bad(stage + MIN)
    results = alert_services.check_flag(flag.key, now=stage + 30 * MIN)
    assert [result.rule.metric for result in results] == ["error_rate"]
    AlertRule.objects.filter(flag=flag).update(enabled=False)
    assert alert_services.check_flag(flag.key, now=stage + 31 * MIN) == []
    assert alert_services.check_all(now=stage + 31 * MIN) == {flag.key: []}


# --- one regression, one episode: the success rule is covered by the error rule ---------------------------


def test_the_success_rate_rule_never_opens_a_second_episode_while_the_error_rule_fires(flag, stage, emails):
    set_action(flag, Action.NOTIFY)  # keep the stage: every check below sees the same failures
    bad(stage + MIN)
    for minutes in (2, 3, 10):
        results = check(flag, stage + minutes * MIN)
        assert results["error_rate"].state == REGRESSING
        assert results["success_rate"].state == COVERED
        assert results["success_rate"].actions == []
        assert f"'{ERROR_RULE}'" in results["success_rate"].detail
    (alert,) = Alert.objects.filter(flag=flag)
    assert alert.rule.metric == "error_rate"
    assert Notification.objects.count() == 1


def test_without_a_covering_error_rule_the_success_rule_opens_its_own_episode(flag, stage):
    AlertRule.objects.filter(pk=error_rule(flag).pk).update(enabled=False)
    bad(stage + MIN)
    result = check(flag, stage + 30 * MIN)["success_rate"]
    assert result.state == REGRESSING and result.value == pytest.approx(0.0)
    assert "alert opened" in result.actions
    assert Alert.objects.get(flag=flag).rule.metric == "success_rate"


def test_an_error_rule_that_does_not_imply_the_success_rule_does_not_cover_it(flag, stage):
    # error > 5% does not imply success < 90% (error > 10%): only an error rule at or above 100 - X covers.
    AlertRule.objects.filter(flag=flag, metric="success_rate").update(threshold=Decimal("90"))
    bad(stage + MIN)
    results = check(flag, stage + 30 * MIN)
    assert results["success_rate"].state == REGRESSING
    assert set(Alert.objects.filter(flag=flag).values_list("rule__metric", flat=True)) == {"error_rate",
                                                                                          "success_rate"}


# --- remediation only ever reduces exposure -----------------------------------------------------------------


def test_the_default_critical_action_rolls_a_20_percent_rollout_back_to_0(flag, stage):
    bad(stage + MIN)
    now = stage + 30 * MIN
    result = check(flag, now)["error_rate"]
    assert rollout(flag) == 0 and flag.enabled is True
    assert reductions(result.actions) == [(20, 0)]
    (entry,) = alert_audits(flag)
    assert entry.actor.startswith(f"alert-rule:{result.rule.pk} ") and entry.actor_kind == "system"
    assert entry.reason.startswith(f"alert '{ERROR_RULE}'")
    assert entry.before["rollout_percentage"] == "20.00" and entry.after["rollout_percentage"] == "0.00"
    assert entry.created_at == now
    alert = Alert.objects.get(rule=result.rule)
    assert [reductions(step["what"]) for step in alert.actions_taken] == [[(20, 0)]]
    assert alert.actions_taken[0]["at"] == now.isoformat()


def test_a_critical_cap_at_50_on_a_10_percent_rollout_does_not_raise_it(flag, t):
    set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, 10)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert result.state == REGRESSING
    assert rollout(flag) == Decimal("10") and flag.enabled is True
    assert any("nothing to reduce" in action for action in result.actions)
    assert reductions(result.actions) == []
    assert alert_audits(flag) == []
    assert Alert.objects.get(rule=result.rule).actions_taken == []


@pytest.mark.parametrize(
    ("start", "expected"),
    [("0", "0"), ("10", "10"), ("49.99", "49.99"), ("50", "50"), ("50.01", "50"), ("80", "50"), ("100", "50")],
)
def test_the_cap_never_raises_the_rollout(flag, t, start, expected):
    set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, start)
    bad(t + MIN)
    alert_services.check_flag(flag.key, now=t + 30 * MIN)
    assert rollout(flag) == Decimal(expected)
    assert flag.rollout_percentage <= Decimal(start)
    assert len(alert_audits(flag)) == (1 if Decimal(start) > 50 else 0)


def test_a_cap_on_an_80_percent_rollout_caps_it_at_50_with_an_alert_audit_entry(flag, t):
    set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, 80)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert rollout(flag) == Decimal("50")
    assert reductions(result.actions) == [(80, 50)]
    (entry,) = alert_audits(flag)
    assert entry.before["rollout_percentage"] == "80.00" and entry.after["rollout_percentage"] == "50.00"


def test_a_disable_rule_turns_the_flag_off_and_leaves_the_percentage(flag, t):
    set_action(flag, Action.DISABLE)
    begin_stage(flag, t, 30)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert rollout(flag) == Decimal("30") and flag.enabled is False
    assert "flag disabled (kill switch)" in result.actions
    (entry,) = alert_audits(flag)
    assert (entry.action, entry.before["enabled"], entry.after["enabled"]) == ("disable", True, False)


def test_a_disable_rule_on_a_disabled_flag_does_nothing(flag, t):
    set_action(flag, Action.DISABLE)
    begin_stage(flag, t, 30, enabled=False)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert result.actions == ["alert opened", "flag already disabled"]
    assert alert_audits(flag) == []


def test_a_rollback_during_a_running_plan_steps_back_a_stage_and_pauses_it(flag, t):
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60), (50, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t - 60 * MIN)
    plans.plan_advance_now(plan=plan, actor=actor, now=t)  # 20% since t
    bad(t + MIN)
    now = t + 30 * MIN
    result = check(flag, now)["error_rate"]
    assert rollout(flag) == Decimal("10")
    assert reductions(result.actions) == [(20, 10)]
    assert any("stepped back to stage 1" in action for action in result.actions)
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage, plan.stage_started_at) == (PlanState.PAUSED, 0, now)
    (entry,) = alert_audits(flag)
    assert entry.created_at == now


def test_a_pause_plan_rule_pauses_the_plan_and_leaves_the_flag(flag, t):
    set_action(flag, Action.PAUSE_PLAN)
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN)["error_rate"]
    assert "rollout plan paused" in result.actions
    assert rollout(flag) == Decimal("10")
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED


def test_a_later_rule_sees_the_rollout_an_earlier_rule_left(flag, t):
    rule = set_action(flag, Action.CAP_ROLLOUT, "50")
    AlertRule.objects.create(flag=flag, name="roll back on errors", metric="error_rate", comparison="gt",
                             threshold=Decimal("10"), severity="critical", action=Action.ROLLBACK)
    begin_stage(flag, t, 80)
    bad(t + MIN)
    results = alert_services.check_flag(flag.key, now=t + 30 * MIN)
    actions = {result.rule.name: result.actions for result in results}
    assert reductions(actions[rule.name]) == [(80, 50)]
    assert reductions(actions["roll back on errors"]) == [(50, 0)]
    assert [(e.before["rollout_percentage"], e.after["rollout_percentage"]) for e in alert_audits(flag)] == [
        ("80.00", "50.00"), ("50.00", "0.00")]


# --- a step change is caught in minutes ---------------------------------------------------------------------


def test_a_step_from_1_to_10_percent_errors_after_an_hour_is_rolled_back_within_2_checks(flag, stage):
    # 60 healthy minutes at 20%: 100 patch calls (1% failing) and 400 single calls (1% failing) a minute.
    feed_minutes(stage, 60, patch=100, patch_failures=1, single=400, single_failures=4)
    for minute in range(1, 61):  # a check every minute: none raises a false alarm
        results = alert_services.check_all(now=stage + minute * MIN + timedelta(seconds=5))[flag.key]
        assert all(result.state != REGRESSING for result in results), minute
    assert Alert.objects.count() == 0 and rollout(flag) == 20
    # The step: patch errors go to 10% from minute 60.
    feed_minutes(stage + 60 * MIN, 2, patch=100, patch_failures=10, single=400, single_failures=4)
    rolled_back_at = None
    for minute in (61, 62):
        alert_services.check_all(now=stage + minute * MIN + timedelta(seconds=5))
        if rollout(flag) == 0:
            rolled_back_at = minute
            break
    assert rolled_back_at is not None, "still at 20% two checks after the step"
    assert {a.rule.severity for a in Alert.objects.filter(flag=flag)} == {"critical"}
    (entry,) = alert_audits(flag)
    assert entry.after["rollout_percentage"] == "0.00"


# --- one episode per rule, notifications on firing and resolving only -----------------------------------


def test_repeated_checks_while_regressing_keep_one_alert_and_notify_once(flag, stage, emails,
                                                                         django_capture_on_commit_callbacks):
    rule = set_action(flag, Action.NOTIFY)
    bad(stage + MIN)
    for minutes in (2, 3, 4):
        with django_capture_on_commit_callbacks(execute=True):
            check(flag, stage + minutes * MIN)
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None
    assert alert.opened_at == stage + 2 * MIN and alert.last_checked_at == stage + 4 * MIN
    assert list(Notification.objects.filter(alert=alert).values_list("event", "channel", "status")) == [
        ("firing", "email", "sent")]
    assert [m.to for m in mail.outbox if ERROR_RULE in m.subject] == [["ops@example.com"]]


def test_a_cleared_regression_resolves_the_alert_with_one_resolved_notification(flag, stage, emails,
                                                                              django_capture_on_commit_callbacks):
    rule = error_rule(flag)
    bad(stage + MIN)
    with django_capture_on_commit_callbacks(execute=True):
        check(flag, stage + 2 * MIN)  # rolled back: a new stage from here
    good(stage + 3 * MIN)
    for minutes in (10, 11):
        with django_capture_on_commit_callbacks(execute=True):
            results = check(flag, stage + minutes * MIN)
    assert results["error_rate"].state == HEALTHY and results["error_rate"].actions == []
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == stage + 10 * MIN
    assert alert.message.startswith("resolved: ")
    assert list(Notification.objects.filter(alert=alert).order_by("id").values_list("event", flat=True)) == [
        "firing", "resolved"]
    subjects = [m.subject for m in mail.outbox if ERROR_RULE in m.subject]
    assert len(subjects) == 2 and subjects[0].endswith("firing") and subjects[1].endswith("resolved")


def test_not_enough_data_does_not_resolve_an_open_alert(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)  # rolled back to 0%: the new stage has no calls
    later = stage + 30 * MIN
    result = check(flag, later)["error_rate"]
    assert result.state == NOT_ENOUGH and result.actions == []
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None and alert.last_checked_at == later
    assert not Notification.objects.filter(alert=alert, event="resolved").exists()


def test_healthy_with_recent_evidence_near_the_limit_keeps_the_alert_open_until_it_clears(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)  # opened and rolled back: a new stage from stage + 2 min
    feed_minutes(stage + 2 * MIN, 10, patch=500, patch_failures=0)
    feed(calls=5, failures=5, at=stage + 12 * MIN)  # CUSUM 5 ln 2.5 ~ 4.6: above half the limit of 6
    result = check(flag, stage + 13 * MIN)["error_rate"]
    assert result.state == HEALTHY
    assert result.verdict.cusum_limit / 2 < result.verdict.cusum <= result.verdict.cusum_limit
    assert "alert resolved" not in result.actions
    alert = Alert.objects.get(rule=rule)
    assert alert.state == AlertState.FIRING and alert.last_checked_at == stage + 13 * MIN
    feed(calls=500, at=stage + 13 * MIN)
    result = check(flag, stage + 14 * MIN)["error_rate"]
    assert result.state == HEALTHY and result.actions == ["alert resolved"]
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == stage + 14 * MIN


def test_a_later_regression_opens_a_new_episode(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    check(flag, stage + 10 * MIN)  # resolved
    begin_stage(flag, stage + 40 * MIN, 20)
    feed(calls=20, failures=10, at=stage + 41 * MIN)
    result = check(flag, stage + 42 * MIN)["error_rate"]
    assert "alert opened" in result.actions
    first, second = Alert.objects.filter(rule=rule).order_by("id")
    assert first.state == AlertState.RESOLVED
    assert second.state == AlertState.FIRING and second.value == Decimal("50")
    assert second.opened_at == stage + 42 * MIN
    assert Notification.objects.filter(alert=second, event="firing").count() == 1
    assert Notification.objects.filter(alert__rule=rule).count() == 3  # firing, resolved, firing


def test_without_alert_addresses_or_webhook_no_notification_is_made(flag, stage, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], ""
    bad(stage + MIN)
    check(flag, stage + 30 * MIN)
    assert Alert.objects.filter(flag=flag).exists()
    assert Notification.objects.count() == 0


def test_notifications_go_to_every_configured_channel(flag, stage, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], "http://127.0.0.1:9/hook"
    bad(stage + MIN)
    check(flag, stage + 30 * MIN)
    channels = Notification.objects.filter(alert__rule=error_rule(flag)).values_list("channel", flat=True)
    assert sorted(channels) == ["email", "webhook"]


# --- every time written is the check's now ------------------------------------------------------------------


def test_every_written_timestamp_is_the_checks_now(flag, stage, emails):
    opened = stage + 30 * MIN + timedelta(seconds=17, microseconds=250)
    bad(stage + MIN)
    alert_services.check_all(now=opened)
    alert = Alert.objects.get(rule=error_rule(flag))
    assert alert.opened_at == alert.last_checked_at == opened
    assert list(Notification.objects.filter(alert=alert).values_list("created_at", flat=True)) == [opened]
    (entry,) = alert_audits(flag)
    assert entry.created_at == opened

    resolved = stage + 50 * MIN + timedelta(seconds=41)
    good(stage + 31 * MIN)  # the first whole minute of the stage that began at `opened`
    alert_services.check_all(now=resolved)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED
    assert alert.resolved_at == alert.last_checked_at == resolved
    assert Notification.objects.get(alert=alert, event="resolved").created_at == resolved


def test_a_remediated_flag_and_the_plan_it_pauses_record_the_checks_now(flag, t):
    # The flag's updated_at and the paused plan's updated_at are the check's `now`, not the wall clock.
    set_action(flag, Action.CAP_ROLLOUT, "5")
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t)
    bad(t + MIN)
    now = t + 30 * MIN + timedelta(seconds=17)
    check(flag, now)
    assert rollout(flag) == 5
    plan.refresh_from_db()
    assert plan.state == PlanState.PAUSED
    (entry,) = alert_audits(flag)
    assert entry.created_at == now
    assert flag.updated_at == now
    assert plan.updated_at == now


# --- cooldown -----------------------------------------------------------------------------------------------


def test_within_the_cooldown_a_regressing_rule_takes_no_second_action(flag, stage):
    rule = set_action(flag, Action.ROLLBACK, cooldown_minutes=30)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    assert rollout(flag) == 0 and len(alert_audits(flag)) == 1

    begin_stage(flag, stage + 3 * MIN, 40)  # someone raises it again while errors continue
    bad(stage + 4 * MIN)
    result = check(flag, stage + 5 * MIN)["error_rate"]
    assert result.state == REGRESSING
    assert any("in cooldown" in action for action in result.actions)
    assert rollout(flag) == Decimal("40") and len(alert_audits(flag)) == 1

    result = check(flag, stage + 31 * MIN)["error_rate"]  # 29 minutes after the action
    assert any("in cooldown" in action for action in result.actions)
    assert rollout(flag) == Decimal("40") and len(alert_audits(flag)) == 1

    result = check(flag, stage + 32 * MIN)["error_rate"]  # 30 minutes after it
    assert reductions(result.actions) == [(40, 0)]
    assert rollout(flag) == 0 and len(alert_audits(flag)) == 2
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING
    assert [step["at"] for step in alert.actions_taken] == [(stage + 2 * MIN).isoformat(),
                                                             (stage + 32 * MIN).isoformat()]


def test_the_cooldown_outlasts_a_resolved_episode(flag, stage):
    set_action(flag, Action.ROLLBACK, cooldown_minutes=60)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    check(flag, stage + 10 * MIN)  # resolved
    assert Alert.objects.get(flag=flag).state == AlertState.RESOLVED
    begin_stage(flag, stage + 20 * MIN, 40)
    bad(stage + 21 * MIN)
    result = check(flag, stage + 22 * MIN)["error_rate"]
    assert "alert opened" in result.actions and any("in cooldown" in a for a in result.actions)
    assert rollout(flag) == Decimal("40") and len(alert_audits(flag)) == 1


def test_a_cap_that_had_nothing_to_reduce_starts_no_cooldown(flag, t):
    rule = set_action(flag, Action.CAP_ROLLOUT, "50")
    begin_stage(flag, t, 10)
    bad(t + MIN)
    check(flag, t + 2 * MIN)  # 10% is below the cap: nothing done
    begin_stage(flag, t + 3 * MIN, 90)
    bad(t + 4 * MIN)
    result = check(flag, t + 5 * MIN)["error_rate"]
    assert reductions(result.actions) == [(90, 50)]
    assert rollout(flag) == Decimal("50")
    assert Alert.objects.filter(rule=rule).count() == 1


# --- dry run ------------------------------------------------------------------------------------------------


def test_a_dry_run_reports_what_it_would_do_and_changes_nothing(flag, t, emails, django_capture_on_commit_callbacks):
    begin_stage(flag, t, 80)
    flag.refresh_from_db()
    version, audits = flag.version, AuditEntry.objects.count()
    bad(t + MIN)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        results = check(flag, t + 30 * MIN, dry_run=True)
    assert results["error_rate"].state == REGRESSING
    assert results["error_rate"].actions[0] == "alert opened"
    assert reductions(results["error_rate"].actions) == [(80, 0)]
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.enabled, flag.version) == (Decimal("80"), True, version)
    assert Alert.objects.count() == 0 and Notification.objects.count() == 0
    assert AuditEntry.objects.count() == audits
    assert callbacks == [] and mail.outbox == []


def test_a_dry_run_does_not_resolve_an_open_alert(flag, stage, emails):
    rule = error_rule(flag)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    result = check(flag, stage + 10 * MIN, dry_run=True)["error_rate"]
    assert result.state == HEALTHY and result.actions == ["alert resolved"]
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.FIRING and alert.resolved_at is None
    assert alert.last_checked_at == stage + 2 * MIN
    assert not Notification.objects.filter(event="resolved").exists()


def test_a_dry_run_on_a_plan_neither_steps_back_nor_pauses_it(flag, t):
    actor = Actor.system("test-suite")
    plan = plans.plan_create(flag=flag, created_by="test", stages=[(10, 60), (20, 60)])
    plans.plan_start(plan=plan, actor=actor, now=t - 60 * MIN)
    plans.plan_advance_now(plan=plan, actor=actor, now=t)
    bad(t + MIN)
    result = check(flag, t + 30 * MIN, dry_run=True)["error_rate"]
    assert reductions(result.actions) == [(20, 10)]
    assert rollout(flag) == 20
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage) == (PlanState.RUNNING, 1)


def test_check_all_checks_every_flag_or_only_the_one_named(make_flag, t):
    for key in ("alpha_flag", "beta_flag"):
        begin_stage(make_flag(key), t, 20)
    bad(t + MIN)  # records without a flag count for every flag comparing patch and single
    everything = alert_services.check_all(now=t + 30 * MIN)
    assert list(everything) == ["alpha_flag", "beta_flag"]
    assert all(len(results) == 5 for results in everything.values())
    assert Alert.objects.filter(flag__key="beta_flag", rule__metric="error_rate").count() == 1
    assert list(alert_services.check_all(now=t + 30 * MIN, flag_key="beta_flag")) == ["beta_flag"]


def test_check_all_writes_nothing_for_a_flag_without_regressions_or_open_alerts(flag, stage):
    good(stage + MIN)
    results = alert_services.check_all(now=stage + 30 * MIN)[flag.key]
    assert by_metric(results)["error_rate"].state == HEALTHY
    assert Alert.objects.count() == 0 and alert_audits(flag) == []


# --- acknowledging ------------------------------------------------------------------------------------------


def test_acknowledging_a_firing_alert_records_who_and_when(flag, stage, django_user_model):
    user = django_user_model.objects.create_user("oncall", password="pw")
    bad(stage + MIN)
    check(flag, stage + 30 * MIN)
    alert = Alert.objects.get(rule=error_rule(flag))
    before = timezone.now()
    acknowledged = alert_services.acknowledge(alert=alert, user=user)
    after = timezone.now()
    alert.refresh_from_db()
    assert acknowledged.state == alert.state == AlertState.ACKNOWLEDGED
    assert alert.acknowledged_by == "oncall"
    assert before <= alert.acknowledged_at <= after
    assert alert.resolved_at is None


def test_an_acknowledged_alert_stays_the_one_open_episode_and_then_resolves(flag, stage, django_user_model,
                                                                          emails):
    user = django_user_model.objects.create_user("oncall", password="pw")
    rule = set_action(flag, Action.NOTIFY)
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    alert_services.acknowledge(alert=Alert.objects.get(rule=rule), user=user)
    result = check(flag, stage + 3 * MIN)["error_rate"]
    assert result.state == REGRESSING and "alert opened" not in result.actions
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.ACKNOWLEDGED and alert.acknowledged_by == "oncall"
    assert Notification.objects.filter(alert=alert, event="firing").count() == 1

    begin_stage(flag, stage + 5 * MIN, 10)  # someone lowers the rollout by hand: a new stage, then clean calls
    good(stage + 6 * MIN)
    check(flag, stage + 10 * MIN)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_at == stage + 10 * MIN
    assert alert.acknowledged_by == "oncall"
    assert Notification.objects.filter(alert=alert, event="resolved").count() == 1


def test_acknowledging_a_resolved_alert_changes_nothing(flag, stage, django_user_model):
    user = django_user_model.objects.create_user("oncall", password="pw")
    bad(stage + MIN)
    check(flag, stage + 2 * MIN)
    good(stage + 3 * MIN)
    check(flag, stage + 10 * MIN)
    alert = Alert.objects.get(rule=error_rule(flag))
    assert alert_services.acknowledge(alert=alert, user=user).state == AlertState.RESOLVED
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.acknowledged_by == "" and alert.acknowledged_at is None


# --- concurrency (PostgreSQL) -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_open_each_episode_once_notify_once_and_remediate_once(flag, settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://...")
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    enqueued: list[int] = []
    # Delivery itself is tested in test_notify: here, what the checks hand to Celery after they commit.
    monkeypatch.setattr(alert_services, "_enqueue", enqueued.append)
    t = minute_ago()
    begin_stage(flag, t, 80)
    bad(t + MIN)
    feed(calls=500, mode="single", at=t + MIN)  # a clean baseline: the delta rule regresses too
    now = t + 30 * MIN
    barrier = threading.Barrier(2)
    outcomes: list = []
    errors: list = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(alert_services.check_all(now=now)[flag.key])
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(outcomes) == 2
    expected = {error_rule(flag).pk, AlertRule.objects.get(flag=flag, metric="error_rate_delta").pk}
    # The check that got the lock second re-reads under it: the rollback at `now` began a new stage with no
    # calls yet, so it sees nothing regressing (and keeps the episodes open).
    regressing = sorted(({r.rule.pk for r in results if r.state == REGRESSING} for results in outcomes), key=len)
    assert regressing == [set(), expected]
    assert Alert.objects.filter(flag=flag).count() == len(expected)
    opened = [r.rule.pk for results in outcomes for r in results if "alert opened" in r.actions]
    assert sorted(opened) == sorted(expected)
    notifications = list(Notification.objects.filter(event="firing").values_list("id", flat=True))
    assert len(notifications) == len(expected)
    assert sorted(enqueued) == sorted(notifications)
    (entry,) = alert_audits(flag)
    assert entry.after["rollout_percentage"] == "0.00" and entry.created_at == now
    reduced = [reductions(r.actions) for results in outcomes for r in results if reductions(r.actions)]
    assert reduced == [[(80, 0)]]
    assert rollout(flag) == 0


def test_an_estimate_beyond_what_an_alert_stores_is_kept_at_its_edge_and_the_check_goes_on(flag, t, stage):
    # Tokens per call 10^9 against a baseline of 1 token in 1,200 calls: the ratio (about 10^12) does not
    # fit Alert.value (14 digits, 3 decimals: below 10^11). The check stores the edge of the range.
    from alerts.services import VALUE_LIMIT

    feed(calls=1, mode="single", at=t + MIN, tokens=1)
    for offset in range(1, 4):
        feed(calls=40, at=t + offset * MIN, tokens=10**9)
        feed(calls=400, mode="single", at=t + offset * MIN, tokens=0)
    results = check(flag, t + 10 * MIN)
    assert results["tokens_ratio"].state == "regressing"
    assert results["tokens_ratio"].value > VALUE_LIMIT
    alert = Alert.objects.get(flag=flag, rule__metric="tokens_ratio")
    assert alert.value == Decimal(VALUE_LIMIT)


def test_one_flag_failing_its_check_does_not_stop_the_others(flag, make_flag, t, stage, monkeypatch):
    other = make_flag("other_flag")
    begin_stage(other, t, 20)
    bad(t + MIN, flag="other_flag")
    original = alert_services.check_flag

    def broken(key, **kwargs):  # type: ignore[no-untyped-def]
        if key == flag.key:
            raise RuntimeError("boom")
        return original(key, **kwargs)

    bad(t + MIN, flag=flag.key)
    monkeypatch.setattr(alert_services, "check_flag", broken)
    results = alert_services.check_all(now=t + 10 * MIN)
    assert results[flag.key] == []
    assert Alert.objects.filter(flag=other).exists()
    other.refresh_from_db()
    assert other.rollout_percentage == 0


def test_a_dry_run_reports_one_reduction_when_two_rules_see_the_same_regression(flag, t, stage):
    # The error-rate and error-delta rules both regress; a real check reduces once and the second rule
    # finds nothing left to reduce. The dry run must say the same, and change nothing.
    bad(t + MIN)
    feed(calls=400, mode="single", at=t + MIN)
    dry = alert_services.check_flag(flag.key, now=t + 30 * MIN, dry_run=True)
    assert [reductions(r.actions) for r in dry if reductions(r.actions)] == [[(20, 0)]]
    assert rollout(flag) == 20 and not Alert.objects.filter(flag=flag).exists()
    real = alert_services.check_flag(flag.key, now=t + 30 * MIN)
    assert [reductions(r.actions) for r in real if reductions(r.actions)] == [[(20, 0)]]
    assert rollout(flag) == 0
