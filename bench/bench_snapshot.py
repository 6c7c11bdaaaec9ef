"""The evaluation snapshot at scale (api/snapshot.py): 1,000 flags and 1 M allow-list entries.

Needs PostgreSQL (the entries are generated in SQL) and wrk; gunicorn with the project's config (2 workers).
What it prints:
- the full load of the snapshot in this process (a worker's first load; best of 2);
- a change to one small flag: what the reload cost each worker, in CPU (what the worker's request threads
  lose to it, the GIL) and in wall time, from the workers' "config snapshot" lines (logged at DEBUG: the
  servers run with LOG_LEVEL=DEBUG, nothing else logs at that level under this load); and how long from the
  change (the service call included) until both workers had reloaded it;
- OFREP single-flag throughput steady and with such a change every 2 s (16 connections);
- OFREP p99 and worker memory (RSS) with the 1 M entries loaded against the same 1,000 flags with empty lists.

This machine's cores are shared, so figures drift from one run to the next: every comparison alternates its
two sides three times and takes the medians. For p99, two servers run side by side (a copy of the database
made before the entries were added serves the empty lists), measured in turn; both check the config stamp in
the database, as they cannot share Redis's stamp key. Changes are measured on a third server with Redis, as
in production.

The entries: 8 flags with 125,000 ids each, drawn from 600,000 distinct UUID-like ids (a user is on about two
lists, as internal testers and beta cohorts are); the other 992 flags have empty lists.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from bench.bench_servers import script, wrk
from bench.common import Row, timed

FLAGS = 1_000
BIG_FLAGS = 8
PER_BIG_FLAG = 125_000
DISTINCT_IDS = 600_000
CHANGE_EVERY = 2.0
RUN = "5s"
ROUNDS = 3
SMALL = "bench_0500"  # the flag that changes: no lists
ASKED = "bench_0999"  # the flag OFREP asks for

RELOAD_LINE = re.compile(r"config snapshot: config version (\d+), (\d+) of (\d+) flag\(s\) read "
                         r"\((\d+) list entries\) in ([\d.]+) ms, ([\d.]+) ms CPU")


def _workers(server) -> list[int]:  # type: ignore[no-untyped-def]
    pid = server.process.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class LogTail:
    """The reload lines the server's workers log, read as the log grows (it also holds every request line)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, ""
        self.reloads: dict[int, list[tuple[float, float]]] = {}  # config version -> (wall, CPU) ms per worker

    def poll(self) -> None:
        with self.path.open() as handle:
            handle.seek(self.offset)
            text = handle.read()
            self.offset = handle.tell()
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            match = RELOAD_LINE.search(line)
            if match:
                self.reloads.setdefault(int(match.group(1)), []).append((float(match.group(5)),
                                                                         float(match.group(6))))


def _make_data() -> list[int]:
    """1,000 flags (50% rollout), empty lists; the ids of the flags that get the big lists."""
    from django.db import transaction

    from flags.models import Flag
    from flags.publish import publish_config_change

    Flag.objects.bulk_create([Flag(key=f"bench_{i:04d}", name=f"bench {i}", salt=f"bench_{i:04d}", enabled=True,
                                   rollout_percentage=50) for i in range(FLAGS)])
    with transaction.atomic():
        publish_config_change()
    return list(Flag.objects.filter(key__in=[f"bench_{i:04d}" for i in range(BIG_FLAGS)]).values_list("pk", flat=True))


def _add_entries(big: list[int]) -> None:
    from django.db import connection, transaction
    from django.db.models import F

    from flags.models import Flag, UserOverride
    from flags.publish import publish_config_change

    table = UserOverride._meta.db_table
    step = (DISTINCT_IDS - PER_BIG_FLAG) // (BIG_FLAGS - 1)
    with transaction.atomic(), connection.cursor() as cursor:
        for index, flag_id in enumerate(big):
            cursor.execute(
                f"INSERT INTO {table} (flag_id, user_id, kind, note, added_by, created_at) "  # noqa: S608 - constants
                "SELECT %s, lpad(to_hex(n), 8, '0') || '-5f3c-4e2a-9b1d-' "
                "|| lpad(((n::bigint * 7919) %% 1000000000000)::text, 12, '0'), 'allow', '', 'bench', now() "
                "FROM generate_series(%s, %s) AS n",
                [flag_id, index * step, index * step + PER_BIG_FLAG - 1],
            )
        Flag.objects.filter(pk__in=big).update(version=F("version") + 1)  # as the services do for a list change
        publish_config_change()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")


