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


def begin_stage(flag, at: datetime, percentage: int | str = 20, *, enabled: bool = True):  # type: ignore[no-untyped-def]
    """Change the flag's exposure at `at` (a moment in the past): a rollout stage begins then, and the
    guardrails count only complete minutes from the first whole minute after it."""
    from flags import services
    from flags.actors import Actor
    from flags.models import Flag, Source

    flag = flag if isinstance(flag, Flag) else Flag.objects.get(key=flag)
    # A different percentage first, so that the change at `at` is a change even if it is already set.
    if flag.rollout_percentage == percentage and flag.enabled == enabled:
        services.flag_update(flag=flag, rollout_percentage=0 if str(percentage) != "0" else 1, now=at,
                             actor=Actor.system("test-suite"), source=Source.CLI)
    return services.flag_update(flag=flag, rollout_percentage=percentage, enabled=enabled, now=at,
                                actor=Actor.system("test-suite"), source=Source.CLI)


def by_metric(results) -> dict:  # type: ignore[no-untyped-def]
    return {result.rule.metric: result for result in results}
