"""Metrics read from the rollups: summary, series, windows and the seed's success criteria (monitoring/selectors.py)."""

from __future__ import annotations

import itertools
import math
import random
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from monitoring import selectors, services
from tests.monitoring import at, exact_percentile, record

RATES = ("error_rate", "success_rate")


def _now() -> datetime:
    # A fixed moment in the past, 37 minutes past an hour, so that a 24 h window has ragged minute edges on both
    # sides of its whole hours; ingest validates "not in the future" against the same moment.
    return timezone.now().replace(minute=37, second=12, microsecond=0) - timedelta(hours=1)


def _pct(part: int, whole: int) -> float:
    return round(part / whole * 100, 2)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the seed's Test 3 and Test 4 --------------------------------------------------------------------------


SEED_PATCH = [("user1", 150, 800, True, 3), ("user2", 180, 750, True, 2), ("user3", 200, 900, False, 5)]
SEED_SINGLE = [("user4", 100, 1200, True), ("user5", 120, 1300, True)]


def test_seed_test_3_metrics_collection_counts_calls_successes_and_failures_per_mode(flag):
    now = _now()
    services.ingest(
        [record(user_id=u, mode="patch", latency_ms=ms, tokens_used=t, success=ok, patch_count=p,
                occurred_at=at(now)) for u, ms, t, ok, p in SEED_PATCH]
        + [record(user_id=u, mode="single", latency_ms=ms, tokens_used=t, success=ok, occurred_at=at(now))
           for u, ms, t, ok in SEED_SINGLE],
        now=now,
    )
    data = selectors.summary(flag, "1h", now)
    patch, single = data["modes"]["patch"], data["modes"]["single"]

    assert patch["total_calls"] == len(SEED_PATCH) == 3
    assert patch["successful_calls"] == sum(ok for *_, ok, _p in SEED_PATCH) == 2
    assert patch["failed_calls"] == 1
    assert single["total_calls"] == len(SEED_SINGLE) == 2
    assert patch["avg_latency_ms"] > 0
    # beyond the seed: every figure follows from the five records
    assert patch["avg_latency_ms"] == pytest.approx(sum(r[1] for r in SEED_PATCH) / 3, abs=0.05)
    assert single["avg_latency_ms"] == pytest.approx(sum(r[1] for r in SEED_SINGLE) / 2, abs=0.05)
    assert patch["total_patches"] == sum(r[4] for r in SEED_PATCH)
    assert patch["total_tokens"] == sum(r[2] for r in SEED_PATCH)
    assert single["total_tokens"] == sum(r[2] for r in SEED_SINGLE)
    assert patch["avg_tokens_per_call"] == pytest.approx(sum(r[2] for r in SEED_PATCH) / 3, abs=0.05)
    assert (patch["unique_users"], single["unique_users"]) == (3, 2)
    for stats in (patch, single):
        for name in RATES:
            assert _is_number(stats[name]), f"{name} is {stats[name]!r}, not a number"
    assert patch["error_rate"] == _pct(1, 3)
    assert patch["success_rate"] == _pct(2, 3)
    assert (single["error_rate"], single["success_rate"]) == (0, 100)


def test_seed_test_4_ten_failing_patch_records_give_an_error_rate_of_100(flag):
    now = _now()
    services.ingest([record(user_id="user", latency_ms=100, tokens_used=800, success=False, patch_count=1,
                            occurred_at=at(now)) for _ in range(10)], now=now)
    data = selectors.summary(flag, "1h", now)
    patch = data["modes"]["patch"]
    assert patch["total_calls"] == 10
    assert patch["failed_calls"] == 10
    assert patch["error_rate"] == 100
    assert _is_number(patch["error_rate"])
    assert patch["success_rate"] == 0
    assert patch["unique_users"] == 1
    error_criterion = selectors.success_criteria(data)[0]
    assert error_criterion["name"].startswith("Error rate")
    assert (error_criterion["value"], error_criterion["status"]) == (100, "not met")


# --- rates, emptiness, token savings -----------------------------------------------------------------------


