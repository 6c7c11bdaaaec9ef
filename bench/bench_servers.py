"""gunicorn against granian, side by side: the same application, database and snapshot, 2 workers each, load
from wrk (a second process) on loopback at 16 connections. One server runs at a time.

gunicorn runs with the project's config (rolloutadmin/gunicorn.conf.py: gthread, its threads per worker).
granian runs in WSGI mode with as many blocking threads per worker (comparable), and with its default
(backpressure / 2 = 256 threads per worker for 2 workers), which is what `granian --interface wsgi` gives out
of the box.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import Row

CONNECTIONS = 16
DURATION = "5s"


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: Path, duration: str = DURATION) -> dict[str, float]:
    """requests/s, p50 and p99 in ms, and the count of non-2xx answers and socket errors, from wrk --latency."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups())  # type: ignore[union-attr]
    p99 = _ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups())  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors, "requests": int(total.group(1)) if total else 0}


def script(directory: Path, name: str, token: str, method: str, body: str | None) -> Path:
    path = directory / f"{name}.lua"
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "Bearer {token}"']
    if body is not None:
        lines += [f"wrk.body = {json.dumps(body)}", 'wrk.headers["Content-Type"] = "application/json"']
    path.write_text("\n".join(lines) + "\n")
    return path


def _figure(result: dict[str, float]) -> str:
    errors = f", {result['errors']:.0f} errors" if result["errors"] else ""
    return f"{result['rps']:,.0f} req/s, p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms{errors}"


def gunicorn_threads() -> int:
    """The threads per worker that rolloutadmin/gunicorn.conf.py gives gunicorn (read in a child process: the
    config file sets environment variables when it runs)."""
    import sys

    from tests.live import ROOT

    code = "import runpy; print(runpy.run_path('rolloutadmin/gunicorn.conf.py')['threads'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run() -> list[Row]:
    if shutil.which("wrk") is None:
        return [Row("gunicorn vs granian", "skipped: wrk is not installed (apt-get install wrk)", "-", None)]
    from api.keys import api_key_create
    from flags import services
    from flags.actors import Actor
    from flags.models import Source
    from tests.live import GranianServer, Server, database_url, redis_url

    try:
        import granian  # noqa: F401
    except ImportError:
        granian_missing = True
    else:
        granian_missing = False

    actor = Actor.system("bench")
    services.ensure_default_flag()
    services.flag_set_rollout(flag="patch_mode_enabled", percentage=50, enabled=True, actor=actor, source=Source.CLI)
    _key, evaluate_token = api_key_create(name="bench-evaluate", scopes="evaluate")
    _key, manage_token = api_key_create(name="bench-manage", scopes="manage")
    work = Path(tempfile.mkdtemp(prefix="rolloutadmin-bench-servers-"))
    env = {"DATABASE_URL": database_url()}
    if redis_url():
        env["REDIS_URL"] = redis_url()
    ofrep = script(work, "ofrep", evaluate_token, "POST", '{"context":{"targetingKey":"user_42"}}')
    flags = script(work, "flags", manage_token, "GET", None)
    threads = gunicorn_threads()
    gunicorn_name, granian_name = f"gunicorn gthread 2x{threads}", f"granian wsgi 2x{threads}"
    servers = [(gunicorn_name, lambda: Server(env, work / "var-gunicorn"))]
    if granian_missing:
        rows = [Row("granian", "skipped: granian is not installed (pip install -r requirements-dev.txt)", "-", None)]
    else:
        rows = []
        servers += [(granian_name, lambda: GranianServer(env, work / "var-granian", threads=threads)),
                    ("granian wsgi 2x256 (default)", lambda: GranianServer(env, work / "var-granian-default",
                                                                           threads=256))]
    results: dict[str, float] = {}
    try:
        for name, start in servers:
            server = start()
            try:
                single = wrk(server.url + "/ofrep/v1/evaluate/flags/patch_mode_enabled", ofrep)
                django = wrk(server.url + "/api/v1/flags", flags)
            finally:
                server.stop()
            results[name] = single["rps"]
            rows.append(Row(f"{name}: OFREP single flag", _figure(single), "no errors", not single["errors"]))
            rows.append(Row(f"{name}: GET /api/v1/flags (Django)", _figure(django), "no errors", not django["errors"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if granian_name in results:
        ratio = results[granian_name] / results[gunicorn_name]
        rows.append(Row(f"{granian_name} / {gunicorn_name}, OFREP req/s", f"{ratio:.2f}x", "-", None))
    return rows
