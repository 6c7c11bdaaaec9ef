"""Least-privilege grants for the application's PostgreSQL role.

Migrations run as the owner role; gunicorn and Celery connect as an app role that gets only what the code
needs: SELECT, INSERT, UPDATE, DELETE on ordinary tables, SELECT and INSERT on the append-only audit table,
USAGE on the tables' sequences, CONNECT and TEMPORARY on the database (ingestion stages rows in a temporary
table), USAGE on the schema. Never TRUNCATE, REFERENCES, TRIGGER or ownership: only an owner may ALTER TABLE,
so the app role cannot disable the audit trigger. The table list comes from Django's model registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db.backends.base.base import BaseDatabaseWrapper

# Models whose rows are never changed or removed once written: the app may only read and add.
APPEND_ONLY_MODELS = ("flags.AuditEntry",)

READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")
APPEND_ONLY = ("SELECT", "INSERT")
# Every table privilege PostgreSQL knows (MAINTAIN from version 17), for checking what was granted.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
RESERVED = {"public", "none", "current_user", "current_role", "session_user", "all"}


class GrantError(Exception):
    """Bad input or a database that cannot be given least-privilege grants; the message is one line."""


@dataclass(frozen=True)
class TablePlan:
    table: str
    privileges: tuple[str, ...]
    sequences: tuple[str, ...]


def check_role_name(role: str | None) -> str:
    if not role:
        raise GrantError("--role is required: the name of the app's database role, e.g. --role app")
    if not ROLE_NAME.fullmatch(role):
        raise GrantError(f"invalid role name {role!r}: letters, digits and _, at most 63, not starting with a digit")
    if role.lower() in RESERVED or role.lower().startswith("pg_"):
        raise GrantError(f"invalid role name {role!r}: reserved by PostgreSQL")
    return role


def require_postgres(connection: BaseDatabaseWrapper) -> None:
    if connection.vendor != "postgresql":
        raise GrantError(f"db_grants is for PostgreSQL; database {connection.alias!r} is {connection.vendor}")


def append_only_tables() -> set[str]:
    from django.apps import apps

    return {apps.get_model(label)._meta.db_table for label in APPEND_ONLY_MODELS}


def plan(connection: BaseDatabaseWrapper) -> list[TablePlan]:
    """One entry per table of every installed app's managed models (M2M tables included), sorted by name."""
    require_postgres(connection)
    tables = sorted(connection.introspection.django_table_names(only_existing=False, include_views=False))
    restricted = append_only_tables()
    with connection.cursor() as cursor:
        existing = set(connection.introspection.table_names(cursor, include_views=False))
        missing = [t for t in tables if t not in existing]
        if missing:
            raise GrantError(f"tables missing from the database (run migrate first): {', '.join(missing)}")
        return [
            TablePlan(
                table=table,
                privileges=APPEND_ONLY if table in restricted else READ_WRITE,
                sequences=tuple(sorted(s["name"] for s in connection.introspection.get_sequences(cursor, table))),
            )
            for table in tables
        ]


def statements(connection: BaseDatabaseWrapper, role: str) -> list[str]:
    """REVOKE ALL, then GRANT exactly what is needed: re-running gives the same result."""
    check_role_name(role)
    tables = plan(connection)
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), current_schema()")
        database, schema = cursor.fetchone()
    who = q(role)
    sql = [
        f"REVOKE ALL ON DATABASE {q(database)} FROM {who};",
        f"GRANT CONNECT, TEMPORARY ON DATABASE {q(database)} TO {who};",
        f"REVOKE ALL ON SCHEMA {q(schema)} FROM {who};",
        f"GRANT USAGE ON SCHEMA {q(schema)} TO {who};",
    ]
    for t in tables:
        sql.append(f"REVOKE ALL ON TABLE {q(t.table)} FROM {who};")
        sql.append(f"GRANT {', '.join(t.privileges)} ON TABLE {q(t.table)} TO {who};")
        for seq in t.sequences:
            sql.append(f"REVOKE ALL ON SEQUENCE {q(seq)} FROM {who};")
            sql.append(f"GRANT USAGE ON SEQUENCE {q(seq)} TO {who};")
    return sql


def check_role(connection: BaseDatabaseWrapper, role: str, *, must_exist: bool) -> None:
    """A superuser, or a member of a role owning the tables, would be above any grant: refuse those."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
        row = cursor.fetchone()
        if row is None:
            if must_exist:
                raise GrantError(f"role {role!r} does not exist: create it first (CREATE ROLE {role} LOGIN ...)")
            return
        if row[0]:
            raise GrantError(f"role {role!r} is a superuser: no grant can restrict it; use a NOSUPERUSER role")
        tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
        cursor.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c "
            "WHERE c.relname = ANY(%s) AND pg_table_is_visible(c.oid) "
            "AND pg_has_role(%s, c.relowner, 'MEMBER') ORDER BY 1",
            [tables, role],
        )
        owners = [name for (name,) in cursor.fetchall()]
        if owners:
            raise GrantError(
                f"role {role!r} is, or is a member of, the tables' owner ({', '.join(owners)}): "
                "the app role must be a separate role"
            )


def verify(connection: BaseDatabaseWrapper, role: str) -> list[str]:
    """What the role can actually do (grants to PUBLIC and inherited roles count) that differs from the plan."""
    problems = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_database(), current_schema(), has_database_privilege(%s, current_database(), 'CONNECT'), "
            "has_database_privilege(%s, current_database(), 'TEMPORARY'), "
            "has_database_privilege(%s, current_database(), 'CREATE'), "
            "has_schema_privilege(%s, current_schema(), 'USAGE'), has_schema_privilege(%s, current_schema(), 'CREATE')",
            [role] * 5,
        )
        database, schema, *held = cursor.fetchone()
        expected = [True, True, False, True, False]
        names = ["CONNECT", "TEMPORARY", "CREATE", "USAGE", "CREATE"]
        objects = [f"database {database}"] * 3 + [f"schema {schema}"] * 2
        for obj, name, has, want in zip(objects, names, held, expected, strict=True):
            if has != want:
                problems.append(f"{obj}: {name} {'held' if has else 'missing'}")
        privileges = TABLE_PRIVILEGES + (("MAINTAIN",) if getattr(connection, "pg_version", 0) >= 170000 else ())
        for t in plan(connection):
            for privilege in privileges:
                cursor.execute("SELECT has_table_privilege(%s, %s, %s)", [role, connection.ops.quote_name(t.table),
                                                                           privilege])
                has = cursor.fetchone()[0]
                if has != (privilege in t.privileges):
                    problems.append(f"{t.table}: {privilege} {'held' if has else 'missing'}")
            for seq in t.sequences:
                for privilege in ("USAGE", "SELECT", "UPDATE"):
                    cursor.execute("SELECT has_sequence_privilege(%s, %s, %s)", [role, connection.ops.quote_name(seq),
                                                                                 privilege])
                    has = cursor.fetchone()[0]
                    if has != (privilege == "USAGE"):
                        problems.append(f"{seq}: {privilege} {'held' if has else 'missing'}")
    return problems