def test_a_window_without_records_has_every_rate_none_and_no_unique_users(flag):
    now = _now()
    # traffic outside the window only
    services.ingest([record(occurred_at=at(now - timedelta(hours=3)))], now=now)
    data = selectors.summary(flag, "1h", now)
    for mode in ("patch", "single"):
        stats = data["modes"][mode]
        assert stats["total_calls"] == stats["failed_calls"] == stats["successful_calls"] == 0
        assert stats["unique_users"] == 0
        for name in (*RATES, "avg_latency_ms", "avg_tokens_per_call", "p50_latency_ms", "p95_latency_ms",
                     "p99_latency_ms"):
            assert stats[name] is None, name
    assert data["token_savings_percent"] is None


@pytest.mark.parametrize("failures", [0, 1, 7, 13])
def test_error_and_success_rates_are_the_failure_and_success_shares_in_percent(flag, failures):
    now = _now()
    total = 13
    services.ingest([record(user_id=f"u{i}", success=i >= failures, occurred_at=at(now)) for i in range(total)],
                    now=now)
    patch = selectors.summary(flag, "15m", now)["modes"]["patch"]
    assert patch["error_rate"] == _pct(failures, total)
    assert patch["success_rate"] == _pct(total - failures, total)
    assert all(_is_number(patch[name]) for name in RATES)


def test_token_savings_is_the_percent_fewer_tokens_per_call_than_the_baseline(flag):
    now = _now()
    rng = random.Random(9)
    treatment = [rng.randrange(600, 1000) for _ in range(37)]
    baseline = [rng.randrange(1000, 1500) for _ in range(23)]
    services.ingest([record(user_id=f"t{i}", mode="patch", tokens_used=t, occurred_at=at(now))
                     for i, t in enumerate(treatment)]
                    + [record(user_id=f"b{i}", mode="single", tokens_used=t, occurred_at=at(now))
                       for i, t in enumerate(baseline)], now=now)
    treatment_avg, baseline_avg = sum(treatment) / len(treatment), sum(baseline) / len(baseline)
    expected = (baseline_avg - treatment_avg) / baseline_avg * 100
    assert selectors.summary(flag, "1h", now)["token_savings_percent"] == pytest.approx(expected, abs=0.01)


def test_token_savings_is_negative_when_the_treatment_uses_more_tokens(flag):
    now = _now()
    services.ingest([record(mode="patch", tokens_used=1500, occurred_at=at(now)),
                     record(mode="single", tokens_used=1000, occurred_at=at(now))], now=now)
    assert selectors.summary(flag, "1h", now)["token_savings_percent"] == pytest.approx((1000 - 1500) / 1000 * 100)


def test_token_savings_is_none_without_baseline_traffic(flag):
    now = _now()
    services.ingest([record(mode="patch", tokens_used=700, occurred_at=at(now))], now=now)
    data = selectors.summary(flag, "1h", now)
    assert data["modes"]["patch"]["total_calls"] == 1
    assert data["token_savings_percent"] is None


def test_token_savings_uses_the_exact_averages_not_the_rounded_ones(flag):
    now = _now()
    treatment, baseline = [1, 1, 1, 1], [1, 1, 1, 2]  # averages 1.0 and 1.25
    services.ingest([record(user_id=f"t{i}", mode="patch", tokens_used=t, occurred_at=at(now))
                     for i, t in enumerate(treatment)]
                    + [record(user_id=f"b{i}", mode="single", tokens_used=t, occurred_at=at(now))
                       for i, t in enumerate(baseline)], now=now)
    treatment_avg, baseline_avg = sum(treatment) / 4, sum(baseline) / 4
    expected = (baseline_avg - treatment_avg) / baseline_avg * 100
    assert selectors.summary(flag, "1h", now)["token_savings_percent"] == pytest.approx(expected, abs=0.01)


def test_token_savings_function_follows_the_formula_and_needs_both_averages():
    assert selectors.token_savings(800.0, 1000.0) == 20.0
    assert selectors.token_savings(1100.0, 1000.0) == -10.0
    assert selectors.token_savings(None, 1000.0) is None
    assert selectors.token_savings(800.0, None) is None
    assert selectors.token_savings(800.0, 0.0) is None


