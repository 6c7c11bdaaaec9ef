"""`make bench`: run the benchmarks and print one table of figures. `python -m bench evaluation lists`."""

from __future__ import annotations

import importlib
import sys

from bench.common import print_table, setup_django, throwaway_database

# name -> needs a database
BENCHES = {"evaluation": False, "lists": True, "api": True, "monitoring": True, "alerts": True, "guardrails": True,
           "servers": True, "outage": True, "snapshot": True}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    setup_django()
    from django.db import connection

    print(f"database: {connection.vendor}; benchmarks: {', '.join(names)}\n", flush=True)
    rows = []
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        if BENCHES[name]:
            with throwaway_database():
                rows.extend(module.run())
        else:
            rows.extend(module.run())
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
