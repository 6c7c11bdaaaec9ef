from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from flags import evaluation, selectors
from flags.models import validate_user_id


class Command(BaseCommand):
    help = "Explain a flag's answer for users: one JSON object per user (why does this user see it?)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("flag", help="flag key")
        parser.add_argument("user_ids", nargs="+", metavar="USER_ID")

    def handle(self, *args: object, **options: Any) -> None:
        flag = selectors.flag_get(options["flag"])
        if flag is None:
            raise CommandError(f"unknown flag {options['flag']!r}")
        for position, user_id in enumerate(options["user_ids"], start=1):
            try:
                validate_user_id(user_id)
            except ValidationError as exc:
                raise CommandError(f"user id #{position} {user_id[:40]!r}: {' '.join(exc.messages)}") from None
        config = selectors.flag_config(flag)
        for user_id in options["user_ids"]:
            decision = evaluation.evaluate(config, user_id)
            self.stdout.write(
                json.dumps(
                    {
                        "flag": flag.key,
                        "user_id": user_id,
                        "enabled": decision.enabled,
                        "reason": decision.reason.value,
                        "bucket": decision.bucket,
                    }
                )
            )
