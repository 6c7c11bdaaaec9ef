"""Evaluations while PostgreSQL hangs: gunicorn (the project's config: 2 workers x 8 threads, 4 database
slots each), PostgreSQL behind a TCP proxy that freezes (connections stay open, nothing is answered).

The issue's goal: 100 evaluations with p99 < 250 ms while 20 database-bound requests hang. Measured twice:
with the database healthy, then frozen with 20 ingestion and management requests piled up. Then how the
piled-up requests ended (all 503 with Retry-After: shed at once, or cut by the watchdog) and how long the
first database request took to succeed once the proxy thawed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from bench.common import Row

EVALUATIONS = 100
PILED = 20


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run() -> list[Row]:
    from api.keys import api_key_create
    from flags import services
    from flags.actors import Actor
    from flags.models import Source
    from tests.live import Server, TcpProxy, database_url, through

    url = database_url()
    if not url.startswith("postgres"):
        return [Row("evaluations while PostgreSQL hangs", "skipped: needs DATABASE_URL=postgres://...", "-", None)]
    actor = Actor.system("bench")
    services.ensure_default_flag()
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=50, enabled=True, actor=actor, source=Source.CLI)
    _k, evaluate = api_key_create(name="bench-eval", scopes="evaluate")
    _k, manage = api_key_create(name="bench-manage", scopes="manage,ingest")
    parsed = urlparse(url)
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    proxied = through(proxy, url)
    work = Path(tempfile.mkdtemp(prefix="rolloutadmin-bench-outage-"))
    server = Server({"DATABASE_URL": proxied}, work / "var")
    body = {"context": {"targetingKey": "user_42"}}
    path = "/ofrep/v1/evaluate/flags/patch_mode_enabled"

    def evaluations() -> tuple[list[float], int]:
        times, failed = [], 0
        for _ in range(EVALUATIONS):
            started = time.perf_counter()
            try:
                status = server.request("POST", path, body, evaluate, timeout=10)[0]
            except OSError:
                status = 0
            times.append((time.perf_counter() - started) * 1000)
            failed += status != 200
        return times, failed

    def database_bound(i: int) -> tuple[int, str]:
        try:
            if i % 2:
                status, _body, headers = server.request(
                    "POST", "/api/v1/executions",
                    {"records": [{"user_id": f"h{i}", "mode": "patch", "latency_ms": 1, "tokens_used": 1,
                                  "success": True}]}, manage, timeout=60)
            else:
                status, _body, headers = server.request("GET", "/api/v1/flags", None, manage, timeout=60)
            return status, headers.get("Retry-After", "")
        except OSError:
            return 0, ""

    rows = []
    try:
        healthy, failed = evaluations()
        rows.append(Row("evaluations, database healthy: p50 / p99", f"{_percentile(healthy, .5):.1f} / "
                        f"{_percentile(healthy, .99):.1f} ms ({failed} failed)", "-", None))
        proxy.freeze()
        with ThreadPoolExecutor(PILED) as pool:
            piled = [pool.submit(database_bound, i) for i in range(PILED)]
            time.sleep(0.3)
            hung, failed = evaluations()
            ended = [f.result() for f in piled]
        p99 = _percentile(hung, .99)
        rows.append(Row(f"evaluations while {PILED} database requests hang: p50 / p99 / max",
                        f"{_percentile(hung, .5):.1f} / {p99:.1f} / {max(hung):.1f} ms ({failed} failed)",
                        "p99 < 250 ms, none failed", p99 < 250 and failed == 0))
        answered = sum(1 for status, retry in ended if status == 503 and retry.isdigit())
        rows.append(Row("hung database requests answered 503 + Retry-After", f"{answered} of {PILED}",
                        f"{PILED} of {PILED}", answered == PILED))
        proxy.thaw()
        started = time.monotonic()
        while server.request("GET", "/api/v1/flags", None, manage, timeout=30)[0] != 200:
            if time.monotonic() - started > 60:
                break
            time.sleep(0.05)
        rows.append(Row("first database request answered after the thaw", f"{time.monotonic() - started:.2f} s",
                        "-", None))
    finally:
        proxy.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows
