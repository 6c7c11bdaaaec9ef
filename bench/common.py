"""Shared bits of the benchmarks: a throwaway database and a table of figures."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Row:
    benchmark: str
    figure: str
    target: str
    met: bool | None

    def cells(self) -> list[str]:
        verdict = "-" if self.met is None else ("yes" if self.met else "NO")
        return [self.benchmark, self.figure, self.target, verdict]


def print_table(rows: list[Row]) -> None:
    header = ["benchmark", "measured", "target", "met"]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for index, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rolloutadmin.settings")
    os.environ.setdefault("DEBUG", "1")
    # Loading millions of rows to measure against takes longer than a request's statement timeout (10 s):
    # no limit for the benchmarks' own setup. The servers they start get the production default.
    os.environ.setdefault("DB_STATEMENT_TIMEOUT_MS", "0")
    import django

    django.setup()


@contextlib.contextmanager
def throwaway_database() -> Iterator[None]:
    """A fresh test database (test_<name> on PostgreSQL, a temporary file on SQLite), dropped after."""
    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    setup_test_environment()
    if connection.vendor == "sqlite":
        # An in-memory test database would be per-connection; benchmarks may use threads and servers.
        connection.settings_dict["TEST"]["NAME"] = str(_tmp_sqlite())
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        yield
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        teardown_test_environment()


def _tmp_sqlite() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="rolloutadmin-bench-")) / "bench.sqlite3"


def best_of(runs: int, func: Callable[[], float]) -> float:
    return min(func() for _ in range(runs))


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start