def _change(flag: str, percentage: int) -> int:
    from flags import services
    from flags.actors import Actor
    from flags.models import Source
    from flags.publish import stamp_from_db

    services.flag_set_rollout(flag=flag, percentage=percentage, enabled=True, actor=Actor.system("bench"),
                              source=Source.CLI, reason="bench")
    return stamp_from_db()


def _propagation(server, tail: LogTail, percentage: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Change the small flag; (its config version, seconds until every worker had reloaded it)."""
    started = time.perf_counter()  # before the change: its commit is counted in
    stamp = _change(SMALL, percentage)
    while time.perf_counter() - started < 10:
        tail.poll()
        if len(tail.reloads.get(stamp, ())) >= server.workers:
            return stamp, time.perf_counter() - started
        time.sleep(0.005)
    return stamp, float("inf")


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _clone_database(url: str, suffix: str) -> str:
    """A copy of the test database (PostgreSQL's CREATE DATABASE ... TEMPLATE); its URL."""
    import psycopg
    from django.db import connections

    connections.close_all()  # a template may have no other connection
    name = urlparse(url).path.lstrip("/")
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}{suffix}"')
        admin.execute(f'CREATE DATABASE "{name}{suffix}" TEMPLATE "{name}"')
    return url + suffix


def _drop_database(url: str) -> None:
    import psycopg

    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{urlparse(url).path.lstrip("/")}"')


def run() -> list[Row]:
    from tests.live import Server, database_url, redis_url

    url = database_url()
    if not url.startswith("postgres"):
        return [Row("snapshot at scale", "skipped: needs DATABASE_URL=postgres://...", "-", None)]
    if shutil.which("wrk") is None:
        return [Row("snapshot at scale", "skipped: wrk is not installed (apt-get install wrk)", "-", None)]
    from api import snapshot
    from api.keys import api_key_create

    big = _make_data()
    _key, token = api_key_create(name="bench-snapshot", scopes="evaluate")
    empty_url = _clone_database(url, "_empty")
    _add_entries(big)
    full = min(timed(snapshot._load) for _ in range(2))
    rows = [Row(f"snapshot full load, {FLAGS:,} flags + {BIG_FLAGS * PER_BIG_FLAG:,} entries "
                f"({DISTINCT_IDS:,} distinct ids)", f"{full:.2f} s", "-", None)]
    work = Path(tempfile.mkdtemp(prefix="rolloutadmin-bench-snapshot-"))
    ofrep = script(work, "ofrep", token, "POST", '{"context":{"targetingKey":"user_42"}}')
    path = f"/ofrep/v1/evaluate/flags/{ASKED}"
    try:
        rows += _latency_and_memory(Server, empty_url, url, work, ofrep, path)
        env = {"DATABASE_URL": url, "LOG_LEVEL": "DEBUG", **({"REDIS_URL": redis_url()} if redis_url() else {})}
        rows += _changes(Server(env, work / "var-changes"), ofrep, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _drop_database(empty_url)
    return rows


def _latency_and_memory(server_class, empty_url, url, work, ofrep, path) -> list[Row]:  # type: ignore[no-untyped-def]
    empty = server_class({"DATABASE_URL": empty_url}, work / "var-empty")
    try:
        loaded = server_class({"DATABASE_URL": url}, work / "var-loaded")
    except Exception:
        empty.stop()
        raise
    try:
        for server in (empty, loaded):
            wrk(server.url + path, ofrep, "2s")  # warm up; meanwhile each worker keeps its first copy
        time.sleep(2)
        rss = {server: [_rss_mb(pid) for pid in _workers(server)] for server in (empty, loaded)}
        runs: dict[object, list[dict[str, float]]] = {empty: [], loaded: []}
        for _ in range(ROUNDS):
            for server in (empty, loaded):
                runs[server].append(wrk(server.url + path, ofrep, RUN))
    finally:
        empty.stop()
        loaded.stop()
    p99 = {server: _median([r["p99"] for r in found]) for server, found in runs.items()}
    rps = {server: _median([r["rps"] for r in found]) for server, found in runs.items()}
    errors = sum(r["errors"] for found in runs.values() for r in found)
    return [
        Row("OFREP p99, 1 M entries vs empty lists (median of 3)",
            f"{p99[loaded]:.1f} vs {p99[empty]:.1f} ms ({rps[loaded]:,.0f} vs {rps[empty]:,.0f} req/s)"
            + (f", {errors} errors" if errors else ""), "within 20%", p99[loaded] <= p99[empty] * 1.2 and not errors),
        Row("worker RSS, 1 M entries vs empty lists", f"{_mb(rss[loaded])} vs {_mb(rss[empty])}", "-", None),
    ]


def _changes(server, ofrep, path) -> list[Row]:  # type: ignore[no-untyped-def]
    tail = LogTail(server.log)
    try:
        wrk(server.url + path, ofrep, "2s")
        time.sleep(2)
        tail.poll()
        costs, delays = [], []
        for percentage in (10, 20, 30, 40, 50):
            stamp, delay = _propagation(server, tail, percentage)
            delays.append(delay)
            costs.extend(tail.reloads.get(stamp, []))
            time.sleep(0.3)
        before = [_rss_mb(pid) for pid in _workers(server)]
        last_idle = max(tail.reloads)
        steady_runs, changing_runs = [], []
        for _ in range(ROUNDS):
            steady_runs.append(wrk(server.url + path, ofrep, RUN))
            changing_runs.append(_while_changing(lambda: wrk(server.url + path, ofrep, RUN)))
        after = [_rss_mb(pid) for pid in _workers(server)]
        tail.poll()
    finally:
        server.stop()
    under_load = [cost for stamp, found in tail.reloads.items() for cost in found if stamp > last_idle]
    worst_cpu = max(cpu for _wall, cpu in costs + under_load)
    steady = _median([r["rps"] for r in steady_runs])
    changing = _median([r["rps"] for r in changing_runs])
    loss = (steady - changing) / steady * 100
    errors = sum(r["errors"] for r in steady_runs + changing_runs)
    return [
        Row("change to one small flag: reload cost per worker, CPU",
            f"median {_median([cpu for _w, cpu in costs]):.1f} ms, worst {worst_cpu:.1f} ms "
            f"({len(costs) + len(under_load)} reloads, some under load)", "< 50 ms", worst_cpu < 50),
        Row("  same, wall time (waits on the database and the GIL)",
            f"idle: median {_median([w for w, _c in costs]):.1f} ms; under load: median "
            f"{_median([w for w, _c in under_load] or [0]):.0f} ms", "-", None),
        Row("change to one small flag: commit to every worker serving it", f"worst {max(delays):.2f} s of "
            f"{len(delays)}", "< 1 s", max(delays) < 1),
        Row(f"OFREP req/s, steady vs a change every {CHANGE_EVERY:.0f} s (1 M entries, median of 3)",
            f"{steady:,.0f} vs {changing:,.0f} ({-loss:+.1f}%)" + (f", {errors} errors" if errors else ""),
            "within 5%", loss <= 5 and not errors),
        Row("worker RSS before vs after 30 s of changes", f"{_mb(before)} vs {_mb(after)}", "-", None),
    ]


def _mb(values: list[float]) -> str:
    return " + ".join(f"{value:.0f}" for value in values) + " MB"


def _while_changing(measure):  # type: ignore[no-untyped-def]
    """Run `measure()` while another thread changes the small flag every CHANGE_EVERY seconds."""
    stop = threading.Event()

    def changes() -> None:
        from django.db import connection

        percentage = 0
        try:
            while not stop.wait(CHANGE_EVERY):
                percentage = (percentage + 7) % 100
                _change(SMALL, percentage)
        finally:
            connection.close()

    thread = threading.Thread(target=changes)
    thread.start()
    try:
        return measure()
    finally:
        stop.set()
        thread.join()
