"""alerts.guardrails.judge: from stage totals and recent per-minute data to regressing / healthy / not enough.

The seed's scenarios (10 calls all failing, 2% errors over 100,000 calls, 3 errors in 56 calls), the
success-rate mirror of the error-rate rule, step changes caught by the CUSUMs within minutes, and seeded
streams that stay healthy (or sit exactly at the threshold) and must rarely be judged regressing.
"""

from __future__ import annotations

import math
import random

import pytest

from alerts import guardrails as g
from alerts import sequential as seq

# ---------------------------------------------------------------------------------------------- helpers


def arm(calls: int, failures: int = 0, *, latency: list[float] | None = None,
        tokens: list[float] | None = None) -> g.Arm:
    a = g.Arm(calls=calls, failures=failures)
    for ms in latency or []:
        x = g.log_latency(ms)
        a.log_latency_sum += x
        a.log_latency_sq += x * x
    for n in tokens or []:
        a.tokens_sum += n
        a.tokens_sq += n * n
    return a


def minute(rng: random.Random, calls: int, *, rate: float = 0.0, median_ms: float | None = None, sigma: float = 0.5,
           mean_tokens: float | None = None, sd_tokens: float = 0.0) -> g.Arm:
    """One minute of one arm: binomial failures, lognormal latency (median, sigma), normal tokens."""
    latency = None if median_ms is None else [median_ms * math.exp(rng.gauss(0, sigma)) for _ in range(calls)]
    tokens = None if mean_tokens is None else [max(0.0, round(rng.gauss(mean_tokens, sd_tokens))) for _ in range(calls)]
    return arm(calls, rng.binomialvariate(calls, rate) if rate else 0, latency=latency, tokens=tokens)


class Stage:
    """Stage totals and the recent minutes (at most LOOKBACK_MINUTES), as the judge receives them."""

    def __init__(self) -> None:
        self.treatment, self.baseline = g.Arm(), g.Arm()
        self.recent: list[tuple[g.Arm, g.Arm]] = []

    def add(self, treatment: g.Arm, baseline: g.Arm) -> None:
        self.treatment.add(treatment)
        self.baseline.add(baseline)
        self.recent = [*self.recent, (treatment, baseline)][-g.LOOKBACK_MINUTES:]

    def judge(self, spec: g.Spec) -> g.Verdict:
        return g.judge(spec, self.treatment, self.baseline, self.recent)


