from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from flags import services
from flags.actors import Actor
from flags.models import Source


def one_line(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{name}: {' '.join(messages)}" for name, messages in exc.message_dict.items())
    return " ".join(exc.messages)


class Command(BaseCommand):
    help = "Set a flag's rollout percentage (0-100, 0.01 steps), optionally flipping its kill switch."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("flag", help="flag key, e.g. patch_mode_enabled")
        parser.add_argument("percent", help="rollout percentage, 0 to 100")
        switch = parser.add_mutually_exclusive_group()
        switch.add_argument("--enable", action="store_true", help="also turn the flag on")
        switch.add_argument("--disable", action="store_true", help="also turn the flag off (kill switch)")
        parser.add_argument("--reason", default="", help="why: kept in the audit log")
        parser.add_argument(
            "--expected-version",
            type=int,
            default=None,
            help="refuse the change if the flag is no longer at this version",
        )

    def handle(self, *args: object, **options: Any) -> None:
        enabled = True if options["enable"] else False if options["disable"] else None
        try:
            flag = services.flag_set_rollout(
                flag=options["flag"],
                percentage=options["percent"],
                enabled=enabled,
                actor=Actor.cli(),
                source=Source.CLI,
                reason=options["reason"],
                expected_version=options["expected_version"],
            )
        except services.FlagNotFound as exc:
            raise CommandError(str(exc)) from None
        except services.VersionConflict as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:
            raise CommandError(one_line(exc)) from None
        state = "enabled" if flag.enabled else "disabled"
        self.stdout.write(f"{flag.key}: {state}, rollout {flag.rollout_percentage}%, version {flag.version}")
