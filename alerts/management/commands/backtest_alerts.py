from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from alerts import backtest
from flags import selectors


def _moment(name: str, text: str) -> datetime:
    try:
        parsed = parse_datetime(text)
    except ValueError:
        parsed = None
    if parsed is None:
        raise CommandError(f"--{name}: {text!r} is not an ISO 8601 date-time such as 2026-11-20T00:00Z")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = ("Replay the alert checker minute by minute over recorded traffic and print every episode and action "
            "it would have taken. Nothing is changed: try a rule change with --set before saving it.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--flag", required=True)
        parser.add_argument("--since", required=True, help="ISO 8601 date-time (UTC if no offset)")
        parser.add_argument("--until", required=True, help="ISO 8601 date-time (UTC if no offset)")
        parser.add_argument("--set", action="append", default=[], metavar="RULE_ID.FIELD=VALUE",
                            help="try a rule change for this replay only, e.g. 12.threshold=3 or 14.cusum_limit=8 "
                                 "(repeatable)")

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        flag = selectors.flag_get(options["flag"])
        if flag is None:
            raise CommandError(f"unknown flag {options['flag']!r}")
        since, until = _moment("since", options["since"]), _moment("until", options["until"])
        try:
            events = backtest.backtest(flag, since, until, options["set"])
        except ValidationError as exc:
            problems = (f"--{name}: {' '.join(messages)}" for name, messages in exc.message_dict.items())
            raise CommandError("; ".join(problems)) from None
        minutes = int((until - since).total_seconds() // 60)
        self.stdout.write(f"backtest of {flag.key} from {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC "
                          f"({minutes:,} checks); nothing was changed")
        for event in events:
            self.stdout.write(f"{event.at:%Y-%m-%d %H:%M} UTC  {event.kind:<8}  {event.text}")
        kinds = Counter(event.kind for event in events)
        self.stdout.write(f"summary: {kinds['opened']} episode(s) opened, {kinds['resolved']} resolved, "
                          f"{kinds['action']} action(s), {kinds['recorded']} recorded change(s) replayed")
