"""Tests of alert rules, remediation, notifications and rollout plans (the alerts app).

Helpers shared by the modules of this package: feeding execution records at chosen times, and a fixed
moment in the past for checks that pass their own `now`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from monitoring import services as monitoring

_batch = 0


def minute_ago(hours: int = 3) -> datetime:
    """A whole minute some hours back: checks at `now` near it see only the records fed for them."""
    return timezone.now().replace(second=0, microsecond=0) - timedelta(hours=hours)


def feed(*, calls: int, failures: int = 0, mode: str = "patch", at: datetime | None = None,
         latency_ms: float = 100.0, tokens: int = 800, flag: str | None = None) -> None:
    """Ingest `calls` records of one mode, the first `failures` of them failed, all occurring at `at`."""
    global _batch
    _batch += 1
    records = []
    for i in range(calls):
        record = {"user_id": f"{mode}-{_batch}-{i}", "mode": mode, "latency_ms": latency_ms, "tokens_used": tokens,
                  "success": i >= failures}
        if at is not None:
            record["occurred_at"] = at.isoformat()
        if flag is not None:
            record["flag"] = flag
        records.append(record)
    # `now` at the records' time lets plans feed the future moments their ticks are judged at.
    monitoring.ingest(records, now=max(at, timezone.now()) if at is not None else None)


def by_metric(results) -> dict:  # type: ignore[no-untyped-def]
    return {result.rule.metric: result for result in results}