def test_percentiles_of_5000_records_are_within_5_percent_of_exact(flag):
    now = _now()
    rng = random.Random(5000)
    latencies = [round(rng.lognormvariate(5.2, 0.7), 2) for _ in range(5000)]
    services.ingest([record(user_id=f"u{i % 800}", latency_ms=ms, occurred_at=at(now - timedelta(seconds=i % 3000)))
                     for i, ms in enumerate(latencies)], now=now)
    patch = selectors.summary(flag, "1h", now)["modes"]["patch"]
    assert patch["total_calls"] == 5000
    for name, fraction in (("p50_latency_ms", 0.50), ("p95_latency_ms", 0.95), ("p99_latency_ms", 0.99)):
        assert patch[name] == pytest.approx(exact_percentile(latencies, fraction), rel=0.05), name
    assert patch["avg_latency_ms"] == pytest.approx(sum(latencies) / len(latencies), abs=0.051)
    assert patch["unique_users"] == pytest.approx(800, rel=3 * 0.0325)


# --- windows -----------------------------------------------------------------------------------------------


def test_records_two_hours_old_count_in_24h_but_not_in_1h(flag):
    now = _now()
    services.ingest([record(user_id="old", occurred_at=at(now - timedelta(hours=2))),
                     record(user_id="older", occurred_at=at(now - timedelta(hours=2, minutes=30))),
                     record(user_id="recent", occurred_at=at(now - timedelta(minutes=30)))], now=now)
    assert selectors.summary(flag, "1h", now)["modes"]["patch"]["total_calls"] == 1
    assert selectors.summary(flag, "24h", now)["modes"]["patch"]["total_calls"] == 3
    assert selectors.summary(flag, "15m", now)["modes"]["patch"]["total_calls"] == 0
    assert selectors.summary(flag, "7d", now)["modes"]["patch"]["total_calls"] == 3


def test_window_bounds_end_after_the_current_minute_and_span_the_window():
    now = _now()
    for window, length in selectors.WINDOWS.items():
        start, end = selectors.window_bounds(window, now)
        assert end == now.replace(second=0) + timedelta(minutes=1)
        assert end - start == length


def test_the_window_edges_are_exact_to_the_minute(flag):
    now = _now()
    start, end = selectors.window_bounds("1h", now)
    services.ingest([record(user_id="before", occurred_at=at(start - timedelta(seconds=1))),
                     record(user_id="first", occurred_at=at(start)),
                     record(user_id="last", occurred_at=at(now))], now=now)
    data = selectors.summary(flag, "1h", now)
    assert data["modes"]["patch"]["total_calls"] == 2
    assert (data["from"], data["to"]) == (start.isoformat(), end.isoformat())


