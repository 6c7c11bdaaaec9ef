from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.keys import api_key_create
from flags.actors import Actor


class Command(BaseCommand):
    help = "Create an API key and print its secret once (only a hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the key's name, shown in the audit log (e.g. checkout-service)")
        parser.add_argument("--scopes", required=True, help="comma-separated: evaluate, ingest, manage")

    def handle(self, *args: object, **options: Any) -> None:
        try:
            key, secret = api_key_create(name=options["name"], scopes=options["scopes"],
                                         created_by=Actor.cli().name)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stderr.write(f"Created API key {key.name!r} with scopes {','.join(key.scopes)}. "
                          "The secret below is shown only this once:")
        self.stdout.write(secret)
