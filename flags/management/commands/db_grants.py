from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

from flags import grants


class Command(BaseCommand):
    help = (
        "Print (or with --apply, run) the GRANT/REVOKE statements giving the app's PostgreSQL role only what "
        "it needs: read/write on ordinary tables, read and insert on the audit log, never TRUNCATE or ownership. "
        "Run as the owner role after each migrate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--role", default=None, help="the app's database role (the one in DATABASE_URL)")
        parser.add_argument("--apply", action="store_true", help="run the statements (as the connected owner)")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="database alias (default: default)")

    def handle(self, *args: object, **options: Any) -> None:
        connection = connections[options["database"]]
        try:
            role = grants.check_role_name(options["role"])
            grants.require_postgres(connection)
            grants.check_role(connection, role, must_exist=options["apply"])
            sql = grants.statements(connection, role)
            if not options["apply"]:
                self.stdout.write("\n".join(sql))
                return
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                for statement in sql:
                    cursor.execute(statement)
                problems = grants.verify(connection, role)
                if problems:
                    raise grants.GrantError(
                        f"after the grants role {role!r} still differs (nothing applied; is the connected role "
                        f"the tables' owner? any grants to PUBLIC?): {'; '.join(problems[:5])}"
                    )
        except grants.GrantError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(" ".join(str(exc).split())) from None
        self.stdout.write(f"applied {len(sql)} statements: role {role!r} has only the app's privileges")