def allowance(alpha: float, runs: int) -> float:
    """alpha plus three Monte-Carlo standard errors."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


ERROR_RULE = g.Spec(g.ERROR_RATE, 5.0)
SUCCESS_RULE = g.Spec(g.SUCCESS_RATE, 95.0, worse_high=False)

# ------------------------------------------------------------------------------ the seed's error scenarios


def test_ten_calls_all_failing_is_regressing():
    verdict = g.judge(ERROR_RULE, arm(10, 10), g.Arm(), [])
    assert verdict.state == g.REGRESSING
    assert verdict.by == "interval"
    assert verdict.estimate == pytest.approx(100.0)
    assert verdict.low > 5.0
    assert verdict.calls_needed is None
    # With the minute in the recent data the CUSUM sees it too: 10 ln(2.5) ~ 9.2 > 6.
    verdict = g.judge(ERROR_RULE, arm(10, 10), g.Arm(), [(arm(10, 10), g.Arm())])
    assert verdict.state == g.REGRESSING
    assert verdict.by == "both"
    assert verdict.cusum == pytest.approx(10 * math.log(2.5))
    assert "worse side" in verdict.describe()


def test_two_percent_over_100000_calls_is_healthy():
    recent = [(arm(800, 16), g.Arm()) for _ in range(g.LOOKBACK_MINUTES)]
    verdict = g.judge(ERROR_RULE, arm(100_000, 2000), g.Arm(), recent)
    assert verdict.state == g.HEALTHY
    assert verdict.estimate == pytest.approx(2.0)
    assert verdict.low < 2.0 < verdict.high < 5.0
    assert verdict.cusum == 0.0
    assert verdict.calls_needed is None


def test_three_errors_in_56_calls_is_not_enough_with_calls_needed():
    verdict = g.judge(ERROR_RULE, arm(56, 3), g.Arm(), [(arm(56, 3), g.Arm())])
    assert verdict.state == g.NOT_ENOUGH
    assert verdict.low < 5.0 < verdict.high
    assert verdict.calls_needed is not None and verdict.calls_needed > 0
    # At the same rate, that many more calls decide (the rate is above 5%: regressing); 80% of them do not.
    rate = 3 / 56
    total = 56 + verdict.calls_needed
    later = g.judge(ERROR_RULE, arm(total, round(rate * total)), g.Arm(), [])
    assert later.state == g.REGRESSING and later.by == "interval"
    fewer = int(0.8 * total)
    assert g.judge(ERROR_RULE, arm(fewer, round(rate * fewer)), g.Arm(), []).state == g.NOT_ENOUGH
    text = verdict.describe()
    assert f"about {verdict.calls_needed:,} more calls" in text
    assert "not enough data" in text


def test_describe_without_calls_and_without_an_estimate():
    verdict = g.judge(ERROR_RULE, g.Arm(), g.Arm(), [])
    assert verdict.state == g.NOT_ENOUGH
    assert verdict.estimate is None
    assert verdict.describe().startswith("no calls yet")
    assert "more calls" not in verdict.describe()


def test_describe_formats_calls_needed_with_separators():
    verdict = g.Verdict(g.NOT_ENOUGH, "%", 5.0, estimate=5.3, low=1.0, high=12.0, calls_needed=12_345)
    assert "about 12,345 more calls" in verdict.describe()


MIRROR_CASES = [(10, 10), (100_000, 2000), (56, 3), (0, 0), (1, 0), (400, 0), (400, 40), (5000, 240), (5000, 260),
                (200, 199), (30, 1)]


@pytest.mark.parametrize(("calls", "failures"), MIRROR_CASES)
def test_success_rate_below_95_mirrors_error_rate_above_5(calls, failures):
    rng = random.Random(calls * 7 + failures)
    recent = [(arm(n, rng.binomialvariate(n, failures / calls) if calls else 0), g.Arm())
              for n in (rng.randint(0, 40) for _ in range(30))]
    error = g.judge(ERROR_RULE, arm(calls, failures), g.Arm(), recent)
    success = g.judge(SUCCESS_RULE, arm(calls, failures), g.Arm(), recent)
    assert success.state == error.state
    assert success.by == error.by
    assert success.calls_needed == error.calls_needed
    assert success.cusum == pytest.approx(error.cusum)
    if error.estimate is None:
        assert success.estimate is None
    else:
        assert success.estimate == pytest.approx(100 - error.estimate)
        assert success.low == pytest.approx(100 - error.high)
        assert success.high == pytest.approx(100 - error.low)


def test_success_rate_states_on_the_seed_scenarios():
    assert g.judge(SUCCESS_RULE, arm(10, 10), g.Arm(), []).state == g.REGRESSING
    assert g.judge(SUCCESS_RULE, arm(100_000, 2000), g.Arm(), []).state == g.HEALTHY
    verdict = g.judge(SUCCESS_RULE, arm(100_000, 2000), g.Arm(), [])
    assert verdict.estimate == pytest.approx(98.0)
    assert verdict.low > 95.0


# --------------------------------------------------------------------------------------- error_rate_delta

DELTA_RULE = g.Spec(g.ERROR_RATE_DELTA, 1.0)  # treatment at most 1 point above baseline


def test_error_rate_delta_catches_a_step_from_1_to_10_percent_exact_counts():
    stage = Stage()
    for _ in range(60):
        stage.add(arm(100, 1), arm(400, 4))
        assert stage.judge(DELTA_RULE).state != g.REGRESSING
    stage.add(arm(100, 10), arm(400, 4))
    verdict = stage.judge(DELTA_RULE)
    assert verdict.state == g.REGRESSING
    assert verdict.by == "cusum"  # the stage as a whole (1.1%) is not yet worse: the recent minutes are
    assert verdict.cusum > verdict.cusum_limit
    assert "recent minutes changed" in verdict.describe()


def test_error_rate_delta_catches_the_step_within_two_minutes():
    delays = []
    for seed in range(40):
        rng = random.Random(1000 + seed)
        stage = Stage()
        for _ in range(60):
            stage.add(minute(rng, 100, rate=0.01), minute(rng, 400, rate=0.01))
            assert stage.judge(DELTA_RULE).state != g.REGRESSING, seed
        for step in range(1, 11):
            stage.add(minute(rng, 100, rate=0.10), minute(rng, 400, rate=0.01))
            if stage.judge(DELTA_RULE).state == g.REGRESSING:
                delays.append(step)
                break
        else:
            delays.append(math.inf)
    # 200 calls at 10% give about 20 failures; the CUSUM from 2% to 10% needs about 14 of them: not
    # every run can be within two minutes, nearly all are, and every run is within a few.
    assert sum(d <= 2 for d in delays) >= 0.9 * len(delays), delays
    assert max(delays) <= 4, delays


def test_error_rate_delta_with_equal_rates_never_regresses():
    for seed in range(10):
        rng = random.Random(2000 + seed)
        stage = Stage()
        for _ in range(180):
            stage.add(minute(rng, 100, rate=0.01), minute(rng, 400, rate=0.01))
            verdict = stage.judge(DELTA_RULE)
            assert verdict.state != g.REGRESSING, (seed, verdict)
        # Three hours at equal rates: the interval is wholly below +1 point.
        assert verdict.state == g.HEALTHY
        assert verdict.high < 1.0


def test_error_rate_delta_interval_is_the_difference_of_the_two_arms_intervals():
    for calls, failures, state in [(2000, 60, g.NOT_ENOUGH), (2000, 100, g.REGRESSING), (20_000, 200, g.HEALTHY)]:
        verdict = g.judge(DELTA_RULE, arm(calls, failures), arm(8000, 80), [])
        low_t, high_t = seq.proportion_interval(failures, calls, DELTA_RULE.alpha / 2)
        low_b, high_b = seq.proportion_interval(80, 8000, DELTA_RULE.alpha / 2)
        assert verdict.estimate == pytest.approx(100 * (failures / calls - 0.01))
        assert verdict.low == pytest.approx(100 * (low_t - high_b))
        assert verdict.high == pytest.approx(100 * (high_t - low_b))
        # The state follows from where (low, high) lies against +1 point.
        expected = g.REGRESSING if verdict.low > 1 else g.HEALTHY if verdict.high < 1 else g.NOT_ENOUGH
        assert verdict.state == expected == state, (failures, verdict)


def test_error_rate_delta_without_baseline_notes_it():
    verdict = g.judge(DELTA_RULE, arm(100, 5), g.Arm(), [(arm(100, 5), g.Arm())])
    assert verdict.state == g.NOT_ENOUGH
    assert verdict.cusum == 0.0
    assert any("no baseline" in note for note in verdict.notes)


# ------------------------------------------------------------------------------------------ latency_ratio

LATENCY_RULE = g.Spec(g.LATENCY_RATIO, 1.5)


def test_log_latency_is_log1p():
    assert g.log_latency(0) == 0.0
    assert g.log_latency(math.e - 1) == pytest.approx(1.0)


def test_latency_ratio_catches_median_180_to_400_ms_within_three_minutes():
    for seed in range(10):
        rng = random.Random(3000 + seed)
        stage = Stage()
        for _ in range(60):
            stage.add(minute(rng, 100, median_ms=180), minute(rng, 400, median_ms=180))
            assert stage.judge(LATENCY_RULE).state != g.REGRESSING, seed
        verdicts = []
        for _ in range(3):
            stage.add(minute(rng, 100, median_ms=400), minute(rng, 400, median_ms=180))
            verdicts.append(stage.judge(LATENCY_RULE))
        assert any(v.state == g.REGRESSING for v in verdicts), (seed, verdicts)


def test_latency_ratio_estimate_is_the_ratio_of_geometric_means():
    rng = random.Random(4)
    treatment = minute(rng, 3000, median_ms=400)
    baseline = minute(rng, 3000, median_ms=180)
    verdict = g.judge(LATENCY_RULE, treatment, baseline, [])
    geometric = math.exp(treatment.log_latency_sum / 3000 - baseline.log_latency_sum / 3000)
    assert verdict.estimate == pytest.approx(geometric)
    assert verdict.estimate == pytest.approx(401 / 181, rel=0.05)
    assert verdict.low > 1.5
    assert verdict.state == g.REGRESSING


def test_latency_ratio_healthy_with_equal_latency():
    rng = random.Random(5)
    verdict = g.judge(LATENCY_RULE, minute(rng, 2000, median_ms=180), minute(rng, 8000, median_ms=180), [])
    assert verdict.state == g.HEALTHY
    assert verdict.high < 1.5


def test_ratio_rules_wait_for_thirty_calls_per_arm():
    rng = random.Random(6)
    verdict = g.judge(LATENCY_RULE, minute(rng, 12, median_ms=1000), minute(rng, 25, median_ms=100), [])
    assert verdict.state == g.NOT_ENOUGH
    assert verdict.estimate is None
    assert verdict.calls_needed == (30 - 12) + (30 - 25)
    assert "about 23 more calls" in verdict.describe()


def test_ratio_rule_with_non_positive_threshold_notes_it():
    verdict = g.judge(g.Spec(g.LATENCY_RATIO, 0.0), arm(100), arm(100), [])
    assert verdict.state == g.NOT_ENOUGH
    assert verdict.notes


def test_unknown_metric_is_an_error():
    with pytest.raises(ValueError):
        g.judge(g.Spec("p99", 1.0), g.Arm(), g.Arm(), [])


# ------------------------------------------------------------------------------------------- tokens_ratio

TOKENS_RULE = g.Spec(g.TOKENS_RATIO, 0.8)


def tokens_stage(seed: int, treatment_mean: float, minutes: int = 100) -> Stage:
    rng = random.Random(seed)
    stage = Stage()
    for _ in range(minutes):
        stage.add(minute(rng, 20, mean_tokens=treatment_mean, sd_tokens=0.3 * treatment_mean),
                  minute(rng, 20, mean_tokens=1000, sd_tokens=300))
    return stage


def test_tokens_30_percent_lower_is_healthy():
    verdict = tokens_stage(7, 700).judge(TOKENS_RULE)
    assert verdict.state == g.HEALTHY
    assert verdict.estimate == pytest.approx(0.7, abs=0.03)
    assert verdict.high < 0.8


def test_tokens_equal_to_baseline_is_regressing():
    verdict = tokens_stage(8, 1000).judge(TOKENS_RULE)
    assert verdict.state == g.REGRESSING
    assert verdict.estimate == pytest.approx(1.0, abs=0.03)
    assert verdict.low > 0.8


def test_tokens_estimate_is_the_ratio_of_means():
    stage = tokens_stage(9, 850, minutes=50)
    verdict = stage.judge(TOKENS_RULE)
    ratio = (stage.treatment.tokens_sum / stage.treatment.calls) / (stage.baseline.tokens_sum / stage.baseline.calls)
    assert verdict.estimate == pytest.approx(ratio)
    assert verdict.low < verdict.estimate < verdict.high


def test_tokens_baseline_without_tokens_notes_it():
    verdict = g.judge(TOKENS_RULE, arm(50, tokens=[100] * 50), arm(50, tokens=[0] * 50), [])
    assert verdict.state == g.NOT_ENOUGH
    assert verdict.notes


# --------------------------------------------------------------------- coverage of the judge's verdicts


def run_streams(spec: g.Spec, runs: int, minutes: int, seed: int, treatment, baseline) -> tuple[int, int]:
    """Runs in which the judge, asked every minute, ever said REGRESSING by the interval / at all."""
    by_interval = at_all = 0
    for run in range(runs):
        rng = random.Random(seed + run)
        stage = Stage()
        interval_seen = regressing_seen = False
        for _ in range(minutes):
            stage.add(treatment(rng), baseline(rng))
            verdict = stage.judge(spec)
            if verdict.state == g.REGRESSING:
                regressing_seen = True
                interval_seen = interval_seen or verdict.by in ("interval", "both")
        by_interval += interval_seen
        at_all += regressing_seen
    return by_interval, at_all


def test_healthy_error_rate_stream_is_rarely_regressing():
    """True 2% against "error rate > 5%", alpha 0.05, 150 runs of 60 minutes at 50 calls/minute."""
    spec, runs = g.Spec(g.ERROR_RATE, 5.0, alpha=0.05), 150
    by_interval, at_all = run_streams(spec, runs, 60, 40_000, lambda r: minute(r, 50, rate=0.02),
                                      lambda r: g.Arm())
    assert by_interval / runs <= allowance(spec.alpha, runs)
    assert at_all / runs <= allowance(spec.alpha, runs)


def test_error_rate_exactly_at_threshold_is_rarely_regressing_by_the_interval():
    """The hardest healthy case: true rate = the threshold. The interval's false alarms stay within alpha."""
    spec, runs = g.Spec(g.ERROR_RATE, 5.0, alpha=0.05), 150
    by_interval, _ = run_streams(spec, runs, 60, 41_000, lambda r: minute(r, 50, rate=0.05), lambda r: g.Arm())
    assert by_interval / runs <= allowance(spec.alpha, runs)


