"""What the flag page's charts draw: the metric series of both modes, and (from the alerts app, which
builds on flags and monitoring) what explains them: the guardrails' thresholds as dashed lines, and markers
where the rollout changed or an alert fired or resolved.

Times cross to the browser as epoch milliseconds (the charts' x axis is linear in time, in UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypedDict

from django.db.models import Q
from django.utils import timezone

from flags import selectors as flag_selectors
from flags.models import AuditEntry, Flag
from monitoring import selectors as metrics

from .models import Alert, AlertRule, Comparison, Metric, Severity

CHART_KINDS = ("error_rate", "latency", "tokens", "savings")
WINDOW_NAMES = {"15m": "15 min", "1h": "1 h", "24h": "24 h", "7d": "7 days"}
_FLIPPED = {Comparison.GT: "<", Comparison.GTE: "<=", Comparison.LT: ">", Comparison.LTE: ">="}


class Point(TypedDict):
    x: int  # epoch ms
    y: float


class Threshold(TypedDict):
    label: str
    short: str  # drawn on the line itself
    severity: str  # the worst of the rules drawn by this line
    value: float | None  # a horizontal line; None: the line follows the baseline (points)
    points: list[Point]


class Marker(TypedDict):
    at: str
    x: int
    kind: str  # rollout, alert_fired, alert_resolved
    text: str  # the whole line: when, what, who and why
    who: str
    why: str


class XRange(TypedDict):
    min: int
    max: int


class ChartData(TypedDict):
    series: dict[str, Any]
    treatment: str
    baseline: str
    window: str
    step_ms: int
    x_range: XRange
    has_data: bool
    empty_note: str
    markers: list[Marker]
    thresholds: dict[str, list[Threshold]]


def chart_data(flag: Flag, window: str, now: datetime | None = None) -> ChartData:
    """The metric charts of a flag over a window ending at `now`: the series, the x range to show (the
    buckets with calls and the markers, padded), the guardrail thresholds per chart and the markers."""
    now = now or timezone.now()
    series = metrics.series(flag, window, now)
    chart = metrics.chart_buckets(window, metrics.window_bounds(window, now)[1])
    markers = chart_markers(flag, chart.start, chart.end, now)
    with_data = [ms(bucket) for i, bucket in enumerate(chart.starts)
                 if any(mode["calls"][i] for mode in series["modes"].values())]
    step = int(chart.step.total_seconds() * 1000)
    x_range = pick_range(with_data + [m["x"] for m in markers], ms(chart.start), ms(chart.end), step)
    rules = list(AlertRule.objects.filter(flag=flag, enabled=True))
    return {
        "series": series,
        "treatment": flag.treatment_mode,
        "baseline": flag.baseline_mode,
        "window": window,
        "step_ms": step,
        "x_range": x_range,
        "has_data": bool(with_data),
        "empty_note": f"No calls in the last {WINDOW_NAMES.get(window, window)}",
        "markers": markers,
        "thresholds": chart_thresholds(rules, series, flag.baseline_mode, x_range),
    }


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def pick_range(moments: list[int], start: int, end: int, step: int) -> XRange:
    """The x range worth showing: from the first to the last moment (bucket with calls or marker), padded
    by a step or 5% of the span, within the window; the whole window when there is nothing."""
    if not moments:
        return {"min": start, "max": end}
    low, high = min(moments), max(moments)
    pad = max(step, (high - low) // 20)
    return {"min": max(start, low - pad), "max": min(end, high + pad)}


def _number(value: Decimal | float) -> str:
    return format(Decimal(str(value)).normalize(), "f")


def _horizontal(label: str, short: str, severity: str, value: float, x_range: XRange) -> Threshold:
    return {"label": label, "short": short, "severity": severity, "value": value,
            "points": [{"x": x_range["min"], "y": value}, {"x": x_range["max"], "y": value}]}


def _following(label: str, short: str, severity: str, series: dict[str, Any], values: list[float | None], *,
               plus: float = 0.0, times: float = 1.0) -> Threshold:
    points: list[Point] = [{"x": ms(datetime.fromisoformat(at)), "y": round(value * times + plus, 2)}
                           for at, value in zip(series["labels"], values, strict=True) if value is not None]
    return {"label": label, "short": short, "severity": severity, "value": None, "points": points}


def chart_thresholds(rules: list[AlertRule], series: dict[str, Any], baseline: str,
                     x_range: XRange) -> dict[str, list[Threshold]]:
    """Each enabled rule as a dashed line on the chart of its metric. Absolute rules are horizontal lines
    (a success-rate rule on the error-rate chart as 100 - X); comparative rules follow the baseline's
    series moved to the threshold (baseline + points, baseline x ratio; latency on the p50, which is the
    geometric mean the rule compares for log-normal latencies); a tokens ratio is also a horizontal line
    on the savings chart (tokens above r x baseline is savings below (1 - r) x 100%). Horizontal lines at
    the same height on one chart are merged into one line with both labels."""
    out: dict[str, list[Threshold]] = {kind: [] for kind in CHART_KINDS}
    base = series["modes"][baseline]
    for rule in rules:
        t, c, sev = float(rule.threshold), rule.get_comparison_display(), rule.severity
        flipped = _FLIPPED[Comparison(rule.comparison)]
        number = _number(rule.threshold)
        if rule.metric == Metric.ERROR_RATE:
            out["error_rate"].append(_horizontal(f"error rate guardrail {c} {number}%", f"guardrail {number}%", sev, t,
                                                 x_range))
        elif rule.metric == Metric.SUCCESS_RATE:
            errors = _number(Decimal(100) - rule.threshold)
            out["error_rate"].append(_horizontal(f"success rate guardrail {c} {number}% (errors {flipped} {errors}%)",
                                                 f"guardrail {errors}%", sev, 100 - t, x_range))
        elif rule.metric == Metric.ERROR_RATE_DELTA:
            out["error_rate"].append(_following(f"error rate guardrail {c} {baseline} + {number} points",
                                                f"{baseline} + {number} pt", sev, series,
                                                base["error_rate"], plus=t))
        elif rule.metric == Metric.LATENCY_RATIO:
            out["latency"].append(_following(f"latency guardrail {c} {number}x {baseline} (on p50)",
                                             f"{number}x {baseline} p50", sev, series,
                                             base["p50_latency_ms"], times=t))
        elif rule.metric == Metric.TOKENS_RATIO:
            out["tokens"].append(_following(f"tokens guardrail {c} {number}x {baseline}", f"{number}x {baseline}", sev,
                                            series, base["avg_tokens_per_call"], times=t))
            savings = _number((1 - rule.threshold) * 100)
            out["savings"].append(_horizontal(f"tokens guardrail: savings {flipped} {savings}% ({c} {number}x tokens)",
                                              f"guardrail {savings}%", sev, round((1 - t) * 100, 4), x_range))
    return {kind: _merge(lines) for kind, lines in out.items()}


def _merge(lines: list[Threshold]) -> list[Threshold]:
    merged: list[Threshold] = []
    for line in lines:
        same = next((m for m in merged if line["value"] is not None and m["value"] == line["value"]), None)
        if same is None:
            merged.append(line)
            continue
        same["label"] += f"; {line['label']}"
        if line["severity"] == Severity.CRITICAL:
            same["severity"] = Severity.CRITICAL
    return merged


def _when(moment: datetime, now: datetime) -> str:
    moment = moment.astimezone(UTC)
    same_day = moment.date() == now.astimezone(UTC).date()
    return moment.strftime("%H:%M:%S UTC" if same_day else "%d %b %H:%M:%S UTC")


def _percent(value: Any) -> str:
    return f"{_number(Decimal(str(value)))}%"


def describe_change(entry: AuditEntry) -> str:
    """What an audited change did to who gets the flag, in words: "rollout 10% → 25%", "turned off"."""
    if entry.action == "create":
        after = entry.after
        state = "on" if after.get("enabled") else "off"
        return f"flag created ({state}, rollout {_percent(after.get('rollout_percentage', 0))})"
    parts = []
    for name in ("rollout_percentage", "enabled", "bucketing", "salt", "treatment_mode", "baseline_mode"):
        if name not in entry.after:
            continue
        old, new = entry.before.get(name), entry.after[name]
        if name == "rollout_percentage":
            parts.append(f"rollout {_percent(old)} → {_percent(new)}" if old is not None else
                         f"rollout {_percent(new)}")
        elif name == "enabled":
            parts.append("turned on" if new else "turned off (kill switch)")
        else:
            parts.append(f"{name.replace('_', ' ')} {old} → {new}")
    return ", ".join(parts)


def chart_markers(flag: Flag, start: datetime, end: datetime, now: datetime) -> list[Marker]:
    """Moments in [start, end) that explain the charts, oldest first: audited changes to who gets the flag,
    and guardrail alerts opening and resolving."""
    markers: list[Marker] = []
    for entry in flag_selectors.exposure_changes(flag, until=end):
        if entry.created_at < start or entry.created_at >= end:
            continue
        who = f"{entry.actor} ({entry.get_source_display()})"
        text = f"{_when(entry.created_at, now)} {describe_change(entry)} by {who}"
        markers.append({"at": entry.created_at.isoformat(), "x": ms(entry.created_at), "kind": "rollout",
                        "text": text + (f": {entry.reason}" if entry.reason else ""), "who": who, "why": entry.reason})
    alerts = (Alert.objects.filter(flag=flag)
              .filter(Q(opened_at__gte=start, opened_at__lt=end) | Q(resolved_at__gte=start, resolved_at__lt=end))
              .select_related("rule"))
    for alert in alerts:
        rule = alert.rule
        if start <= alert.opened_at < end:
            markers.append({"at": alert.opened_at.isoformat(), "x": ms(alert.opened_at), "kind": "alert_fired",
                            "text": f"{_when(alert.opened_at, now)} alert fired: {rule.name} ({alert.severity})",
                            "who": "guardrail check", "why": f"fires when {rule.describe()}"})
        if alert.resolved_at is not None and start <= alert.resolved_at < end:
            markers.append({"at": alert.resolved_at.isoformat(), "x": ms(alert.resolved_at), "kind": "alert_resolved",
                            "text": f"{_when(alert.resolved_at, now)} alert resolved: {rule.name}",
                            "who": "guardrail check", "why": alert.message})
    markers.sort(key=lambda m: m["x"])
    return markers


