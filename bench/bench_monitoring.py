"""Monitoring at scale (PostgreSQL): ingestion through the HTTP API, and the dashboard's data over
10 million raw records."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import Row

if TYPE_CHECKING:
    from flags.models import Flag

RAW_ROWS = int(os.environ.get("BENCH_RAW_ROWS", 10_000_000))
BATCH = 1000


def _ingest_over_http(token_for: Callable[[str, str], str]) -> list[Row]:
    from monitoring.models import ExecutionRecord, Rollup
    from tests.live import Server, database_url, redis_url

    if shutil.which("wrk") is None:
        return [Row("ingestion over HTTP", "skipped: wrk is not installed", "-", None)]
    token = token_for("bench-ingest", "ingest")
    work = Path(tempfile.mkdtemp(prefix="rolloutadmin-bench-ingest-"))
    records = [{"user_id": f"user-{i % 700}", "mode": "patch" if i % 2 else "single", "flag": "patch_mode_enabled",
                "latency_ms": 100 + (i * 37) % 900, "tokens_used": 800 if i % 2 else 1200, "success": i % 30 != 0,
                "patch_count": 3 if i % 2 else 0} for i in range(BATCH)]
    script = work / "ingest.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps({'records': records}))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    env = {"DATABASE_URL": database_url(), "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2"}
    if redis_url():
        env["REDIS_URL"] = redis_url()
    server = Server(env, work / "var")
    try:
        out = subprocess.run(["wrk", "-t2", "-c4", "-d10s", "--latency", "-s", str(script),
                              server.url + "/api/v1/executions"], capture_output=True, text=True, check=True,
                             timeout=120).stdout
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if "Non-2xx" in out:
        raise RuntimeError(out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    stored = ExecutionRecord.objects.count()
    rolled = sum(Rollup.objects.filter(resolution=Rollup.MINUTE).values_list("calls", flat=True))
    per_second = rps * BATCH
    return [
        Row("POST /api/v1/executions, batches of 1,000, 4 connections", f"{per_second:,.0f} records/s",
            ">= 20,000 records/s", per_second >= 20_000),
        Row("  rollups current after ingestion", f"{rolled:,} rolled up / {stored:,} stored", "equal",
            rolled == stored),
    ]


def _load_raw_rows(days: int = 7) -> float:
    """10 million records over 7 days, loaded with SQL (the ingestion path is measured above)."""
    from django.db import connection

    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE monitoring_executionrecord, monitoring_rollup")
        cursor.execute(
            """
            INSERT INTO monitoring_executionrecord
                (client_id, user_id, mode, flag_key, latency_ms, tokens_used, success, patch_count,
                 failed_patches, occurred_at, received_at)
            SELECT NULL, 'user-' || (i %% 40000), CASE WHEN i %% 2 = 0 THEN 'patch' ELSE 'single' END,
                   CASE WHEN i %% 3 = 0 THEN '' ELSE 'patch_mode_enabled' END,
                   round((exp(ln(180) + 0.4 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())))::numeric, 1),
                   CASE WHEN i %% 2 = 0 THEN 800 ELSE 1200 END + (random() * 200)::int - 100,
                   random() > 0.03, CASE WHEN i %% 2 = 0 THEN 1 + (i %% 7) ELSE 0 END, 0,
                   now() - (%s * interval '1 second') * (i::float / %s), now()
            FROM generate_series(1, %s) AS i
            """,
            [days * 86400 - 60, RAW_ROWS, RAW_ROWS],
        )
        cursor.execute("ANALYZE monitoring_executionrecord")
    return time.perf_counter() - start


def _time_dashboard(flag: Flag, window: str) -> float:
    from monitoring import selectors

    def once() -> float:
        started = time.perf_counter()
        summary = selectors.summary(flag, window)
        selectors.series(flag, window)
        selectors.success_criteria(summary)
        return (time.perf_counter() - started) * 1000

    once()  # warm the connection and caches, as a dashboard refreshing every 10 s has them
    return statistics.median(once() for _ in range(7))


def run() -> list[Row]:
    from django.db import connection
    from django.utils import timezone

    if connection.vendor != "postgresql":
        return [Row("monitoring benchmarks", "skipped: run with DATABASE_URL=postgres://...", "-", None)]
    from api.keys import api_key_create
    from flags import services
    from flags.models import Flag
    from monitoring.services import rebuild_rollups

    services.ensure_default_flag()

    def token_for(name: str, scopes: str) -> str:
        return api_key_create(name=name, scopes=scopes)[1]

    rows = _ingest_over_http(token_for)
    load_s = _load_raw_rows()
    started = time.perf_counter()
    now = timezone.now()
    rebuild_rollups(start=now - timedelta(days=7, hours=1), end=now + timedelta(hours=1))
    rebuild_s = time.perf_counter() - started
    rows.append(Row(f"load {RAW_ROWS:,} raw records over 7 days (SQL) + rebuild rollups",
                    f"{load_s:.0f} s + {rebuild_s:.0f} s", "-", None))
    flag = Flag.objects.get(key="patch_mode_enabled")
    for window, target in (("24h", 100.0), ("7d", 300.0)):
        ms = _time_dashboard(flag, window)
        rows.append(Row(f"dashboard data {window} (summary + chart series, both modes)", f"{ms:.1f} ms",
                        f"< {target:.0f} ms", ms < target))
    return rows
