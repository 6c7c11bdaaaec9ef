"""Metrics of a flag's treatment and baseline modes over a window, read from the rollups only.

Which records count for a flag: those of its treatment_mode and baseline_mode whose `flag` is the flag's
key or empty (the seed's records carry no flag, so unflagged records count for every flag comparing
those modes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.utils import timezone

from flags.models import Flag

from . import histogram
from .models import Rollup

WINDOWS: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
DEFAULT_WINDOW = "1h"
HLL_ERROR = "±3.3% (HyperLogLog, 1,024 registers)"


class ModeStats(TypedDict):
    """One mode's figures over a window (the seed's dashboard per mode, with percentiles and unique users).
    Rates are percentages with two decimals; None where there were no calls to divide by."""

    total_calls: int
    successful_calls: int
    failed_calls: int
    total_patches: int
    failed_patches: int
    error_rate: float | None
    success_rate: float | None
    avg_latency_ms: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    total_tokens: int
    avg_tokens_per_call: float | None
    unique_users: int | None  # None when not asked for (alert checks do without the sketches)


# A flag's figures over [from, to): per mode, and the treatment against the baseline. The API's metrics body.
Summary = TypedDict("Summary", {
    "flag": str,
    "from": str,
    "to": str,
    "treatment_mode": str,
    "baseline_mode": str,
    "modes": dict[str, ModeStats],
    "token_savings_percent": float | None,
    "latency_vs_baseline_percent": float | None,
    "unique_users_error": str,
})


class WindowSummary(Summary):
    window: str  # the dashboard's window name (15m, 1h, 24h, 7d)


@dataclass
class Totals:
    """Counts, sums, latency histogram and user sketch of some calls: a rollup row, or many merged."""

    calls: int = 0
    successes: int = 0
    patches: int = 0
    failed_patches: int = 0
    latency_sum: float = 0.0
    tokens_sum: int = 0
    log_latency_sum: float = 0.0
    log_latency_sq: float = 0.0
    tokens_sq: float = 0.0
    hist: list[int] = field(default_factory=histogram.empty)
    hll: bytearray = field(default_factory=histogram.hll_empty)
    # Sketches of added rows, merged only when the unique users are asked for: merging 1 KiB registers
    # is the costliest step, and alert checks never need it.
    _pending_hll: list[bytes] = field(default_factory=list, repr=False)

    def users(self) -> int:
        for part in self._pending_hll:
            histogram.hll_merge(self.hll, part)
        self._pending_hll.clear()
        return histogram.hll_count(self.hll) if self.calls else 0

    def add(self, row: dict[str, Any]) -> None:
        """Fold in one rollup row (as a values() dict): sums add, histograms add, sketches merge."""
        self.calls += row["calls"]
        self.successes += row["successes"]
        self.patches += row["patches"]
        self.failed_patches += row["failed_patches"]
        self.latency_sum += row["latency_sum"]
        self.tokens_sum += row["tokens_sum"]
        self.log_latency_sum += row["log_latency_sum"]
        self.log_latency_sq += row["log_latency_sq"]
        self.tokens_sq += row["tokens_sq"]
        self.hist = histogram.add(self.hist, histogram.from_bytes(row["latency_hist"]))
        if row["users_hll"]:
            self._pending_hll.append(row["users_hll"])

    def avg_tokens(self) -> float | None:
        return self.tokens_sum / self.calls if self.calls else None

    def avg_latency(self) -> float | None:
        return self.latency_sum / self.calls if self.calls else None

    def stats(self, *, unique_users: bool = True) -> ModeStats:
        calls = self.calls
        failures = calls - self.successes
        return {
            "total_calls": calls,
            "successful_calls": self.successes,
            "failed_calls": failures,
            "total_patches": self.patches,
            "failed_patches": self.failed_patches,
            "error_rate": _pct(failures, calls),
            "success_rate": _pct(self.successes, calls),
            "avg_latency_ms": round(self.latency_sum / calls, 1) if calls else None,
            "p50_latency_ms": _round(histogram.percentile(self.hist, 0.50)),
            "p95_latency_ms": _round(histogram.percentile(self.hist, 0.95)),
            "p99_latency_ms": _round(histogram.percentile(self.hist, 0.99)),
            "total_tokens": self.tokens_sum,
            "avg_tokens_per_call": round(self.tokens_sum / calls, 1) if calls else None,
            "unique_users": self.users() if unique_users else None,
        }


def _pct(part: float, whole: float) -> float | None:
    return round(part / whole * 100, 2) if whole else None


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _relative(treatment: float | None, baseline: float | None) -> float | None:
    """How far the treatment is from the baseline, in percent of the baseline."""
    if treatment is None or not baseline:
        return None
    return round((treatment - baseline) / baseline * 100, 2)


def token_savings(treatment_avg: float | None, baseline_avg: float | None) -> float | None:
    """Percent fewer tokens per call in the treatment than in the baseline; None without both."""
    if treatment_avg is None or not baseline_avg:
        return None
    return round((baseline_avg - treatment_avg) / baseline_avg * 100, 2)


# The numbers every reader adds up; the sketches (histogram, users) only where percentiles or users are shown.
MOMENT_FIELDS = ("calls", "successes", "patches", "failed_patches", "latency_sum", "tokens_sum", "log_latency_sum",
                 "log_latency_sq", "tokens_sq")
_FIELDS = ("mode", "bucket_start", *MOMENT_FIELDS, "latency_hist", "users_hll")


def _rows(flags: list[Flag], resolution: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Rollup rows of these flags' two modes, their own and the unflagged ones, in [start, end)."""
    return list(
        Rollup.objects.filter(resolution=resolution, flag_key__in=[*(f.key for f in flags), ""],
                              mode__in={m for f in flags for m in (f.treatment_mode, f.baseline_mode)},
                              bucket_start__gte=start, bucket_start__lt=end)
        .order_by("bucket_start")
        .values("flag_key", *_FIELDS)
    )


