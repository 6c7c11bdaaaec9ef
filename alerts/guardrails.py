"""The guardrail judge: is the treatment worse than a rule allows, with confidence? Pure Python.

One verdict per rule from two views of the same data:

- the stage as a whole (every complete minute since the flag's exposure last changed): an anytime-valid
  confidence interval, so looking every minute keeps the false-alarm rate at the rule's alpha;
- the recent minutes (CUSUM over at most LOOKBACK_MINUTES of the stage): a step change after hours of
  healthy data is caught in minutes instead of being diluted by them.

States: REGRESSING (the interval lies wholly on the worse side of the threshold, or the CUSUM crossed
its limit), HEALTHY (the interval lies wholly on the better side and the CUSUM is below its limit), or
NOT_ENOUGH (neither: the verdict says about how many more calls would tell).

Metrics and their statistics:
- error_rate (%), treatment's failures: Robbins' mixture interval; Bernoulli CUSUM from p0 = the
  threshold to p1 = SHIFT_ABSOLUTE x p0.
- success_rate (%): the same statistic as error_rate, read the other way round (success = 100 - error).
- error_rate_delta (points): treatment minus baseline; the two arms' mixture intervals at alpha/2 each
  (exact for rare events); Bernoulli CUSUM from p0 = the baseline's recent rate plus the margin.
- latency_ratio (x baseline): ratio of geometric means of (1 + latency ms), from the difference of mean
  logs; asymptotic confidence sequence; normal CUSUM on log latency.
- tokens_ratio (x baseline): mean tokens of treatment minus ratio x baseline; asymptotic confidence
  sequence; normal CUSUM on tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from monitoring.histogram import log_latency

from . import sequential as seq

__all__ = ["log_latency"]  # re-exported: what the latency sums hold per call

REGRESSING, HEALTHY, NOT_ENOUGH = "regressing", "healthy", "not enough data"

ERROR_RATE = "error_rate"
SUCCESS_RATE = "success_rate"
ERROR_RATE_DELTA = "error_rate_delta"
LATENCY_RATIO = "latency_ratio"
TOKENS_RATIO = "tokens_ratio"

LOOKBACK_MINUTES = 120
# The Bernoulli CUSUMs look for a failure rate this many times the acceptable one (p1 = shift x p0): a
# 5% rule looks for 12.5%; a comparative rule against a 1% baseline with a 1-point margin looks for 10%.
SHIFT_ABSOLUTE = 2.5
SHIFT_DELTA = 5.0
# The smallest baseline failure rate a comparative CUSUM assumes: with a perfect baseline, one error
# would otherwise look infinitely unlikely.
BASELINE_RATE_FLOOR = 0.005
LIMIT_GROWTH_MINUTES = 720
# Default CUSUM limits per family, chosen by simulation (bench/bench_guardrails.py prints the
# false-alarm and delay figures they give).
DEFAULT_CUSUM_LIMIT = {ERROR_RATE: 7.0, SUCCESS_RATE: 7.0, ERROR_RATE_DELTA: 7.0, LATENCY_RATIO: 12.0,
                       TOKENS_RATIO: 12.0}


@dataclass(slots=True)
class Arm:
    """Sufficient statistics of one mode's calls: counts, and sums and squares for the means."""

    calls: int = 0
    failures: int = 0
    log_latency_sum: float = 0.0
    log_latency_sq: float = 0.0
    tokens_sum: float = 0.0
    tokens_sq: float = 0.0

    def add(self, other: Arm) -> None:
        self.calls += other.calls
        self.failures += other.failures
        self.log_latency_sum += other.log_latency_sum
        self.log_latency_sq += other.log_latency_sq
        self.tokens_sum += other.tokens_sum
        self.tokens_sq += other.tokens_sq

    def log_latency(self) -> tuple[float, float]:
        return seq.mean_and_variance(self.calls, self.log_latency_sum, self.log_latency_sq)

    def tokens(self) -> tuple[float, float]:
        return seq.mean_and_variance(self.calls, self.tokens_sum, self.tokens_sq)


