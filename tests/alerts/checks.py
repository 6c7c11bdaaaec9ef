"""Helpers of the alert check tests (test_rules, test_remediation, test_episodes, test_check_runs):
rules by name, feeding good and bad minutes, and one check at a chosen `now`."""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timedelta
from decimal import Decimal

from alerts import guardrails
from alerts import services as alert_services
from alerts.health import RuleResult
from alerts.models import AlertRule
from flags.models import AuditEntry, Source
from monitoring import services as monitoring
from tests.alerts import by_metric, feed

REGRESSING, HEALTHY, NOT_ENOUGH = guardrails.REGRESSING, guardrails.HEALTHY, guardrails.NOT_ENOUGH
ERROR_RULE = "Patch Mode error rate above 5%"
DELTA_RULE = "Patch Mode errors more than 1 point above Single Mode"
MIN = timedelta(minutes=1)
_users = itertools.count()


def error_rule(flag) -> AlertRule:  # type: ignore[no-untyped-def]
    return AlertRule.objects.get(flag=flag, metric="error_rate")


def set_action(flag, action: str, value: str | None = None, **fields) -> AlertRule:  # type: ignore[no-untyped-def]
    AlertRule.objects.filter(pk=error_rule(flag).pk).update(action=action, action_value=value, **fields)
    return error_rule(flag)


def reductions(actions: list[str]) -> list[tuple[Decimal, Decimal]]:
    """The (from, to) percentages of every "rollout reduced" action, however the numbers are written."""
    found = (re.fullmatch(r"rollout reduced from ([\d.]+)% to ([\d.]+)%", action) for action in actions)
    return [(Decimal(m[1]), Decimal(m[2])) for m in found if m]


def alert_audits(flag) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    return list(AuditEntry.objects.filter(flag=flag, source=Source.ALERT).order_by("id"))


def rollout(flag) -> Decimal:  # type: ignore[no-untyped-def]
    flag.refresh_from_db()
    return flag.rollout_percentage


def check(flag, now: datetime, **kwargs) -> dict[str, RuleResult]:  # type: ignore[no-untyped-def]
    return by_metric(alert_services.check_flag(flag.key, now=now, **kwargs))


def bad(at: datetime, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """The seed's Test 4: 10 calls, all failing."""
    feed(calls=10, failures=10, at=at, **kwargs)


def good(at: datetime, calls: int = 1000) -> None:
    """Enough successful treatment calls for the 5% rule to be shown healthy (0 in 1,000: below 1.2%)."""
    feed(calls=calls, at=at)


def feed_minutes(start: datetime, minutes: int, *, patch: int, patch_failures: int, single: int = 0,
                 single_failures: int = 0) -> None:
    """Whole minutes of both modes from `start`, in batches of at most 5,000 records (ingest's limit).
    Latency and tokens vary a little within each minute (80/120 ms; patch 400/600 tokens, single 900/1100)."""
    records: list[dict] = []

    def flush() -> None:
        if records:
            monitoring.ingest(records)
            records.clear()

    for m in range(minutes):
        at = (start + m * MIN + timedelta(seconds=7)).isoformat()
        for mode, calls, failures, tokens in (("patch", patch, patch_failures, 500), ("single", single,
                                                                                        single_failures, 1000)):
            if calls > monitoring.MAX_RECORDS - len(records):
                flush()
            for i in range(calls):
                records.append({"user_id": f"u{next(_users)}", "mode": mode, "success": i >= failures,
                                "latency_ms": 80.0 if i % 2 else 120.0,
                                "tokens_used": tokens + (100 if i % 2 else -100), "occurred_at": at})
    flush()
