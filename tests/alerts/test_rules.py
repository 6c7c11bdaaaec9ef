"""Alert rules judged with confidence on the flag's current stage: the five defaults, confidence instead of
raw averages, the stage's complete minutes, numbers not strings, baselines, and one episode per regression.
Remediation, episodes and check runs have their own modules (test_remediation, test_episodes,
test_check_runs); the helpers are in tests/alerts/checks.py.

Each test begins a rollout stage in the past (begin_stage), feeds records in whole minutes after it and
checks at a `now` after those minutes: only complete minutes of the stage count.

The seed's defects each have a test here: a critical alert raised a 10% rollout to 50%; ratio rules
without baseline traffic compared against 0 and always fired; rates were strings; every check appended
to an unbounded history instead of one episode per rule; a raw average over a window fired on noise
(3 failures in 56 calls against a 5% rule).
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest

from alerts import services as alert_services
from alerts.health import COVERED
from alerts.models import Action, Alert, AlertRule, AlertState, Notification
from tests.alerts import begin_stage, feed
from tests.alerts.checks import (
    DELTA_RULE,
    ERROR_RULE,
    HEALTHY,
    MIN,
    NOT_ENOUGH,
    REGRESSING,
    bad,
    check,
    error_rule,
    feed_minutes,
    reductions,
    rollout,
    set_action,
)

pytestmark = pytest.mark.django_db


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
