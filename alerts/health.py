"""Reads for the guardrails: each flag's current stage, its data, and the verdict of every rule. No writes.

A flag's stage is the time since its exposure last changed (flags.selectors.stage_starts): the
population changed then, so the statistics start again. Only complete minutes count: a check at
12:01:00 (or 12:01:17) judges the minutes up to 12:00 inclusive, and the stage's first minute is the
first whole minute after the change, so no call made before the stage counts.

Used by the alert check (alerts.services), the plan gate (alerts.plans), the dashboard and the backtest,
so they all see the same numbers for the same `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flags import selectors as flag_selectors
from flags.models import Flag
from monitoring import selectors as metrics

from . import guardrails
from .guardrails import Arm, Spec, Verdict
from .models import OPEN_STATES, Alert, AlertRule, Comparison, Metric, Severity

COVERED = "covered"


@dataclass
class StageData:
    started_at: datetime  # when the exposure last changed
    data_from: datetime  # the first complete minute that counts
    data_to: datetime  # the end of the last complete minute
    treatment: Arm = field(default_factory=Arm)
    baseline: Arm = field(default_factory=Arm)
    recent: list[tuple[Arm, Arm]] = field(default_factory=list)

    @property
    def minutes(self) -> int:
        return max(0, int((self.data_to - self.data_from).total_seconds() // 60))


@dataclass
class RuleResult:
    rule: AlertRule
    verdict: Verdict
    state: str  # guardrails.REGRESSING, HEALTHY, NOT_ENOUGH, or COVERED
    detail: str
    actions: list[str] = field(default_factory=list)
    acted: bool = False  # the check changed the flag or its plan for this rule

    @property
    def value(self) -> float | None:
        return self.verdict.estimate


def _arm(sums: dict[str, Any] | None) -> Arm:
    if not sums:
        return Arm()
    calls = int(sums["calls"])
    return Arm(calls=calls, failures=calls - int(sums["successes"]), log_latency_sum=float(sums["log_latency_sum"]),
               log_latency_sq=float(sums["log_latency_sq"]), tokens_sum=float(sums["tokens_sum"]),
               tokens_sq=float(sums["tokens_sq"]))


def stage_data(flags: list[Flag], now: datetime, *, since: dict[int, datetime] | None = None) -> dict[str, StageData]:
    """Each flag's stage totals and recent minutes as of `now`. `since` moves a flag's start later (a
    plan's stage began at a change that left the percentage as it was)."""
    end = metrics.minute_floor(now)
    starts = flag_selectors.stage_starts(flags, now)
    out: dict[str, StageData] = {}
    for flag in flags:
        started = starts.get(flag.pk, flag.created_at)
        if since and flag.pk in since and since[flag.pk] > started:
            started = since[flag.pk]
        data_from, end = metrics.stage_window(started, now)
        out[flag.key] = StageData(started, data_from, end)
    groups: dict[datetime, list[Flag]] = {}
    for flag in flags:
        groups.setdefault(out[flag.key].data_from, []).append(flag)
    for data_from, group in groups.items():
        if data_from >= end:
            continue
        sums = metrics.moments_between(group, data_from, end)
        for flag in group:
            data = out[flag.key]
            data.treatment = _arm(sums[flag.key][flag.treatment_mode])
            data.baseline = _arm(sums[flag.key][flag.baseline_mode])
    lookback = end - timedelta(minutes=guardrails.LOOKBACK_MINUTES)
    earliest = max(lookback, min((d.data_from for d in out.values()), default=end))
    if earliest < end:
        minutes = metrics.moments_per_minute(flags, earliest, end)
        for flag in flags:
            data = out[flag.key]
            first = max(data.data_from, lookback)
            data.recent = [(_arm(modes.get(flag.treatment_mode)), _arm(modes.get(flag.baseline_mode)))
                           for minute, modes in sorted(minutes[flag.key].items()) if minute >= first]
    return out


def spec_for(rule: AlertRule, stage_minutes: int = 0) -> Spec:
    return Spec(metric=rule.metric, threshold=float(rule.threshold),
                worse_high=rule.comparison in (Comparison.GT, Comparison.GTE), alpha=float(rule.alpha),
                cusum_limit=float(rule.cusum_limit) if rule.cusum_limit is not None else None,
                stage_minutes=stage_minutes)


def _covers(error_rule: AlertRule, success_rule: AlertRule) -> bool:
    """An error-rate rule "error > T" firing implies the success-rate rule "success < X" when T >= 100 - X."""
    return (error_rule.metric == Metric.ERROR_RATE and error_rule.comparison in (Comparison.GT, Comparison.GTE)
            and success_rule.metric == Metric.SUCCESS_RATE
            and success_rule.comparison in (Comparison.LT, Comparison.LTE)
            and error_rule.threshold >= 100 - success_rule.threshold)


def judge_rules(rules: list[AlertRule], data: StageData,
                open_rule_ids: frozenset[int] | set[int] = frozenset()) -> list[RuleResult]:
    """Every rule's verdict on one flag's stage. A success-rate rule is COVERED (opens no episode of its own)
    while an error-rate rule that implies it is regressing or has an open episode: one regression, one
    episode."""
    results = []
    for rule in rules:
        verdict = guardrails.judge(spec_for(rule, data.minutes), data.treatment, data.baseline, data.recent)
        results.append(RuleResult(rule, verdict, verdict.state, verdict.describe()))
    for result in results:
        if result.state != guardrails.REGRESSING or result.rule.metric != Metric.SUCCESS_RATE:
            continue
        for other in results:
            if other.rule.pk != result.rule.pk and _covers(other.rule, result.rule) and (
                    other.state == guardrails.REGRESSING or other.rule.pk in open_rule_ids):
                result.state = COVERED
                result.detail = f"{result.detail}; the same condition as '{other.rule.name}', which fires for it"
                break
    return results


def flag_health(flag: Flag, now: datetime, *, since: datetime | None = None) -> tuple[StageData, list[RuleResult]]:
    """One flag's stage and the verdicts of its enabled rules (the dashboard's tiles, the plan gate)."""
    data = stage_data([flag], now, since={flag.pk: since} if since else None)[flag.key]
    rules = list(AlertRule.objects.filter(flag=flag, enabled=True).order_by("id"))
    open_ids = set(Alert.objects.filter(flag=flag, state__in=OPEN_STATES).values_list("rule_id", flat=True))
    return data, judge_rules(rules, data, open_ids)


def firing_critical(flag: Flag) -> list[Alert]:
    """Open critical episodes: raising the flag's exposure while any is open asks for confirmation."""
    return list(Alert.objects.filter(flag=flag, state__in=OPEN_STATES, severity=Severity.CRITICAL)
                .select_related("rule").order_by("opened_at"))


def firing_reason(alerts: list[Alert]) -> str:
    names = ", ".join(f"'{alert.rule.name}'" for alert in alerts)
    return f"critical guardrail{'s' if len(alerts) > 1 else ''} firing: {names}"


def guardrail_series(flag: Flag, rules: list[AlertRule], window: str, now: datetime) -> dict[str, Any]:
    """Each rule's estimate and confidence interval over the dashboard's window, as the guardrail saw it at
    each point: the interval of the stage in force then, from that stage's start to the point (it starts
    again where the rollout changed). Points per minute up to 1 h, per hour beyond. The CUSUM view of
    recent minutes is not drawn (the tile shows it now)."""
    # Complete minutes only, as the checks judge.
    chart = metrics.chart_buckets(window, metrics.window_bounds(window, now, complete_minutes=True)[1])
    start, end, step = chart.start, chart.end, chart.step
    per_bucket = metrics.moments_per_minute([flag], start, end, resolution=chart.resolution)[flag.key]
    changes = flag_selectors.exposure_changes(flag, until=end)
    bases: dict[datetime, tuple[Arm, Arm]] = {}

    def stage_from(point: datetime) -> datetime:
        started = flag.created_at
        for change in changes:
            if change.created_at <= point:
                started = change.created_at
        return metrics.minute_ceil(started)

    specs = [(rule, spec_for(rule)) for rule in rules]
    lines: dict[str, dict[str, Any]] = {
        str(rule.pk): {"name": rule.name, "threshold": float(rule.threshold), "estimate": [], "low": [], "high": []}
        for rule in rules}
    labels = []
    for bucket in chart.starts:
        point = min(bucket + step, end)
        labels.append(point.isoformat())
        data_from = stage_from(point)
        treatment, baseline = Arm(), Arm()
        if data_from < start:
            if data_from not in bases:
                sums = metrics.moments_between([flag], data_from, start)[flag.key]
                bases[data_from] = (_arm(sums[flag.treatment_mode]), _arm(sums[flag.baseline_mode]))
            treatment.add(bases[data_from][0])
            baseline.add(bases[data_from][1])
        for other, modes in per_bucket.items():
            if other >= data_from and other < point:
                treatment.add(_arm(modes.get(flag.treatment_mode)))
                baseline.add(_arm(modes.get(flag.baseline_mode)))
        for rule, spec in specs:
            verdict = guardrails.judge(spec, treatment, baseline, [])
            line = lines[str(rule.pk)]
            line["estimate"].append(verdict.estimate)
            line["low"].append(verdict.low)
            line["high"].append(verdict.high)
    markers = [{"at": c.created_at.isoformat(), "text": f"{c.change_summary} by {c.actor} ({c.get_source_display()})"
                + (f": {c.reason}" if c.reason else "")} for c in changes if c.created_at >= start]
    return {"labels": labels, "rules": lines, "markers": markers}
