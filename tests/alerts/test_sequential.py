"""alerts.sequential: the mixture test for a proportion, the asymptotic confidence sequence, CUSUMs.

Every expected value here is computed independently of the module: the beta function from factorials
with exact fractions, the half-width from a hand-worked case and a rearranged formula, the CUSUMs from
likelihood ratios in Page's "walk minus its running minimum" form. The coverage tests simulate seeded
data and count how often the running interval ever excluded the true value.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from fractions import Fraction

import pytest

from alerts import sequential as seq

# --------------------------------------------------------------------------------------------- helpers


def exact_log_bf(failures: int, calls: int, p0: Fraction) -> float:
    """ln[ B(S+1, n-S+1) / (p0^S (1-p0)^(n-S)) ] with B(a, b) = (a-1)! (b-1)! / (a+b-1)!, exactly."""
    beta = Fraction(math.factorial(failures) * math.factorial(calls - failures), math.factorial(calls + 1))
    ratio = beta / (p0**failures * (1 - p0) ** (calls - failures))
    return math.log(ratio.numerator) - math.log(ratio.denominator)


def refuted(failures: int, calls: int, p: float, alpha: float) -> bool:
    return seq.mixture_log_bf(failures, calls, p) >= math.log(1 / alpha)


def walk_minus_minimum(increments: list[float]) -> float:
    """Page's statistic written as W_n - min_{0 <= k <= n} W_k (W the running sum): no max(0, .) recursion."""
    walk, lowest = 0.0, 0.0
    for w in increments:
        walk += w
        lowest = min(lowest, walk)
    return walk - lowest


def allowance(alpha: float, runs: int) -> float:
    """alpha plus three Monte-Carlo standard errors: a correct method at exactly alpha fails ~0.1% of seeds."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


# ------------------------------------------------------------------------------------- mixture_log_bf

MIXTURE_CASES = [
    (0, 0, Fraction(1, 2)),
    (0, 1, Fraction(1, 2)),
    (1, 1, Fraction(1, 2)),
    (0, 10, Fraction(1, 20)),
    (10, 10, Fraction(1, 20)),
    (3, 56, Fraction(1, 20)),
    (5, 20, Fraction(1, 4)),
    (7, 50, Fraction(3, 100)),
    (50, 60, Fraction(9, 10)),
    (1, 100, Fraction(1, 1000)),
    (40, 200, Fraction(1, 50)),
]


@pytest.mark.parametrize(("failures", "calls", "p0"), MIXTURE_CASES)
def test_mixture_log_bf_matches_exact_factorials(failures, calls, p0):
    expected = exact_log_bf(failures, calls, p0)
    assert seq.mixture_log_bf(failures, calls, float(p0)) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("p0", [0.05, 0.02, 0.3])
def test_mixture_log_bf_with_binary_p0_matches_exact(p0):
    """A float p0 is an exact binary fraction: the exact computation with Fraction(p0) must agree too."""
    for failures, calls in [(0, 5), (2, 30), (9, 40), (25, 25)]:
        expected = exact_log_bf(failures, calls, Fraction(p0))
        assert seq.mixture_log_bf(failures, calls, p0) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("calls", "p0"), [(1, 0.5), (8, 0.05), (25, 0.2), (40, 0.9)])
def test_mixture_is_a_martingale_with_mean_one(calls, p0):
    """Under rate p0 the mixture's expected value is 1 at every n: sum_S C(n,S) p0^S (1-p0)^(n-S) BF = 1."""
    total = sum(math.comb(calls, s) * p0**s * (1 - p0) ** (calls - s) * math.exp(seq.mixture_log_bf(s, calls, p0))
                for s in range(calls + 1))
    assert total == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("p0", [0.0, 1.0, -0.1, 1.5])
def test_mixture_log_bf_rejects_p0_outside_open_unit_interval(p0):
    with pytest.raises(ValueError):
        seq.mixture_log_bf(1, 10, p0)


@pytest.mark.parametrize(("failures", "calls"), [(11, 10), (1, 0), (-1, 10)])
def test_mixture_log_bf_rejects_impossible_counts(failures, calls):
    with pytest.raises(ValueError):
        seq.mixture_log_bf(failures, calls, 0.05)


# --------------------------------------------------------------------------------- proportion_interval

INTERVAL_CASES = [(3, 56, 0.01), (1, 10, 0.05), (20, 1000, 0.05), (2000, 100_000, 0.01), (9, 10, 0.05),
                  (50, 100, 0.1), (1, 3, 0.05)]


@pytest.mark.parametrize(("failures", "calls", "alpha"), INTERVAL_CASES)
def test_interval_is_exactly_the_set_not_refuted(failures, calls, alpha):
    low, high = seq.proportion_interval(failures, calls, alpha)
    assert 0 <= low < high <= 1
    # Every point inside (edges included) is not refuted.
    for i in range(51):
        p = low + (high - low) * i / 50
        if 0 < p < 1:
            assert not refuted(failures, calls, p, alpha), p
    # Points just outside an interior edge are refuted.
    if low > 0:
        assert refuted(failures, calls, low * (1 - 1e-6), alpha)
        assert refuted(failures, calls, low / 2, alpha)
    if high < 1:
        assert refuted(failures, calls, high + (1 - high) * 1e-6, alpha)
        assert refuted(failures, calls, (high + 1) / 2, alpha)


@pytest.mark.parametrize(("failures", "calls", "alpha"), [*INTERVAL_CASES, (0, 50, 0.05), (50, 50, 0.05)])
def test_interval_contains_observed_rate(failures, calls, alpha):
    low, high = seq.proportion_interval(failures, calls, alpha)
    assert low <= failures / calls <= high


def test_interval_with_no_calls_is_everything():
    assert seq.proportion_interval(0, 0, 0.05) == (0.0, 1.0)


@pytest.mark.parametrize("calls", [1, 10, 100, 10_000])
def test_no_failures_gives_lower_bound_zero(calls):
    low, high = seq.proportion_interval(0, calls, 0.05)
    assert low == 0.0
    assert 0 < high < 1
    # With no failures the statistic is -ln(n+1) - n ln(1-p): the upper edge solves it equal to ln(1/alpha).
    expected = 1 - math.exp(-(math.log(1 / 0.05) + math.log(calls + 1)) / calls)
    assert high == pytest.approx(expected, rel=1e-9)


def test_all_failures_gives_upper_bound_one():
    low, high = seq.proportion_interval(10, 10, 0.01)
    assert high == 1.0
    # Mirror of the case above: -ln(n+1) - n ln(p) = ln(1/alpha).
    assert low == pytest.approx(math.exp(-(math.log(100) + math.log(11)) / 10), rel=1e-9)


