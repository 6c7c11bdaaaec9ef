"""Helpers of the rollout plan tests (test_plans, test_plan_gate, test_plan_pausing): starting a plan at
T0, feeding healthy or regressing stages, and ticking at chosen moments."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from alerts import plans
from alerts.models import Alert, AlertRule, AlertState, RolloutPlan
from flags.actors import Actor
from flags.models import AuditEntry, Flag
from tests.alerts import feed

WEEK = timedelta(days=7)
MINUTE = timedelta(minutes=1)
ALICE = Actor("user", "alice")
BOB = Actor("user", "bob")
ERROR_RULE = "Patch Mode error rate above 5%"
DELTA_RULE = "Patch Mode errors more than 1 point above Single Mode"
LATENCY_RULE = "Latency above 1.5x baseline"


def start(flag: Flag, t0: datetime, **kwargs) -> RolloutPlan:  # type: ignore[no-untyped-def]
    plan = plans.plan_create(flag=flag, created_by="alice", **kwargs)
    return plans.plan_start(plan=plan, actor=ALICE, now=t0)


def admin_made_plan(flag: Flag) -> RolloutPlan:
    """A draft plan made in the admin, which does not go through plan_create."""
    plan = RolloutPlan.objects.create(flag=flag, created_by="admin")
    plan.stages.create(order=0, percentage=Decimal(10), min_duration_minutes=60)
    return plan


def feed_many(*, calls: int, failures: int = 0, mode: str = "patch", at: datetime, latency_ms: float = 100.0,
              tokens: int = 800) -> None:
    """Like feed, in chunks of the ingest's batch limit, failures spread over the chunks."""
    done_calls = done_failures = 0
    while done_calls < calls:
        chunk = min(5000, calls - done_calls)
        chunk_failures = min(chunk, round(failures * (done_calls + chunk) / calls) - done_failures)
        feed(calls=chunk, failures=chunk_failures, mode=mode, at=at, latency_ms=latency_ms, tokens=tokens)
        done_calls, done_failures = done_calls + chunk, done_failures + chunk_failures


def healthy(at: datetime, *, calls: int = 10_000, failures: int | None = None, baseline_failures: int | None = None,
            latency_ms: float = 100.0) -> None:
    """`calls` treatment and `calls` baseline calls at `at`: 1% errors each unless told otherwise, the same
    latency, and treatment tokens at half the baseline's. Enough for every default rule to be healthy."""
    feed_many(calls=calls, failures=calls // 100 if failures is None else failures, at=at, latency_ms=latency_ms,
              tokens=500)
    feed_many(calls=calls, failures=calls // 100 if baseline_failures is None else baseline_failures,
              mode="single", at=at, tokens=1000)


def regression(at: datetime, *, calls: int = 200, rate: float = 0.30) -> None:
    """A clear regression: `rate` of the treatment's calls fail, the baseline keeps 1%."""
    feed(calls=calls, failures=round(calls * rate), at=at, tokens=500)
    feed(calls=calls, failures=calls // 100, mode="single", at=at, tokens=1000)


def stage_start(plan: RolloutPlan) -> datetime:
    plan.refresh_from_db()
    return plan.stage_started_at


def tick_after(plan: RolloutPlan, after: timedelta, **kwargs) -> dict:  # type: ignore[no-untyped-def]
    return plans.tick(plan.pk, now=stage_start(plan) + after, **kwargs)


def last_audit(flag: Flag) -> AuditEntry:
    return AuditEntry.objects.filter(flag=flag).latest("id")


def rollout(flag: Flag) -> Decimal:
    flag.refresh_from_db()
    return flag.rollout_percentage


def rule(flag: Flag, name: str) -> AlertRule:
    return AlertRule.objects.get(flag=flag, name=name)


def open_alert(flag: Flag, name: str = ERROR_RULE, state: str = AlertState.FIRING) -> Alert:
    r = rule(flag, name)
    return Alert.objects.create(rule=r, flag=flag, severity=r.severity, state=state, message="20% errors")


def advance_by_hand(plan: RolloutPlan, now: datetime) -> RolloutPlan:
    return plans.plan_advance_now(plan=plan, actor=ALICE, now=now)