def test_the_24h_summary_from_hour_and_minute_rows_equals_totals_of_the_raw_records(flag):
    now = _now()
    rng = random.Random(30)
    start, end = selectors.window_bounds("24h", now)
    moments = [now - timedelta(seconds=rng.randrange(30 * 3600)) for _ in range(600)]
    # the edges: the first second inside the window, the last second before it, the current minute
    moments += [start, start - timedelta(seconds=1), now, start + timedelta(minutes=23, seconds=59),
                end.replace(minute=0) - timedelta(seconds=1), end.replace(minute=0)]
    records = []
    for i, moment in enumerate(moments):
        patches = rng.randrange(0, 6)
        records.append(record(user_id=f"u{rng.randrange(150)}", mode=rng.choice(["patch", "single"]),
                              latency_ms=round(rng.uniform(30, 700), 1), tokens_used=rng.randrange(100, 2000),
                              success=rng.random() > 0.1, patch_count=patches,
                              failed_patches=rng.randrange(0, patches + 1), occurred_at=at(moment), id=f"r{i}"))
    services.ingest(records, now=now)
    data = selectors.summary(flag, "24h", now)
    assert start.minute != 0 and end.minute != 0  # the window has ragged edges read from minute rows
    for mode in ("patch", "single"):
        inside = [r for r, moment in zip(records, moments, strict=True)
                  if r["mode"] == mode and start <= moment < end]
        stats = data["modes"][mode]
        assert stats["total_calls"] == len(inside)
        assert stats["successful_calls"] == sum(r["success"] for r in inside)
        assert stats["failed_calls"] == sum(not r["success"] for r in inside)
        assert stats["total_tokens"] == sum(r["tokens_used"] for r in inside)
        assert stats["total_patches"] == sum(r["patch_count"] for r in inside)
        assert stats["failed_patches"] == sum(r["failed_patches"] for r in inside)
        assert stats["avg_latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in inside) / len(inside), abs=0.051)
        assert stats["error_rate"] == _pct(sum(not r["success"] for r in inside), len(inside))
        users = len({r["user_id"] for r in inside})
        assert abs(stats["unique_users"] - users) <= max(2, 3 * 0.0325 * users)
    assert len(records) > sum(data["modes"][m]["total_calls"] for m in ("patch", "single"))  # some fell outside


# --- series ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", list(selectors.WINDOWS))
def test_series_has_one_label_per_step_from_the_window_start_to_its_end(flag, window):
    now = _now()
    start, end = selectors.window_bounds(window, now)
    step = timedelta(minutes=1) if selectors.WINDOWS[window] <= timedelta(hours=1) else timedelta(hours=1)
    first = start if step == timedelta(minutes=1) else start.replace(minute=0)
    expected = math.ceil((end - first) / step)
    data = selectors.series(flag, window, now)
    labels = [datetime.fromisoformat(label) for label in data["labels"]]
    assert len(labels) == expected
    assert labels[0] == first
    assert all(b - a == step for a, b in itertools.pairwise(labels))
    assert labels[-1] < end <= labels[-1] + step
    for mode in ("patch", "single"):
        for values in data["modes"][mode].values():
            assert len(values) == expected
    assert len(data["token_savings"]) == expected


def test_minute_series_have_one_point_per_minute_of_the_window(flag):
    now = _now()
    for window in ("15m", "1h"):
        assert len(selectors.series(flag, window, now)["labels"]) == selectors.WINDOWS[window] // timedelta(minutes=1)


def test_series_error_rate_per_minute_equals_the_raw_failure_share_of_that_minute(flag):
    now = _now()
    rng = random.Random(60)
    start, _end = selectors.window_bounds("15m", now)
    records = []
    for i in range(300):
        minute = rng.randrange(15)
        if minute in (4, 5):
            continue  # two minutes without traffic
        records.append(record(user_id=f"u{i}", success=rng.random() > 0.25 * (minute % 3),
                              tokens_used=rng.randrange(500, 900),
                              occurred_at=at(start + timedelta(minutes=minute, seconds=rng.randrange(60)))))
    services.ingest(records, now=now)
    data = selectors.series(flag, "15m", now)
    patch = data["modes"]["patch"]
    for index, label in enumerate(data["labels"]):
        minute = datetime.fromisoformat(label)
        in_minute = [r for r in records if minute <= datetime.fromisoformat(r["occurred_at"]) <
                     minute + timedelta(minutes=1)]
        assert patch["calls"][index] == len(in_minute)
        if in_minute:
            assert patch["error_rate"][index] == _pct(sum(not r["success"] for r in in_minute), len(in_minute))
            assert patch["avg_tokens_per_call"][index] == pytest.approx(
                sum(r["tokens_used"] for r in in_minute) / len(in_minute), abs=0.05)
        else:
            assert patch["error_rate"][index] is None
            assert patch["p50_latency_ms"][index] is None
    assert patch["calls"][4] == patch["calls"][5] == 0
    assert data["modes"]["single"]["calls"] == [0] * 15
    assert data["token_savings"] == [None] * 15  # no baseline traffic at all


def test_hourly_series_counts_each_hour_from_the_raw_records(flag):
    now = _now()
    rng = random.Random(24)
    moments = [now - timedelta(seconds=rng.randrange(20 * 3600)) for _ in range(200)]
    services.ingest([record(user_id=f"u{i}", mode="single", occurred_at=at(m)) for i, m in enumerate(moments)],
                    now=now)
    data = selectors.series(flag, "24h", now)
    for index, label in enumerate(data["labels"]):
        hour = datetime.fromisoformat(label)
        assert data["modes"]["single"]["calls"][index] == sum(hour <= m < hour + timedelta(hours=1) for m in moments)


# --- success criteria --------------------------------------------------------------------------------------


def _criteria(flag, treatment: list[dict], baseline: list[dict]) -> dict[str, dict]:
    now = _now()
    records = [record(user_id=f"t{i}", mode="patch", occurred_at=at(now), **r) for i, r in enumerate(treatment)]
    records += [record(user_id=f"b{i}", mode="single", occurred_at=at(now), **r) for i, r in enumerate(baseline)]
    if records:
        services.ingest(records, now=now)
    return {c["name"]: c for c in selectors.success_criteria(selectors.summary(flag, "1h", now))}


def test_success_criteria_are_met_by_a_healthy_cheaper_treatment(flag):
    criteria = _criteria(flag, [{"latency_ms": 104, "tokens_used": 700}] * 40,
                         [{"latency_ms": 100, "tokens_used": 1000}] * 40)
    assert {name: c["status"] for name, c in criteria.items()} == {
        "Error rate < 5%": "met", "Latency within ±10% of baseline": "met", "Token savings > 20%": "met",
        "Success rate > 95%": "met"}
    assert criteria["Error rate < 5%"]["value"] == 0
    assert criteria["Latency within ±10% of baseline"]["value"] == pytest.approx((104 - 100) / 100 * 100)
    assert criteria["Token savings > 20%"]["value"] == pytest.approx((1000 - 700) / 1000 * 100)
    assert criteria["Success rate > 95%"]["value"] == 100


def test_success_criteria_are_not_met_by_a_failing_slow_expensive_treatment(flag):
    treatment = [{"latency_ms": 150, "tokens_used": 950, "success": i % 10 != 0} for i in range(40)]  # 10% fail
    criteria = _criteria(flag, treatment, [{"latency_ms": 100, "tokens_used": 1000}] * 40)
    assert {name: c["status"] for name, c in criteria.items()} == {
        "Error rate < 5%": "not met", "Latency within ±10% of baseline": "not met", "Token savings > 20%": "not met",
        "Success rate > 95%": "not met"}
    assert criteria["Error rate < 5%"]["value"] == _pct(4, 40)
    assert criteria["Success rate > 95%"]["value"] == _pct(36, 40)
    assert criteria["Latency within ±10% of baseline"]["value"] == pytest.approx(50)
    assert criteria["Token savings > 20%"]["value"] == pytest.approx(5)


def test_success_criteria_thresholds_are_strict_at_their_edges(flag):
    # exactly 5% errors, exactly 20% savings, exactly 95% success: none of "< 5", "> 20", "> 95" holds;
    # exactly 10% slower is still "within ±10%"
    treatment = [{"latency_ms": 110, "tokens_used": 800, "success": i != 0} for i in range(20)]
    criteria = _criteria(flag, treatment, [{"latency_ms": 100, "tokens_used": 1000}] * 20)
    assert {name: c["status"] for name, c in criteria.items()} == {
        "Error rate < 5%": "not met", "Latency within ±10% of baseline": "met", "Token savings > 20%": "not met",
        "Success rate > 95%": "not met"}


def test_success_criteria_have_no_data_without_traffic(flag):
    criteria = _criteria(flag, [], [])
    assert [c["status"] for c in criteria.values()] == ["no data"] * 4
    assert [c["value"] for c in criteria.values()] == [None] * 4


def test_success_criteria_comparing_with_the_baseline_have_no_data_without_baseline_traffic(flag):
    criteria = _criteria(flag, [{"latency_ms": 100, "tokens_used": 800}] * 10, [])
    assert criteria["Error rate < 5%"]["status"] == "met"
    assert criteria["Success rate > 95%"]["status"] == "met"
    assert criteria["Latency within ±10% of baseline"]["status"] == "no data"
    assert criteria["Token savings > 20%"]["status"] == "no data"
