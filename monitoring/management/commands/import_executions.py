from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from monitoring import services


class Command(BaseCommand):
    help = "Backfill execution records from a JSON Lines file (one record per line), in all-or-nothing batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="a .jsonl file; '-' for standard input is not supported")
        parser.add_argument("--batch-size", type=int, default=1000, help="records per transaction (max 5000)")

    def handle(self, *args: object, **options: Any) -> None:
        path = Path(options["file"])
        size = options["batch_size"]
        if not 1 <= size <= services.MAX_RECORDS:
            raise CommandError(f"--batch-size must be between 1 and {services.MAX_RECORDS}")
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        # Validate the whole file first, so that a bad line half-way imports nothing.
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise CommandError(f"line {number}: not valid JSON ({exc})") from None
        if not records:
            raise CommandError(f"{path} holds no records")
        for start in range(0, len(records), services.MAX_RECORDS):
            try:
                services.validate(records[start : start + services.MAX_RECORDS])
            except services.BatchRejected as exc:
                first = exc.errors[0]
                raise CommandError(f"record {start + first.index + 1} ({first.field}): {first.reason}; "
                                   f"{len(exc.errors)} problem(s) in all, nothing imported") from None
        accepted = duplicates = 0
        for start in range(0, len(records), size):
            result = services.ingest(records[start : start + size])
            accepted += result.accepted
            duplicates += result.duplicates
        self.stdout.write(f"Imported {accepted} record(s); {duplicates} already present.")
