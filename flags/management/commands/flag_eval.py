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
        parser.add_argument(
            "--attr", action="append", default=[], metavar="NAME=VALUE", dest="attrs",
            help="an attribute of the evaluation context, for the flag's targeting rules (repeatable). A value "
            "that reads as JSON is taken as such (seats=12 is a number, beta=true a boolean, "
            "'id=\"12\"' a string); anything else is a string (plan=pro, app_version=2.1.0).",
        )

    def handle(self, *args: object, **options: Any) -> None:
        flag = selectors.flag_get(options["flag"])
        if flag is None:
            raise CommandError(f"unknown flag {options['flag']!r}")
        for position, user_id in enumerate(options["user_ids"], start=1):
            try:
                validate_user_id(user_id)
            except ValidationError as exc:
                raise CommandError(f"user id #{position} {user_id[:40]!r}: {' '.join(exc.messages)}") from None
        attributes = _attributes(options["attrs"])
        config = selectors.flag_config(flag)
        for user_id in options["user_ids"]:
            decision = evaluation.evaluate(config, user_id, attributes)
            answer: dict[str, object] = {
                "flag": flag.key,
                "user_id": user_id,
                "enabled": decision.enabled,
                "reason": decision.reason.value,
                "bucket": decision.bucket,
            }
            if decision.rule is not None:
                answer["rule"] = decision.rule
            self.stdout.write(json.dumps(answer))


def _attributes(pairs: list[str]) -> dict[str, object]:
    attributes: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise CommandError(f"--attr {pair[:40]!r}: write NAME=VALUE, e.g. --attr plan=pro")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, list | dict):
            value = text  # no condition compares a list or an object: keep such a value as the text typed
        attributes[name] = value
    return attributes