@dataclass(frozen=True, slots=True)
class Spec:
    """A rule as the judge needs it. `worse_high`: larger values are worse (">" rules). `stage_minutes`:
    how long the stage has had data (the CUSUM's limit grows with it, see limit())."""

    metric: str
    threshold: float
    worse_high: bool = True
    alpha: float = 0.01
    cusum_limit: float | None = None
    stage_minutes: int = 0

    def limit(self) -> float:
        """The CUSUM limit: the rule's (or its family's default), plus ln(1 + minutes / LIMIT_GROWTH_MINUTES).

        A CUSUM's false alarms come at a rate per unit of time, so a week-long stage would see many more
        than a 12-hour one at a fixed limit; growing it with the log of the stage's length keeps the
        chance of a false alarm per stage small (0 in 20 simulated healthy week-long stages at 4 + 16
        calls a minute, against 2 at a fixed limit) and adds under 0.1 in the first hour."""
        base = self.cusum_limit if self.cusum_limit is not None else DEFAULT_CUSUM_LIMIT[self.metric]
        return base + math.log1p(max(0, self.stage_minutes) / LIMIT_GROWTH_MINUTES)


@dataclass(slots=True)
class Verdict:
    state: str
    unit: str
    threshold: float
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    cusum: float = 0.0
    cusum_limit: float = 0.0
    calls: int = 0  # treatment calls in the stage
    baseline_calls: int = 0
    calls_needed: int | None = None  # more calls (both arms for comparisons) until the interval decides
    by: str = ""  # interval, cusum or both, when regressing
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else _fmt(value, self.unit)

        if self.estimate is None:
            text = "no calls yet" if self.calls == 0 else (
                f"no estimate from {self.calls:,} treatment and {self.baseline_calls:,} baseline calls")
        else:
            text = f"{fmt(self.estimate)} (interval {fmt(self.low)} to {fmt(self.high)})"
        text += f", threshold {fmt(self.threshold)}"
        if self.state == REGRESSING:
            text += {"interval": ": the whole interval is on the worse side",
                     "cusum": f": recent minutes changed (CUSUM {self.cusum:.1f} > {self.cusum_limit:.1f})",
                     "both": f": the whole interval is on the worse side and recent minutes changed "
                             f"(CUSUM {self.cusum:.1f} > {self.cusum_limit:.1f})"}[self.by]
        elif self.state == NOT_ENOUGH:
            text += ": not enough data yet"
            if self.calls_needed is not None:
                text += f", about {self.calls_needed:,} more calls needed"
        return text + "".join(f"; {note}" for note in self.notes)


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "points":
        return f"{value:+.2f} points"
    return f"{value:.2f}%"


def _decide(verdict: Verdict, worse_high: bool, limit: float) -> Verdict:
    """State from the interval (low, high) against the threshold and the CUSUM against its limit."""
    verdict.cusum_limit = limit
    alarm = verdict.cusum > limit
    worse = bad_interval = good_interval = False
    if verdict.low is not None and verdict.high is not None:
        if worse_high:
            bad_interval, good_interval = verdict.low > verdict.threshold, verdict.high < verdict.threshold
        else:
            bad_interval, good_interval = verdict.high < verdict.threshold, verdict.low > verdict.threshold
        worse = bad_interval
    if worse or alarm:
        verdict.state = REGRESSING
        verdict.by = "both" if worse and alarm else ("interval" if worse else "cusum")
        verdict.calls_needed = None
    elif good_interval:
        verdict.state = HEALTHY
        verdict.calls_needed = None
    else:
        verdict.state = NOT_ENOUGH
    return verdict


def _clamp(p: float) -> float:
    return min(max(p, 1e-6), 1 - 1e-6)


def _sum(minutes: list[tuple[Arm, Arm]], side: int) -> Arm:
    total = Arm()
    for pair in minutes:
        total.add(pair[side])
    return total