def moments_between(flags: list[Flag], start: datetime, end: datetime) -> dict[str, dict[str, dict[str, float]]]:
    """The sums the guardrails need (MOMENT_FIELDS) per flag and mode over [start, end), to the minute:
    whole hours from hour rows, the edges from minute rows; no sketch is read."""
    out = {f.key: {f.treatment_mode: _zero(), f.baseline_mode: _zero()} for f in flags}
    for part_start, part_end, resolution in _parts(start, end):
        for row, flag in _moment_rows(flags, resolution, part_start, part_end):
            _fold(out[flag.key][row["mode"]], row)
    return out


def moments_per_minute(flags: list[Flag], start: datetime, end: datetime, *,
                       resolution: int = Rollup.MINUTE) -> dict[str, dict[datetime, dict[str, dict[str, float]]]]:
    """The same per minute (or hour): {flag key: {bucket start: {mode: sums}}}, buckets without calls left out."""
    out: dict[str, dict[datetime, dict[str, dict[str, float]]]] = {f.key: {} for f in flags}
    for row, flag in _moment_rows(flags, resolution, start, end):
        _fold(out[flag.key].setdefault(row["bucket_start"], {}).setdefault(row["mode"], _zero()), row)
    return out


def _zero() -> dict[str, float]:
    return dict.fromkeys(MOMENT_FIELDS, 0)


def _fold(into: dict[str, float], row: dict[str, Any]) -> None:
    for name in MOMENT_FIELDS:
        into[name] += row[name]


def _parts(start: datetime, end: datetime) -> list[tuple[datetime, datetime, int]]:
    first_full_hour, last_full_hour = hour_ceil(start), hour_floor(end)
    if first_full_hour < last_full_hour:
        return [(first_full_hour, last_full_hour, Rollup.HOUR), (start, first_full_hour, Rollup.MINUTE),
                (last_full_hour, end, Rollup.MINUTE)]
    return [(start, end, Rollup.MINUTE)]