def test_error_rate_delta_at_the_margin_is_rarely_regressing_by_the_interval():
    spec, runs = g.Spec(g.ERROR_RATE_DELTA, 1.0, alpha=0.05), 100
    by_interval, _ = run_streams(spec, runs, 60, 42_000, lambda r: minute(r, 50, rate=0.02),
                                 lambda r: minute(r, 200, rate=0.01))
    assert by_interval / runs <= allowance(spec.alpha, runs)


def test_healthy_latency_stream_is_rarely_regressing():
    """Equal latency against "latency ratio > 1.5", alpha 0.05: interval and CUSUM both stay quiet."""
    spec, runs = g.Spec(g.LATENCY_RATIO, 1.5, alpha=0.05), 100
    by_interval, at_all = run_streams(spec, runs, 30, 43_000, lambda r: minute(r, 20, median_ms=180),
                                      lambda r: minute(r, 80, median_ms=180))
    assert by_interval / runs <= allowance(spec.alpha, runs)
    assert at_all / runs <= allowance(spec.alpha, runs)


def test_latency_exactly_at_threshold_is_rarely_regressing_by_the_interval():
    """Treatment's ln(1 + ms) is the baseline's plus ln 1.5 exactly: the ratio of geometric means is 1.5."""
    spec, runs = g.Spec(g.LATENCY_RATIO, 1.5, alpha=0.05), 100

    def latency_minute(rng: random.Random, calls: int, mu: float) -> g.Arm:
        return arm(calls, latency=[math.expm1(rng.gauss(mu, 0.5)) for _ in range(calls)])

    mu_b = math.log1p(180)
    by_interval, _ = run_streams(spec, runs, 30, 44_000, lambda r: latency_minute(r, 20, mu_b + math.log(1.5)),
                                 lambda r: latency_minute(r, 80, mu_b))
    assert by_interval / runs <= allowance(spec.alpha, runs)


