"""HTTP evaluation behind gunicorn, load from wrk (a second process) on loopback at 16 connections."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.common import Row

CONNECTIONS = 16
DURATION = "10s"
BULK_USERS = 10_000


def _wrk(url: str, script: Path, duration: str = DURATION) -> tuple[float, float]:
    """(requests/s, p99 ms) from wrk --latency."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, p99


def _script(directory: Path, name: str, token: str, method: str, body: str) -> Path:
    path = directory / f"{name}.lua"
    lines = [f'wrk.method = "{method}"', f"wrk.body = {json.dumps(body)}",
             'wrk.headers["Content-Type"] = "application/json"', f'wrk.headers["Authorization"] = "Bearer {token}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def run() -> list[Row]:
    if shutil.which("wrk") is None:
        return [Row("HTTP benchmarks", "skipped: wrk is not installed (apt-get install wrk)", "-", None)]
    from api.keys import api_key_create
    from flags import services
    from flags.actors import Actor
    from flags.models import Source
    from tests.live import Server, database_url, redis_url

    actor = Actor.system("bench")
    services.ensure_default_flag()
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=50, enabled=True, actor=actor, source=Source.CLI)
    services.overrides_import(flag="patch_mode_enabled", kind="allow", user_ids=[f"vip-{i}" for i in range(10_000)],
                              actor=actor, source=Source.CLI)
    # Issue 13: the same flag with five rules of three conditions and a 10,000-id segment.
    from bench.bench_evaluation import BETA_IDS, TARGETED_RULES, targeted_context
    services.flag_create(key="targeted_flag", name="targeted", actor=actor, source=Source.CLI)
    services.flag_set_rollout(flag="targeted_flag", percentage=50, enabled=True, actor=actor, source=Source.CLI)
    services.segment_create(key="beta", name="beta", included=BETA_IDS, actor=actor, source=Source.CLI)
    services.flag_set_rules(flag="targeted_flag", rules=TARGETED_RULES, actor=actor, source=Source.CLI)
    _key, token = api_key_create(name="bench", scopes="evaluate")
    work = Path(tempfile.mkdtemp(prefix="rolloutadmin-bench-api-"))
    env = {"DATABASE_URL": database_url()}  # the production defaults of rolloutadmin/gunicorn.conf.py
    if redis_url():
        env["REDIS_URL"] = redis_url()
    server = Server(env, work / "var")
    rows = []
    try:
        single = _script(work, "single", token, "POST", '{"context":{"targetingKey":"user_42"}}')
        rps, p99 = _wrk(server.url + "/ofrep/v1/evaluate/flags/patch_mode_enabled", single)
        rows.append(Row("OFREP single flag, 16 connections", f"{rps:,.0f} req/s", ">= 4,000 req/s", rps >= 4000))
        rows.append(Row("OFREP single flag, p99 latency", f"{p99:.1f} ms", "< 15 ms", p99 < 15))
        context = {"targetingKey": "user_42", **targeted_context(42)}
        targeted = _script(work, "targeted", token, "POST", json.dumps({"context": context}))
        # The same request to the flag without rules, alternated three times with it: the difference is the
        # rules' cost, and the medians keep a noisy machine's drift out of the ratio.
        pairs = [(_wrk(server.url + "/ofrep/v1/evaluate/flags/targeted_flag", targeted, "5s")[0],
                  _wrk(server.url + "/ofrep/v1/evaluate/flags/patch_mode_enabled", targeted, "5s")[0])
                 for _ in range(3)]
        targeted_rps = statistics.median(t for t, _ in pairs)
        plain_rps = statistics.median(p for _, p in pairs)
        ratio = statistics.median(t / p for t, p in pairs)
        rows.append(Row("OFREP single flag, 5 rules x 3 conditions, 10k-id segment, 1,000-char attribute",
                        f"{targeted_rps:,.0f} req/s ({ratio:.0%} of {plain_rps:,.0f} without rules)",
                        ">= 90% of the flag without rules", ratio >= 0.9))
        body = json.dumps({"flags": ["patch_mode_enabled"], "user_ids": [f"user-{i}" for i in range(BULK_USERS)]})
        bulk = _script(work, "bulk", token, "POST", body)
        rps, p99 = _wrk(server.url + "/api/v1/evaluate", bulk)
        decisions = rps * BULK_USERS
        rows.append(Row(f"POST /api/v1/evaluate, {BULK_USERS:,} decisions/request", f"{decisions:,.0f} decisions/s",
                        ">= 200,000 decisions/s", decisions >= 200_000))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows
