"""Sequential statistics for guardrails: anytime-valid confidence sequences and CUSUM. Pure Python.

No Django import: the guardrail judge (alerts.guardrails), the simulation, the backtest and the tests
all call the same functions. shared/reference/guardrails.md has the formulas and references.

- Proportions (error and success rates): Robbins' beta-binomial mixture with a uniform prior. It is
  exact (no normal approximation), valid after every call from the first one, and needs no minimum
  number of errors, which a low-traffic flag needs. Its confidence set is an interval.
- Means (log latency, tokens per call): the asymptotic confidence sequence of Waudby-Smith et al.
  (2024) for the difference of two arms, with a plug-in variance; used only once each arm has
  MIN_CALLS_FOR_MEANS calls.
- Sudden changes: Page's CUSUM, Bernoulli for failures (Reynolds & Stoumbos 1999) and normal for
  means, over per-minute sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

MIN_CALLS_FOR_MEANS = 30
# The asymptotic sequence is tightest near this many calls (both arms together).
DEFAULT_T_STAR = 5_000
_BISECTIONS = 44  # interval edges to within 1e-13 of [0, 1]


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def mixture_log_bf(failures: int, calls: int, p0: float) -> float:
    """ln of Robbins' mixture martingale against "the rate is p0" after `failures` in `calls`.

    It is >= ln(1/alpha) at any time with probability at most alpha when the rate really is p0, so
    "p0 is refuted" may be read after every call.
    """
    if not 0 < p0 < 1:
        raise ValueError("p0 must lie strictly between 0 and 1")
    if not 0 <= failures <= calls:
        raise ValueError("need 0 <= failures <= calls")
    return _lbeta(failures + 1, calls - failures + 1) - (failures * math.log(p0)
                                                         + (calls - failures) * math.log1p(-p0))


def proportion_interval(failures: int, calls: int, alpha: float) -> tuple[float, float]:
    """The mixture's confidence set for the rate: every p0 not refuted at level alpha (an interval)."""
    if calls == 0:
        return 0.0, 1.0
    limit = math.log(1 / alpha)
    centre = failures / calls

    def refuted(p: float) -> bool:
        return mixture_log_bf(failures, calls, p) >= limit

    def edge(inside: float, outside: float) -> float:
        for _ in range(_BISECTIONS):
            middle = (inside + outside) / 2
            if refuted(middle):
                outside = middle
            else:
                inside = middle
        return inside

    tiny = 1e-12
    low = 0.0 if failures == 0 or not refuted(tiny) else edge(max(centre, tiny), tiny)
    high = 1.0 if failures == calls or not refuted(1 - tiny) else edge(min(centre, 1 - tiny), 1 - tiny)
    return low, high


def proportion_calls_needed(failures: int, calls: int, p0: float, alpha: float, *,
                            limit: int = 10_000_000) -> int | None:
    """About how many calls in all the mixture needs to refute p0 if the observed rate holds.

    None when the observed rate equals p0 (no amount of data would tell) or more than `limit` are needed.
    """
    rate = failures / calls if calls else None
    if rate is None or abs(rate - p0) < 1e-12:
        return None
    target = math.log(1 / alpha)

    def enough(n: int) -> bool:
        return mixture_log_bf(round(rate * n), n, p0) >= target

    high = max(calls, 1)
    while not enough(high):
        high *= 2
        if high > limit:
            return None
    low = max(calls, 1)
    if enough(low):
        return low
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle
    return high


def cs_half_width(sd: float, t: int, alpha: float, t_star: float = DEFAULT_T_STAR) -> float:
    """Half-width of the asymptotic confidence sequence for a mean after t observations with sd."""
    if t <= 0:
        return math.inf
    rho2 = (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / t_star
    return sd * math.sqrt(2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha))


def difference_interval(mean_t: float, var_t: float, n_t: int, mean_b: float, var_b: float, n_b: int,
                        alpha: float, *, scale: float = 1.0,
                        t_star: float = DEFAULT_T_STAR) -> tuple[float, float, float]:
    """Estimate and confidence-sequence bounds of mean_t - scale * mean_b (two independent arms).

    With N = n_t + n_b as time: sd = sqrt(N * v), v = var_t / n_t + scale^2 var_b / n_b.
    """
    d = mean_t - scale * mean_b
    v = var_t / n_t + scale * scale * var_b / n_b
    n = n_t + n_b
    half = cs_half_width(math.sqrt(n * v), n, alpha, t_star)
    return d, d - half, d + half


def difference_calls_needed(gap: float, sd: float, calls: int, alpha: float, *,
                            t_star: float = DEFAULT_T_STAR, limit: int = 10_000_000) -> int | None:
    """About how many calls in all until the half-width falls below `gap` (sd = sqrt(N v) stays put)."""
    if gap <= 0 or not math.isfinite(sd):
        return None
    if sd == 0:
        return calls
    n = max(calls, 2)
    while cs_half_width(sd, n, alpha, t_star) >= gap:
        n *= 2
        if n > limit:
            return None
    low = max(calls, 2)
    if cs_half_width(sd, low, alpha, t_star) < gap:
        return low
    high = n
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        if cs_half_width(sd, middle, alpha, t_star) < gap:
            high = middle
        else:
            low = middle
    return high


def bernoulli_cusum(minutes: Iterable[tuple[int, int]], p0: float, p1: float) -> float:
    """Page's CUSUM for a failure rate moving from p0 to p1, over (failures, calls) per minute.

    Each minute adds w = k ln(p1/p0) + (n - k) ln((1 - p1)/(1 - p0)); the statistic is max(0, S + w).
    """
    if not (0 < p0 < 1 and 0 < p1 < 1):
        raise ValueError("p0 and p1 must lie strictly between 0 and 1")
    up, down = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    s = 0.0
    for failures, calls in minutes:
        s = max(0.0, s + failures * up + (calls - failures) * down)
    return s


def normal_cusum(minutes: Iterable[tuple[int, float]], mu0: float, delta: float, variance: float) -> float:
    """Page's CUSUM for a mean moving from mu0 to mu0 + delta (delta < 0: a fall), per (n, sum of x).

    Each minute adds (delta / variance) * (sum - n (mu0 + delta / 2)).
    """
    if variance <= 0:
        raise ValueError("variance must be positive")
    s = 0.0
    for calls, total in minutes:
        s = max(0.0, s + delta / variance * (total - calls * (mu0 + delta / 2)))
    return s


def mean_and_variance(calls: int, total: float, squares: float) -> tuple[float, float]:
    """Sample mean and (unbiased) variance from a count, a sum and a sum of squares."""
    if calls == 0:
        return 0.0, 0.0
    mean = total / calls
    if calls < 2:
        return mean, 0.0
    return mean, max(0.0, (squares - calls * mean * mean) / (calls - 1))