def test_tokens_exactly_at_threshold_is_rarely_regressing_by_the_interval():
    spec, runs = g.Spec(g.TOKENS_RATIO, 0.8, alpha=0.05), 100
    by_interval, _ = run_streams(spec, runs, 30, 45_000,
                                 lambda r: minute(r, 20, mean_tokens=800, sd_tokens=240),
                                 lambda r: minute(r, 20, mean_tokens=1000, sd_tokens=300))
    assert by_interval / runs <= allowance(spec.alpha, runs)


# --- rules that look the other way, and the limit over a long stage --------------------------------


def test_a_lower_is_worse_delta_rule_is_healthy_when_the_difference_is_on_its_good_side():
    # "treatment minus baseline < -5 points" is worse when lower: at 7% against 10% (-3 points) it is
    # healthy, and neither its interval nor its CUSUM may say otherwise, minute after minute.
    rule = g.Spec(g.ERROR_RATE_DELTA, -5.0, worse_high=False)
    for seed in range(5):
        rng = random.Random(3000 + seed)
        stage = Stage()
        for _ in range(120):
            stage.add(minute(rng, 100, rate=0.07), minute(rng, 400, rate=0.10))
            verdict = stage.judge(rule)
            assert verdict.state != g.REGRESSING, (seed, verdict)
        assert verdict.cusum < verdict.cusum_limit
        assert verdict.state == g.HEALTHY and verdict.low > -5.0


