from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.keys import api_key_revoke
from api.models import ApiKey


class Command(BaseCommand):
    help = "Revoke an API key by name; every process stops accepting it within a second."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: object, **options: Any) -> None:
        key = ApiKey.objects.filter(name=options["name"]).first()
        if key is None:
            raise CommandError(f"unknown API key {options['name']!r}")
        key = api_key_revoke(key=key)
        self.stdout.write(f"Revoked API key {key.name!r} at {key.revoked_at:%Y-%m-%d %H:%M:%S %Z}.")