def _moment_rows(flags: list[Flag], resolution: int, start: datetime,
                 end: datetime) -> Iterator[tuple[dict[str, Any], Flag]]:
    """Each rollup row of the flags' modes in [start, end), with every flag it counts for (its own key,
    or every flag comparing its mode when the row carries no flag)."""
    if start >= end or not flags:
        return
    by_key: dict[tuple[str, str], list[Flag]] = {}
    for flag in flags:
        for mode in (flag.treatment_mode, flag.baseline_mode):
            by_key.setdefault((flag.key, mode), []).append(flag)
            by_key.setdefault(("", mode), []).append(flag)
    rows = (Rollup.objects.filter(resolution=resolution, flag_key__in=[*(f.key for f in flags), ""],
                                  mode__in={mode for _, mode in by_key}, bucket_start__gte=start,
                                  bucket_start__lt=end)
            .values("flag_key", "mode", "bucket_start", *MOMENT_FIELDS))
    for row in rows:
        for flag in by_key.get((row["flag_key"], row["mode"]), []):
            yield row, flag




def summary(flag: Flag, window: str = DEFAULT_WINDOW, now: datetime | None = None) -> WindowSummary:
    """The seed's dashboard per mode, plus percentiles, unique users and token savings, over a window."""
    start, end = window_bounds(window, now)
    return {"window": window, **summary_between(flag, start, end)}


def summary_between(flag: Flag, start: datetime, end: datetime, *, unique_users: bool = True) -> Summary:
    """The same over [start, end), to the minute (alert rules use their own window lengths)."""
    return summaries_between([flag], start, end, unique_users=unique_users)[flag.key]


def summaries_between(flags: list[Flag], start: datetime, end: datetime, *,
                      unique_users: bool = True) -> dict[str, Summary]:
    """summary_between for many flags from one read of the rollups (alert checks over every flag)."""
    first_full_hour, last_full_hour = hour_ceil(start), hour_floor(end)
    if first_full_hour < last_full_hour:
        # Whole hours from hour rows, the ragged edges from minute rows: exact to the minute.
        rows = _rows(flags, Rollup.HOUR, first_full_hour, last_full_hour)
        rows += _rows(flags, Rollup.MINUTE, start, first_full_hour)
        rows += _rows(flags, Rollup.MINUTE, last_full_hour, end)
    else:
        rows = _rows(flags, Rollup.MINUTE, start, end)
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["flag_key"], row["mode"]), []).append(row)
    out: dict[str, Summary] = {}
    for flag in flags:
        totals = {flag.treatment_mode: Totals(), flag.baseline_mode: Totals()}
        for mode, total in totals.items():
            for row in by_key.get((flag.key, mode), []) + by_key.get(("", mode), []):
                total.add(row)
        out[flag.key] = _summary(flag, start, end, totals, unique_users)
    return out


def _summary(flag: Flag, start: datetime, end: datetime, totals: dict[str, Totals],
             unique_users: bool) -> Summary:
    modes = {mode: t.stats(unique_users=unique_users) for mode, t in totals.items()}
    treatment, baseline = totals[flag.treatment_mode], totals[flag.baseline_mode]
    return {
        "flag": flag.key,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "treatment_mode": flag.treatment_mode,
        "baseline_mode": flag.baseline_mode,
        "modes": modes,
        # From the exact averages, not the rounded ones shown per mode.
        "token_savings_percent": token_savings(treatment.avg_tokens(), baseline.avg_tokens()),
        "latency_vs_baseline_percent": _relative(treatment.avg_latency(), baseline.avg_latency()),
        "unique_users_error": HLL_ERROR,
    }