def judge(spec: Spec, treatment: Arm, baseline: Arm, recent: list[tuple[Arm, Arm]]) -> Verdict:
    """The verdict of one rule: `treatment` and `baseline` since the stage began, `recent` per minute
    (treatment, baseline), oldest first, within the stage and the lookback."""
    if spec.metric in (ERROR_RATE, SUCCESS_RATE):
        return _judge_rate(spec, treatment, recent)
    if spec.metric == ERROR_RATE_DELTA:
        return _judge_rate_delta(spec, treatment, baseline, recent)
    if spec.metric in (LATENCY_RATIO, TOKENS_RATIO):
        return _judge_ratio(spec, treatment, baseline, recent)
    raise ValueError(f"unknown metric {spec.metric!r}")


def _judge_rate(spec: Spec, treatment: Arm, recent: list[tuple[Arm, Arm]]) -> Verdict:
    # A success-rate rule is the error-rate statistic read the other way: success < X% is error > 100 - X%.
    success = spec.metric == SUCCESS_RATE
    worse_high = spec.worse_high != success  # in error terms
    p0 = _clamp((100 - spec.threshold if success else spec.threshold) / 100)
    verdict = Verdict(NOT_ENOUGH, "%", spec.threshold, calls=treatment.calls)
    if treatment.calls:
        low, high = seq.proportion_interval(treatment.failures, treatment.calls, spec.alpha)
        rate = treatment.failures / treatment.calls
        if success:
            verdict.estimate, verdict.low, verdict.high = 100 * (1 - rate), 100 * (1 - high), 100 * (1 - low)
        else:
            verdict.estimate, verdict.low, verdict.high = 100 * rate, 100 * low, 100 * high
        if low <= p0 <= high:  # undecided: how many more calls would tell (the costliest step, so only then)
            needed = seq.proportion_calls_needed(treatment.failures, treatment.calls, p0, spec.alpha)
            verdict.calls_needed = None if needed is None else max(0, needed - treatment.calls)
    p1 = _clamp(p0 * SHIFT_ABSOLUTE if worse_high else p0 / SHIFT_ABSOLUTE)
    verdict.cusum = seq.bernoulli_cusum(((t.failures, t.calls) for t, _ in recent), p0, p1)
    return _decide(verdict, spec.worse_high, spec.limit())


def _judge_rate_delta(spec: Spec, treatment: Arm, baseline: Arm, recent: list[tuple[Arm, Arm]]) -> Verdict:
    margin = spec.threshold / 100
    verdict = Verdict(NOT_ENOUGH, "points", spec.threshold, calls=treatment.calls, baseline_calls=baseline.calls)
    if treatment.calls and baseline.calls:
        low_t, high_t = seq.proportion_interval(treatment.failures, treatment.calls, spec.alpha / 2)
        low_b, high_b = seq.proportion_interval(baseline.failures, baseline.calls, spec.alpha / 2)
        rate_t, rate_b = treatment.failures / treatment.calls, baseline.failures / baseline.calls
        verdict.estimate = 100 * (rate_t - rate_b)
        verdict.low, verdict.high = 100 * (low_t - high_b), 100 * (high_t - low_b)
        gap = abs(rate_t - rate_b - margin)
        width = (high_t - low_t + high_b - low_b) / 2
        if gap > 0 and width > gap:
            # The interval narrows about as 1 / sqrt(n): scale both arms alike.
            factor = (width / gap) ** 2
            verdict.calls_needed = math.ceil((treatment.calls + baseline.calls) * (factor - 1))
    recent_baseline = _sum(recent, 1)
    reference = recent_baseline if recent_baseline.calls >= 100 else baseline
    if reference.calls:
        base_rate = max(reference.failures / reference.calls, BASELINE_RATE_FLOOR)
        p0 = _clamp(base_rate + margin)  # the boundary: the threshold carries its own sign
        p1 = _clamp(p0 * SHIFT_DELTA if spec.worse_high else p0 / SHIFT_DELTA)
        if p0 != p1:
            verdict.cusum = seq.bernoulli_cusum(((t.failures, t.calls) for t, _ in recent), p0, p1)
    else:
        verdict.notes.append("no baseline calls to compare the recent minutes with")
    return _decide(verdict, spec.worse_high, spec.limit())