def test_a_lower_is_worse_delta_rule_catches_the_treatment_falling_below_its_bound():
    # The same rule with the treatment at 2% against 10% (-8 points): regressing.
    rule = g.Spec(g.ERROR_RATE_DELTA, -5.0, worse_high=False)
    rng = random.Random(3100)
    stage = Stage()
    for _ in range(30):
        stage.add(minute(rng, 100, rate=0.02), minute(rng, 400, rate=0.10))
    assert stage.judge(rule).state == g.REGRESSING


def test_the_cusum_limit_grows_with_the_log_of_the_stage_length():
    base = g.DEFAULT_CUSUM_LIMIT[g.ERROR_RATE_DELTA]
    assert g.Spec(g.ERROR_RATE_DELTA, 1.0).limit() == base
    assert g.Spec(g.ERROR_RATE_DELTA, 1.0, stage_minutes=g.LIMIT_GROWTH_MINUTES).limit() == pytest.approx(
        base + math.log(2))
    week = g.Spec(g.ERROR_RATE_DELTA, 1.0, stage_minutes=7 * 24 * 60).limit()
    assert week == pytest.approx(base + math.log(1 + 7 * 24 * 60 / g.LIMIT_GROWTH_MINUTES))
    assert g.Spec(g.ERROR_RATE_DELTA, 1.0, cusum_limit=3.0, stage_minutes=60).limit() == pytest.approx(
        3.0 + math.log(1 + 60 / g.LIMIT_GROWTH_MINUTES))


def test_a_treatment_spread_wider_than_the_baseline_s_does_not_fire_the_tokens_cusum():
    # Patch Mode at 0.7x the baseline's tokens (healthy against 0.8x) but with a spread of 80% of its mean
    # (the baseline's is 25%): judged with the baseline's variance, the CUSUM fired on every seed.
    for seed in range(5):
        rng = random.Random(4000 + seed)
        stage = Stage()
        for _ in range(240):
            stage.add(minute(rng, 4, mean_tokens=840, sd_tokens=672), minute(rng, 16, mean_tokens=1200, sd_tokens=300))
            verdict = stage.judge(TOKENS_RULE)
            assert verdict.state != g.REGRESSING, (seed, verdict)
