"""One alert check over 100 flags with the default rules and a million records in their stage (PostgreSQL)."""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

from bench.common import Row

FLAGS = 100
RECORDS = 1_000_000


def run() -> list[Row]:
    from django.db import connection
    from django.utils import timezone

    if connection.vendor != "postgresql":
        return [Row("alert check benchmark", "skipped: run with DATABASE_URL=postgres://...", "-", None)]
    from alerts import services as alerts
    from alerts.models import AlertRule
    from flags import services
    from flags.actors import Actor
    from flags.models import Flag, Source
    from monitoring.services import rebuild_rollups

    actor = Actor.system("bench")
    stage_start = timezone.now() - timedelta(minutes=16)
    for i in range(FLAGS):
        key = f"bench_flag_{i:03d}"
        services.flag_create(key=key, actor=actor, source=Source.SYSTEM, now=stage_start)
        # The stage (the rollout in force) began before the records below, so they all count.
        services.flag_update(flag=key, enabled=True, rollout_percentage=80, actor=actor, source=Source.SYSTEM,
                             now=stage_start)
    rules = AlertRule.objects.count()
    with connection.cursor() as cursor:
        # Every tenth flag's Patch Mode fails 20% of the time: those guardrails fire and roll them back.
        cursor.execute(
            """
            INSERT INTO monitoring_executionrecord
                (client_id, user_id, mode, flag_key, latency_ms, tokens_used, success, patch_count,
                 failed_patches, occurred_at, received_at)
            SELECT NULL, 'user-' || (i %% 20000), CASE WHEN i %% 2 = 0 THEN 'patch' ELSE 'single' END,
                   'bench_flag_' || lpad(((i / 2) %% %s)::text, 3, '0'), 100 + random() * 300,
                   CASE WHEN i %% 2 = 0 THEN 800 ELSE 1200 END, random() > CASE
                       WHEN i %% 2 = 0 AND ((i / 2) %% %s) %% 10 = 0 THEN 0.2 ELSE 0.01 END,
                   3, 0, now() - interval '14 minutes' * (i::float / %s), now()
            FROM generate_series(1, %s) AS i
            """,
            [FLAGS, FLAGS, RECORDS, RECORDS],
        )
    now = timezone.now()
    rebuild_rollups(start=now - timedelta(hours=1), end=now + timedelta(hours=1))

    def once() -> float:
        started = time.perf_counter()
        alerts.check_all()
        return time.perf_counter() - started

    first = once()  # opens the alerts and rolls ten flags back
    steady = statistics.median(once() for _ in range(3))
    rolled_back = Flag.objects.filter(key__startswith="bench_flag_", rollout_percentage=0).count()
    return [
        Row(f"check_alerts: {FLAGS} flags x {rules // FLAGS} default rules, {RECORDS:,} records in their stage, "
            "first run", f"{first:.2f} s", "< 1 s", first < 1.0),
        Row("check_alerts, steady state (median of 3)", f"{steady:.2f} s", "< 1 s", steady < 1.0),
        Row("  flags rolled back by the guardrails", f"{rolled_back} of {FLAGS}", "10 (every tenth fails)",
            rolled_back == 10),
    ]