def test_interval_narrows_as_calls_grow_at_fixed_rate():
    widths = []
    for calls in (50, 100, 500, 1000, 5000, 10_000, 100_000):
        low, high = seq.proportion_interval(calls // 50, calls, 0.05)  # 2%
        assert low <= 0.02 <= high
        widths.append(high - low)
    assert all(a > b for a, b in itertools.pairwise(widths)), widths
    # At 100,000 calls the fixed-sample 95% interval is 2 * 1.96 * sqrt(0.02 * 0.98 / 1e5) ~ 0.0017 wide;
    # the anytime-valid one pays a log factor (ln(1/alpha) + ln(n)/2 instead of 1.96^2 / 2), ~2-3x.
    assert 0.0017 < widths[-1] < 0.005


def test_smaller_alpha_gives_wider_interval():
    wide = seq.proportion_interval(20, 1000, 0.001)
    narrow = seq.proportion_interval(20, 1000, 0.1)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


# ------------------------------------------------------------------------------ coverage: the mixture


def test_mixture_interval_coverage_checked_after_every_call():
    """p = 2%, alpha = 0.05, 400 seeded runs of 3,000 calls: the running interval excluded p in <= alpha.

    The interval is the set of rates the statistic does not refute, so "the interval excludes p" after a
    call is "p is refuted" then; that is checked after every call (cheap), and the interval itself is
    checked against it every 100 calls and at the first exclusion.
    """
    p, alpha, runs, calls = 0.02, 0.05, 400, 3000
    misses = 0
    for run in range(runs):
        rng = random.Random(10_000 + run)
        failures = 0
        for t in range(1, calls + 1):
            failures += rng.random() < p
            excluded = refuted(failures, t, p, alpha)
            if excluded or t % 100 == 0:
                low, high = seq.proportion_interval(failures, t, alpha)
                assert (not low <= p <= high) == excluded, (run, t, failures, low, high)
            if excluded:
                misses += 1
                break
    assert misses / runs <= allowance(alpha, runs), misses


# ------------------------------------------------------------------------------------- cs_half_width


def test_cs_half_width_hand_worked_case():
    """alpha = 1/e and t* = 2 + ln 3 make rho^2 = (2 + ln 3) / t* = 1; at t = 3, t rho^2 + 1 = 4, so
    the half-width is sd * sqrt(2 * 4 / 9 * ln(2 e)) = sd * sqrt(8 (1 + ln 2) / 9)."""
    alpha, t_star = math.exp(-1), 2 + math.log(3)
    assert seq.cs_half_width(1.0, 3, alpha, t_star) == pytest.approx(math.sqrt(8 * (1 + math.log(2)) / 9), rel=1e-12)
    assert seq.cs_half_width(2.5, 3, alpha, t_star) == pytest.approx(2.5 * math.sqrt(8 * (1 + math.log(2)) / 9),
                                                                     rel=1e-12)
    # rho^2 = 1/4 with t = 12: t rho^2 + 1 = 4 again, 2 * 4 / (144 / 4) = 2 / 9.
    assert seq.cs_half_width(1.0, 12, alpha, 4 * t_star) == pytest.approx(math.sqrt(2 * (1 + math.log(2)) / 9),
                                                                          rel=1e-12)


def rearranged_half_width(sd: float, t: int, alpha: float, t_star: float) -> float:
    """The same formula rearranged: 2 sd^2 (1/t + 1/(t^2 rho^2)) (ln(1 + t rho^2) / 2 - ln alpha)."""
    la = math.log(alpha)
    rho2 = (-2 * la + math.log(1 - 2 * la)) / t_star
    return math.sqrt(2 * sd * sd * (1 / t + 1 / (t * t * rho2)) * (0.5 * math.log1p(t * rho2) - la))


@pytest.mark.parametrize(("sd", "t", "alpha", "t_star"), [
    (1.0, 1, 0.05, 5000), (1.0, 100, 0.05, 5000), (0.5, 5000, 0.01, 5000), (3.0, 10**6, 0.05, 2000),
    (0.15, 2000, 0.1, 10_000), (42.0, 31, 0.001, 100),
])
def test_cs_half_width_matches_formula(sd, t, alpha, t_star):
    assert seq.cs_half_width(sd, t, alpha, t_star) == pytest.approx(rearranged_half_width(sd, t, alpha, t_star),
                                                                    rel=1e-12)


def test_cs_half_width_default_t_star():
    assert seq.cs_half_width(1.0, 700, 0.05) == pytest.approx(rearranged_half_width(1.0, 700, 0.05, 5000), rel=1e-12)


def test_cs_half_width_is_infinite_without_data():
    assert seq.cs_half_width(1.0, 0, 0.05) == math.inf
    assert seq.cs_half_width(1.0, -3, 0.05) == math.inf


def test_cs_half_width_decreases_in_t():
    times = [int(10 ** (k / 4)) for k in range(4, 33)]  # 10 .. 10^8
    widths = [seq.cs_half_width(1.0, t, 0.05) for t in times]
    assert all(a > b for a, b in itertools.pairwise(widths))
    assert widths[-1] < 1e-3


def test_cs_half_width_is_wider_than_a_fixed_sample_interval():
    """A sequence valid at all times at once cannot be narrower than the pointwise z interval at any t."""
    z = statistics.NormalDist().inv_cdf(1 - 0.05 / 2)
    for t in (1, 10, 100, 1000, 5000, 10**5, 10**7):
        assert seq.cs_half_width(1.0, t, 0.05) > z / math.sqrt(t)


# ----------------------------------------------------------------------------------- difference_interval


def test_difference_interval_uses_pooled_sd_with_total_time():
    d, low, high = seq.difference_interval(10.0, 4.0, 40, 7.0, 9.0, 160, 0.05, scale=1.2)
    assert d == pytest.approx(10.0 - 1.2 * 7.0)
    n = 200
    sd = math.sqrt(n * (4.0 / 40 + 1.44 * 9.0 / 160))
    half = rearranged_half_width(sd, n, 0.05, seq.DEFAULT_T_STAR)
    assert low == pytest.approx(d - half, rel=1e-12)
    assert high == pytest.approx(d + half, rel=1e-12)


def test_difference_interval_coverage_two_normal_arms():
    """Two normal arms (1:4 split, sds 1 and 2), alpha = 0.05, 300 seeded runs of 3,000 calls, the interval
    checked after every call once each arm has MIN_CALLS_FOR_MEANS calls: it ever excluded the true
    difference in at most alpha of the runs."""
    alpha, runs, calls = 0.05, 300, 3000
    mu, sd = (1.0, 0.5), (1.0, 2.0)
    true = mu[0] - mu[1]
    misses = 0
    for run in range(runs):
        rng = random.Random(20_000 + run)
        n, s, q = [0, 0], [0.0, 0.0], [0.0, 0.0]
        for _ in range(calls):
            arm = 0 if rng.random() < 0.2 else 1
            x = rng.gauss(mu[arm], sd[arm])
            n[arm] += 1
            s[arm] += x
            q[arm] += x * x
            if min(n) < seq.MIN_CALLS_FOR_MEANS:
                continue
            mean_t, var_t = seq.mean_and_variance(n[0], s[0], q[0])
            mean_b, var_b = seq.mean_and_variance(n[1], s[1], q[1])
            _, low, high = seq.difference_interval(mean_t, var_t, n[0], mean_b, var_b, n[1], alpha)
            if not low <= true <= high:
                misses += 1
                break
    assert misses / runs <= allowance(alpha, runs), misses


# ------------------------------------------------------------------------------------------ calls needed

CALLS_NEEDED_CASES = [(3, 56, 0.05, 0.01), (1, 100, 0.05, 0.05), (30, 1000, 0.02, 0.05), (0, 10, 0.05, 0.01),
                      (10, 100, 0.05, 0.01), (7, 100, 0.05, 0.05), (1, 50, 0.05, 0.01)]


@pytest.mark.parametrize(("failures", "calls", "p0", "alpha"), CALLS_NEEDED_CASES)
def test_proportion_calls_needed_decides_and_80_percent_does_not(failures, calls, p0, alpha):
    rate = failures / calls
    needed = seq.proportion_calls_needed(failures, calls, p0, alpha)
    assert needed is not None and needed > calls
    at = round(rate * needed)
    assert refuted(at, needed, p0, alpha)
    low, high = seq.proportion_interval(at, needed, alpha)
    assert not low <= p0 <= high
    fewer = int(0.8 * needed)
    assert not refuted(round(rate * fewer), fewer, p0, alpha)
    low, high = seq.proportion_interval(round(rate * fewer), fewer, alpha)
    assert low <= p0 <= high


def test_proportion_calls_needed_when_already_decided_is_the_calls_so_far():
    assert refuted(10, 10, 0.05, 0.01)
    assert seq.proportion_calls_needed(10, 10, 0.05, 0.01) == 10


@pytest.mark.parametrize(("failures", "calls", "p0"), [(5, 100, 0.05), (1, 50, 0.02), (0, 0, 0.05)])
def test_proportion_calls_needed_none_without_a_difference(failures, calls, p0):
    assert seq.proportion_calls_needed(failures, calls, p0, 0.05) is None


def test_proportion_calls_needed_none_beyond_limit():
    assert seq.proportion_calls_needed(501, 10_000, 0.05, 0.01, limit=100_000) is None


@pytest.mark.parametrize(("gap", "sd", "calls", "alpha"), [
    (0.1, 1.0, 60, 0.05), (0.05, 2.0, 1000, 0.01), (0.3, 0.5, 60, 0.01), (1.0, 10.0, 200, 0.05),
])
def test_difference_calls_needed_decides_and_80_percent_does_not(gap, sd, calls, alpha):
    needed = seq.difference_calls_needed(gap, sd, calls, alpha)
    assert needed is not None and needed > calls
    assert seq.cs_half_width(sd, needed, alpha) < gap
    assert seq.cs_half_width(sd, int(0.8 * needed), alpha) >= gap
    # The same through difference_interval: equal arms with variance var each keep sqrt(N v) = sd.
    var = sd * sd / 4

    def decides(total: int) -> bool:
        _, low, _ = seq.difference_interval(gap, var, total // 2, 0.0, var, total // 2, alpha)
        return low > 0

    assert decides(needed + needed % 2)
    assert not decides(int(0.8 * needed) // 2 * 2)


def test_difference_calls_needed_edge_cases():
    assert seq.difference_calls_needed(0.0, 1.0, 100, 0.05) is None
    assert seq.difference_calls_needed(-0.1, 1.0, 100, 0.05) is None
    assert seq.difference_calls_needed(0.1, math.inf, 100, 0.05) is None
    assert seq.difference_calls_needed(0.1, 0.0, 100, 0.05) == 100
    assert seq.difference_calls_needed(1e-6, 1.0, 100, 0.05, limit=10_000) is None
    # Already decided: the calls so far.
    assert seq.cs_half_width(1.0, 100_000, 0.05) < 0.1
    assert seq.difference_calls_needed(0.1, 1.0, 100_000, 0.05) == 100_000


# ------------------------------------------------------------------------------------------------ CUSUM


def bernoulli_increments(minutes: list[tuple[int, int]], p0: float, p1: float) -> list[float]:
    """Log-likelihood ratio of each minute's binomial count, from the probability mass functions."""
    def pmf(k: int, n: int, p: float) -> float:
        return math.comb(n, k) * p**k * (1 - p) ** (n - k)

    return [math.log(pmf(k, n, p1) / pmf(k, n, p0)) for k, n in minutes]


def normal_increments(minutes: list[list[float]], mu0: float, delta: float, variance: float) -> list[float]:
    """Per minute, the sum over its calls of ln N(x; mu0 + delta, var) - ln N(x; mu0, var)."""
    def logpdf(x: float, mean: float) -> float:
        return -((x - mean) ** 2) / (2 * variance) - 0.5 * math.log(2 * math.pi * variance)

    return [sum(logpdf(x, mu0 + delta) - logpdf(x, mu0) for x in values) for values in minutes]


def test_bernoulli_cusum_matches_page_from_likelihoods():
    rng = random.Random(7)
    minutes = [(rng.binomialvariate(n, 0.03), n) for n in (rng.randint(0, 60) for _ in range(200))]
    for p0, p1 in [(0.01, 0.05), (0.05, 0.125), (0.02, 0.1), (0.1, 0.04)]:
        expected = walk_minus_minimum(bernoulli_increments(minutes, p0, p1))
        assert seq.bernoulli_cusum(minutes, p0, p1) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        for cut in (1, 17, 90):  # every prefix, too
            expected = walk_minus_minimum(bernoulli_increments(minutes[:cut], p0, p1))
            assert seq.bernoulli_cusum(minutes[:cut], p0, p1) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_bernoulli_cusum_hand_values():
    assert seq.bernoulli_cusum([], 0.01, 0.05) == 0.0
    # One minute, 3 failures in 10 calls, 0.05 -> 0.125.
    w = 3 * math.log(2.5) + 7 * math.log(0.875 / 0.95)
    assert seq.bernoulli_cusum([(3, 10)], 0.05, 0.125) == pytest.approx(w)
    # A clean minute only pulls the statistic down to 0, never below.
    assert seq.bernoulli_cusum([(3, 10), (0, 1000)], 0.05, 0.125) == 0.0
    assert seq.bernoulli_cusum([(0, 1000), (3, 10)], 0.05, 0.125) == pytest.approx(w)


def test_bernoulli_cusum_alarms_on_a_step_and_stays_low_in_control():
    p0, p1, h, per_minute = 0.01, 0.05, 6.0, 100
    delays, in_control, false_alarms = [], [], 0
    for seed in range(50):
        rng = random.Random(300 + seed)
        minutes = [(rng.binomialvariate(per_minute, p0), per_minute) for _ in range(120)]
        path = [seq.bernoulli_cusum(minutes[:m], p0, p1) for m in range(1, 121)]
        in_control.extend(path)
        false_alarms += max(path) > h
        for step in range(1, 31):
            minutes.append((rng.binomialvariate(per_minute, p1), per_minute))
            if seq.bernoulli_cusum(minutes[-120:], p0, p1) > h:
                delays.append(step)
                break
        else:
            delays.append(math.inf)
    # Expected increment at p1 is 100 KL(p1 || p0) ~ 4.3 per minute: a few minutes each time.
    assert max(delays) <= 10, delays
    assert statistics.median(delays) <= 4, delays
    # In control the increments average -100 KL(p0 || p1) ~ -2.3: the statistic sits near 0.
    assert statistics.median(in_control) < 0.5
    assert statistics.mean(in_control) < 1.5
    # A false alarm within 120 minutes has probability at most ~120 e^-h = 0.3 (Ville's bound per start).
    assert false_alarms <= 20


@pytest.mark.parametrize(("p0", "p1"), [(0.0, 0.1), (1.0, 0.5), (0.1, 0.0), (0.1, 1.0), (-0.1, 0.2), (0.2, 1.2)])
def test_bernoulli_cusum_rejects_rates_outside_open_unit_interval(p0, p1):
    with pytest.raises(ValueError):
        seq.bernoulli_cusum([(1, 10)], p0, p1)


def test_normal_cusum_matches_page_from_likelihoods():
    rng = random.Random(11)
    values = [[rng.gauss(5.0, 0.7) for _ in range(rng.randint(0, 20))] for _ in range(150)]
    minutes = [(len(v), sum(v)) for v in values]
    for mu0, delta, variance in [(5.0, 0.4, 0.49), (4.8, 0.3, 0.5), (5.2, -0.3, 0.6), (5.0, -0.5, 0.49)]:
        expected = walk_minus_minimum(normal_increments(values, mu0, delta, variance))
        assert seq.normal_cusum(minutes, mu0, delta, variance) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_normal_cusum_alarms_on_a_step_and_stays_low_in_control():
    mu0, delta, variance, h, per_minute = 5.0, 0.4, 0.25, 12.0, 30
    for direction in (1, -1):
        for seed in range(20):
            rng = random.Random(500 + seed)

            def minute(mean: float, rng: random.Random = rng) -> tuple[int, float]:
                return per_minute, sum(rng.gauss(mean, 0.5) for _ in range(per_minute))

            minutes = [minute(mu0) for _ in range(120)]
            path = [seq.normal_cusum(minutes[:m], mu0, direction * delta, variance) for m in range(1, 121)]
            assert max(path) < h
            assert statistics.median(path) < 1.0
            minutes += [minute(mu0 + direction * delta) for _ in range(3)]
            # Expected gain per minute 30 delta^2 / (2 var) = 9.6: over 12 within three minutes.
            assert seq.normal_cusum(minutes, mu0, direction * delta, variance) > h
            # The opposite direction does not see it.
            assert seq.normal_cusum(minutes, mu0, -direction * delta, variance) < h


@pytest.mark.parametrize("variance", [0.0, -1.0])
def test_normal_cusum_rejects_non_positive_variance(variance):
    with pytest.raises(ValueError):
        seq.normal_cusum([(1, 1.0)], 0.0, 0.5, variance)


# --------------------------------------------------------------------------------------- mean_and_variance


def test_mean_and_variance_from_sums():
    rng = random.Random(3)
    xs = [rng.lognormvariate(5, 0.5) for _ in range(500)]
    mean, var = seq.mean_and_variance(len(xs), sum(xs), sum(x * x for x in xs))
    assert mean == pytest.approx(statistics.fmean(xs), rel=1e-12)
    assert var == pytest.approx(statistics.variance(xs), rel=1e-8)
    assert seq.mean_and_variance(0, 0.0, 0.0) == (0.0, 0.0)
    assert seq.mean_and_variance(1, 3.0, 9.0) == (3.0, 0.0)
    # A sum of squares below n mean^2 (rounding) never makes a variance negative.
    assert seq.mean_and_variance(3, 0.3, 0.0)[1] == 0.0