# --- time windows: every edge of a window of rollups is computed here (the dashboard's windows, the
# alert checks' and the rollout plans' stages, the backtests), so they all count the same minutes.


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def minute_ceil(moment: datetime) -> datetime:
    floor = minute_floor(moment)
    return floor if floor == moment else floor + timedelta(minutes=1)


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_ceil(moment: datetime) -> datetime:
    floor = hour_floor(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


def window_named(value: str | None) -> str:
    """The window a request names (?window=), or the default one for a missing or unknown name."""
    return value if value in WINDOWS else DEFAULT_WINDOW


def window_bounds(window: str, now: datetime | None = None, *,
                  complete_minutes: bool = False) -> tuple[datetime, datetime]:
    """[start, end) of a named window (WINDOWS) ending at `now`, to the minute. The dashboard counts the
    current minute too; `complete_minutes=True` ends at the last complete minute, as the alert checks judge."""
    now = now or timezone.now()
    end = minute_floor(now) if complete_minutes else minute_floor(now) + timedelta(minutes=1)
    return end - WINDOWS[window], end


def stage_window(started: datetime, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the complete minutes of a stage that began at `started`, as of `now`: from the first
    whole minute after it began (no call made before the stage counts) to the last complete minute (a
    check at 12:01:17 judges the minutes up to 12:00 inclusive). Empty (start == end) before a minute ends."""
    end = minute_floor(now)
    return min(minute_ceil(started), end), end


@dataclass
class ChartBuckets:
    """The points of a chart over a window: per minute up to 1 h, per hour for 24 h and 7 d."""

    start: datetime
    end: datetime
    step: timedelta
    resolution: int
    starts: list[datetime]


def chart_buckets(window: str, end: datetime) -> ChartBuckets:
    start = end - WINDOWS[window]
    if WINDOWS[window] <= timedelta(hours=1):
        resolution, step = Rollup.MINUTE, timedelta(minutes=1)
    else:
        resolution, step = Rollup.HOUR, timedelta(hours=1)
        start = hour_floor(start)
    starts: list[datetime] = []
    moment = start
    while moment < end:
        starts.append(moment)
        moment += step
    return ChartBuckets(start, end, step, resolution, starts)


def series(flag: Flag, window: str = DEFAULT_WINDOW, now: datetime | None = None) -> dict[str, Any]:
    """Points for the charts: per minute up to 1 h, per hour for 24 h and 7 d."""
    chart = chart_buckets(window, window_bounds(window, now)[1])
    start, end, resolution, buckets = chart.start, chart.end, chart.resolution, chart.starts
    per: dict[str, dict[datetime, Totals]] = {flag.treatment_mode: {}, flag.baseline_mode: {}}
    for row in _rows([flag], resolution, start, end):
        per[row["mode"]].setdefault(row["bucket_start"], Totals()).add(row)
    out: dict[str, Any] = {"labels": [b.isoformat() for b in buckets], "modes": {}, "token_savings": []}
    for mode, points in per.items():
        stats = [points[b].stats(unique_users=False) if b in points else None for b in buckets]
        out["modes"][mode] = {
            "error_rate": [s["error_rate"] if s else None for s in stats],
            "p50_latency_ms": [s["p50_latency_ms"] if s else None for s in stats],
            "p95_latency_ms": [s["p95_latency_ms"] if s else None for s in stats],
            "avg_tokens_per_call": [s["avg_tokens_per_call"] if s else None for s in stats],
            "calls": [s["total_calls"] if s else 0 for s in stats],
        }
    empty = Totals()
    out["token_savings"] = [
        token_savings(per[flag.treatment_mode].get(b, empty).avg_tokens(),
                      per[flag.baseline_mode].get(b, empty).avg_tokens())
        for b in buckets
    ]
    return out


# The seed's success metrics, judged on the window's numbers.
class Criterion(TypedDict):
    """One of the seed's success criteria, judged on a summary's treatment mode."""

    name: str
    value: float | None
    unit: str
    status: str  # met, not met, no data


def success_criteria(data: Summary) -> list[Criterion]:
    treatment = data["modes"][data["treatment_mode"]]
    latency_delta = data["latency_vs_baseline_percent"]

    def verdict(value: float | None, ok: bool) -> str:
        return "no data" if value is None else ("met" if ok else "not met")

    error_rate, success_rate, savings = treatment["error_rate"], treatment["success_rate"], \
        data["token_savings_percent"]
    return [
        {"name": "Error rate < 5%", "value": error_rate, "unit": "%",
         "status": verdict(error_rate, error_rate is not None and error_rate < 5)},
        {"name": "Latency within ±10% of baseline", "value": latency_delta, "unit": "% vs baseline",
         "status": verdict(latency_delta, latency_delta is not None and abs(latency_delta) <= 10)},
        {"name": "Token savings > 20%", "value": savings, "unit": "%",
         "status": verdict(savings, savings is not None and savings > 20)},
        {"name": "Success rate > 95%", "value": success_rate, "unit": "%",
         "status": verdict(success_rate, success_rate is not None and success_rate > 95)},
    ]

