"""Prometheus instruments, and one small function per thing worth counting.

prometheus-client (the Prometheus project's own library) keeps the values. With several processes
(gunicorn workers, Celery worker and beat), set PROMETHEUS_MULTIPROC_DIR to a directory they all share
on the host, before Python starts: each process then writes its values to memory-mapped files there, and
`GET /metrics` (rolloutadmin/metrics_endpoint.py) adds them up, so the answer is the same whichever worker
serves it. rolloutadmin/gunicorn.conf.py sets a default and clears dead workers' files at start. Without
the variable (the development server, tests) the values live in this process.

This module imports nothing from the apps, so any layer may count through it. Hot-path counters are cached
per label set: the evaluation endpoints pay a dictionary lookup and an increment per request.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
UNKNOWN_FLAG = "(unknown)"  # a key that names no flag: never a label value of its own (a caller chooses it)

EVALUATIONS = Counter("rolloutadmin_evaluations", "Flag decisions made, by flag and reason (errors by code).",
                      ["flag", "reason"])
EVALUATION_SECONDS = Histogram(
    "rolloutadmin_evaluation_seconds", "Time to answer an evaluation request, in the server process.", ["api"],
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5))
SNAPSHOT_RELOADS = Counter("rolloutadmin_snapshot_reloads", "Snapshot loads: ok, failed (database), restored "
                           "(from a kept copy at a cold start).", ["result"])
SNAPSHOT_CONFIRMED = Gauge("rolloutadmin_snapshot_confirmed_timestamp_seconds",
                           "When the oldest live process last confirmed its snapshot current (Unix time); "
                           "time() minus this is the snapshot age.", multiprocess_mode="livemin")
SNAPSHOT_VERSION = Gauge("rolloutadmin_snapshot_config_version",
                         "The oldest config version a live process answers from.", multiprocess_mode="livemin")
SNAPSHOT_STALE = Gauge("rolloutadmin_snapshot_stale", "1 while some live process answers from a snapshot it "
                       "could not confirm.", multiprocess_mode="livemax")
INGESTED = Counter("rolloutadmin_ingested_records", "Execution records stored, by mode.", ["mode"])
ALERT_CHECKS = Counter("rolloutadmin_alert_checks", "Alert checks run by beat, by result.", ["result"])
ALERT_CHECK_SECONDS = Histogram("rolloutadmin_alert_check_seconds", "Duration of one check of every flag.",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ALERT_CHECK_LAST = Gauge("rolloutadmin_alert_check_last_success_timestamp_seconds",
                         "When an alert check last finished (Unix time).", multiprocess_mode="max")
PLAN_TRANSITIONS = Counter("rolloutadmin_plan_transitions", "Rollout plan transitions, by kind.", ["transition"])
DB_REQUESTS_SHED = Counter("rolloutadmin_db_requests_shed", "Requests answered 503 at once because every "
                           "database slot of their process was taken (rolloutadmin/dbguard.py).")
DB_QUERIES_CUT = Counter("rolloutadmin_db_queries_cut", "Queries whose connection the watchdog cut after "
                         "they waited past their limit.")

_evaluations: dict[tuple[str, str], Any] = {}
_latency: dict[str, Any] = {}


def evaluation(flag: str, reason: str, count: int = 1) -> None:
    child = _evaluations.get((flag, reason))
    if child is None:
        child = _evaluations[(flag, reason)] = EVALUATIONS.labels(flag, reason)
    child.inc(count)


def evaluation_seconds(api: str, seconds: float) -> None:
    child = _latency.get(api)
    if child is None:
        child = _latency[api] = EVALUATION_SECONDS.labels(api)
    child.observe(seconds)


def snapshot_reload(result: str) -> None:
    SNAPSHOT_RELOADS.labels(result).inc()


def snapshot_confirmed(version: int, when: float) -> None:
    SNAPSHOT_CONFIRMED.set(when)
    SNAPSHOT_VERSION.set(version)
    SNAPSHOT_STALE.set(0)


def snapshot_stale(stale: bool) -> None:
    SNAPSHOT_STALE.set(1 if stale else 0)


def ingested(mode: str, count: int) -> None:
    INGESTED.labels(mode).inc(count)


def alert_check(result: str, seconds: float, finished_at: float) -> None:
    ALERT_CHECKS.labels(result).inc()
    ALERT_CHECK_SECONDS.observe(seconds)
    if result == "ok":
        ALERT_CHECK_LAST.set(finished_at)


def plan_transition(transition: str) -> None:
    PLAN_TRANSITIONS.labels(transition).inc()


def db_request_shed() -> None:
    DB_REQUESTS_SHED.inc()


def db_query_cut() -> None:
    DB_QUERIES_CUT.inc()
