from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from alerts import plans, services
from flags import selectors


class Command(BaseCommand):
    help = ("Run one alert check and remediation now, synchronously, and print each rule's state and every "
            "action taken. --dry-run shows what the checker would do and changes nothing.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--flag", help="check only this flag")
        parser.add_argument("--dry-run", action="store_true", help="change nothing, send nothing")

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        key = options["flag"]
        if key is not None and selectors.flag_get(key) is None:
            raise CommandError(f"unknown flag {key!r}")
        dry = options["dry_run"]
        verb = "would" if dry else "did"
        now = timezone.now()  # one moment for the check and the plans, as the beat task does
        results = services.check_all(flag_key=key, dry_run=dry, now=now)
        for flag_key, rules in results.items():
            self.stdout.write(f"{flag_key}:")
            if not rules:
                self.stdout.write("  (no enabled rules)")
            for result in rules:
                self.stdout.write(f"  [{result.state:>15}] {result.rule.name}: {result.detail}")
                for action in result.actions:
                    self.stdout.write(f"{'':20}{verb}: {action}")
        for plan_id, info in plans.tick_all(dry_run=dry, flag_key=key, now=now).items():
            self.stdout.write(f"plan {plan_id}: {verb} {info.get('decision')}: {info.get('why', '')}")
        if dry:
            self.stdout.write("Dry run: nothing was changed and nothing was sent.")