def _judge_ratio(spec: Spec, treatment: Arm, baseline: Arm, recent: list[tuple[Arm, Arm]]) -> Verdict:
    latency = spec.metric == LATENCY_RATIO
    ratio = spec.threshold
    verdict = Verdict(NOT_ENOUGH, "x", ratio, calls=treatment.calls, baseline_calls=baseline.calls)
    if ratio <= 0:
        verdict.notes.append("the threshold must be above 0")
        return _decide(verdict, spec.worse_high, spec.limit())

    def moments(arm: Arm) -> tuple[float, float]:
        return arm.log_latency() if latency else arm.tokens()

    enough = treatment.calls >= seq.MIN_CALLS_FOR_MEANS and baseline.calls >= seq.MIN_CALLS_FOR_MEANS
    if enough:
        (mean_t, var_t), (mean_b, var_b) = moments(treatment), moments(baseline)
        if latency:  # difference of mean logs against ln(ratio)
            d, low, high = seq.difference_interval(mean_t, var_t, treatment.calls, mean_b, var_b, baseline.calls,
                                                   spec.alpha)
            verdict.estimate, verdict.low, verdict.high = math.exp(d), math.exp(low), math.exp(high)
            gap = abs(d - math.log(ratio))
        elif mean_b > 0:  # mean_t - ratio * mean_b against 0, shown as a ratio of means
            d, low, high = seq.difference_interval(mean_t, var_t, treatment.calls, mean_b, var_b, baseline.calls,
                                                   spec.alpha, scale=ratio)
            verdict.estimate, verdict.low, verdict.high = ratio + d / mean_b, ratio + low / mean_b, \
                ratio + high / mean_b
            gap = abs(d)
        else:
            verdict.notes.append("the baseline used no tokens: nothing to compare with")
            return _decide(verdict, spec.worse_high, spec.limit())
        n = treatment.calls + baseline.calls
        scale = ratio if not latency else 1.0
        sd = math.sqrt(n * (var_t / treatment.calls + scale * scale * var_b / baseline.calls))
        needed = seq.difference_calls_needed(gap, sd, n, spec.alpha)
        verdict.calls_needed = None if needed is None else max(0, needed - n)
    else:
        verdict.calls_needed = max(0, seq.MIN_CALLS_FOR_MEANS - treatment.calls) + \
            max(0, seq.MIN_CALLS_FOR_MEANS - baseline.calls)
    verdict.cusum = _ratio_cusum(spec, latency, treatment, baseline, recent)
    return _decide(verdict, spec.worse_high, spec.limit())


def _ratio_cusum(spec: Spec, latency: bool, treatment: Arm, baseline: Arm, recent: list[tuple[Arm, Arm]]) -> float:
    """Normal CUSUM of the treatment's recent per-call values against the baseline's recent mean moved
    to the threshold (log latency + ln ratio, or tokens x ratio). The variance is the treatment's own over
    the stage once it has enough calls (its spread may differ from the baseline's), else the baseline's."""
    reference = _sum(recent, 1)
    if reference.calls < seq.MIN_CALLS_FOR_MEANS:
        reference = baseline
    if reference.calls < seq.MIN_CALLS_FOR_MEANS:
        return 0.0
    mean_b, var_b = reference.log_latency() if latency else reference.tokens()
    own = treatment.calls >= seq.MIN_CALLS_FOR_MEANS
    if latency:
        mu0 = mean_b + math.log(spec.threshold)
        delta = max(abs(math.log(spec.threshold)), 0.1)
        variance = treatment.log_latency()[1] if own else var_b
        minutes = ((t.calls, t.log_latency_sum) for t, _ in recent)
    else:
        mu0 = mean_b * spec.threshold
        delta = max(0.25 * mu0, 1e-9)
        variance = treatment.tokens()[1] if own else var_b * spec.threshold ** 2
        minutes = ((t.calls, t.tokens_sum) for t, _ in recent)
    if variance <= 0:
        return 0.0
    return seq.normal_cusum(minutes, mu0, delta if spec.worse_high else -delta, variance)
