"""Real servers for tests: gunicorn processes on loopback, and a TCP proxy that can cut a connection to
PostgreSQL or Redis the way a network partition would."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url() -> str:
    """The URL of the database this test run uses (the test database, not the configured one)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(db["NAME"])
        if name.startswith("file:") or name == ":memory:":
            raise RuntimeError("live-server tests need a file-based SQLite test database")
        return f"sqlite:///{name}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream. cut() drops the listener and every open connection (the
    peer is refused); freeze() keeps every connection open and accepts new ones but forwards nothing, so
    the peer waits on a read that never returns (a hung server); thaw() lets the bytes through again."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._frozen = threading.Event()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                if self._frozen.is_set():
                    time.sleep(0.02)
                    continue
                readable, _, _ = select.select([a, b], [], [], 0.05)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            self._sockets.clear()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def close(self) -> None:
        self._frozen.clear()
        self.cut()


class Server:
    """`gunicorn` serving rolloutadmin on a free loopback port, as in production (lean path included)."""

    NAME = "gunicorn"
    WORKERS_VARIABLE = "GUNICORN_WORKERS"
    READY_MARKER = "config snapshot"  # each worker's "config snapshot (not) loaded at start" line

    def __init__(self, env: dict[str, str], var_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        full_env.update({
            "DEBUG": "0",
            "SECRET_KEY": "live-test-secret-key-" + "x" * 40,
            "ROLLOUTADMIN_VAR_DIR": str(var_dir),
            "GUNICORN_LOGLEVEL": "info",  # the workers' "config snapshot loaded" lines say they are ready
            self.WORKERS_VARIABLE: "2",
            **self._extra_environment(var_dir),
            **env,
        })
        self.workers = int(full_env[self.WORKERS_VARIABLE])
        self.var_dir = var_dir
        self.log = var_dir / f"{self.NAME}-{self.port}.log"
        var_dir.mkdir(parents=True, exist_ok=True)
        self._log_handle = self.log.open("w")
        self.process = subprocess.Popen(self._command(), cwd=ROOT, env=full_env, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT)
        self._wait_ready()

    def _extra_environment(self, var_dir: Path) -> dict[str, str]:
        return {}

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", "rolloutadmin/gunicorn.conf.py", "--bind",
                f"127.0.0.1:{self.port}"]

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.NAME} exited: {self.log.read_text()[-3000:]}")
            # Every worker, not just the first: one still booting when a test cuts the database would
            # start without a snapshot.
            if self.log.read_text().count(self.READY_MARKER) >= self.workers:
                try:
                    with urllib.request.urlopen(self.url + "/api/v1/openapi.json", timeout=1) as response:
                        if response.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.NAME} did not start: {self.log.read_text()[-3000:]}")

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None, raw: bytes | None = None,
                timeout: float = 10) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, payload, response_headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            status, payload, response_headers = exc.code, exc.read(), dict(exc.headers)
        return status, (json.loads(payload) if payload else None), response_headers

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_handle.close()


def redis_url() -> str:
    return getattr(settings, "REDIS_URL", "") or ""


def through(proxy: TcpProxy, url: str) -> str:
    """`url` (a database URL) with its host and port replaced by the proxy's."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return parsed._replace(netloc=(f"{parsed.username}@" if parsed.username else "")
                           + f"127.0.0.1:{proxy.port}").geturl()


class GranianServer(Server):
    """`granian --interface wsgi` serving the same application (rolloutadmin.wsgi:application, lean path
    included) on a free loopback port; the same interface as Server. `threads` is granian's
    --blocking-threads per worker (the Python threads that run requests); `args` adds command-line options
    (e.g. ["--access-log"]). Each worker imports the application when it starts, and rolloutadmin/wsgi.py
    loads the snapshot then: granian has no per-worker hook."""

    NAME = "granian"
    WORKERS_VARIABLE = "GRANIAN_WORKERS"
    READY_MARKER = "Started worker-"  # logged once the worker has imported the application

    def __init__(self, env: dict[str, str], var_dir: Path, threads: int = 4, args: list[str] | None = None) -> None:
        self.threads = threads
        self.args = args or []
        super().__init__(env, var_dir)

    def _extra_environment(self, var_dir: Path) -> dict[str, str]:
        # gunicorn.conf.py sets this itself; granian has no config file, so it comes from the environment.
        (var_dir / "prometheus").mkdir(parents=True, exist_ok=True)
        return {"PROMETHEUS_MULTIPROC_DIR": str(var_dir / "prometheus")}

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port",
                str(self.port), "--blocking-threads", str(self.threads), *self.args, "rolloutadmin.wsgi:application"]

    def worker_pids(self) -> list[int]:
        """The worker processes' ids, from granian's "Spawning worker-N with PID: ..." lines (latest per N)."""
        import re

        latest: dict[str, int] = {}
        for number, pid in re.findall(r"Spawning worker-(\d+) with PID: (\d+)", self.log.read_text()):
            latest[number] = int(pid)
        return list(latest.values())
