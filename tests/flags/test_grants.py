"""db_grants: the app's PostgreSQL role gets only what the code needs; the audit log stays append-only."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from monitoring import services as monitoring
from monitoring.models import ExecutionRecord
from tests.conftest import requires_postgres
from tests.flags.test_commands import run
from tests.monitoring import at, record

AUDIT = AuditEntry._meta.db_table
assert AUDIT == "flags_auditentry"  # spelled out in the SQL below
on_sqlite = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")), reason="SQLite only"
)


@pytest.fixture(autouse=True)
def keep_the_test_connection(monkeypatch):
    # manage.py closes every connection when a command ends; inside a test that would close the
    # connection holding the test's transaction (PostgreSQL).
    monkeypatch.setattr("django.core.management.base.connections.close_all", lambda: None)


def grants(*args: str) -> str:
    out = StringIO()
    call_command("db_grants", *args, stdout=out)
    return out.getvalue()


def model_tables() -> set[str]:
    """Every table the registry knows for installed apps: models and auto-created many-to-many tables."""
    return {m._meta.db_table for m in apps.get_models(include_auto_created=True)
            if m._meta.managed and not m._meta.proxy}


def granted(sql: str) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for privileges, table in re.findall(r'^GRANT (.+) ON TABLE "(\w+)" TO "\w+";$', sql, re.M):
        tables.setdefault(table, set()).update(p.strip() for p in privileges.split(","))
    return tables


# --- input and database checks (both databases) --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--role is required"),
        (("--role", ""), "--role is required"),
        (("--role", "app; DROP TABLE flags_flag"), "invalid role name"),
        (("--role", "1app"), "invalid role name"),
        (("--role", "a" * 64), "invalid role name"),
        (("--role", "public"), "reserved"),
        (("--role", "pg_monitor"), "reserved"),
    ],
)
@pytest.mark.django_db  # the system checks run by manage.py ask SQLite about JSON support
def test_missing_or_invalid_role_is_a_one_line_error(capsys, args, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("db_grants", *args)
    code, out, err = run(capsys, "db_grants", *args)
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and message in err


@on_sqlite
@pytest.mark.django_db
def test_on_sqlite_it_says_it_is_for_postgresql(capsys):
    code, out, err = run(capsys, "db_grants", "--role", "app")
    assert code == 1 and out == ""
    assert err.strip() == "CommandError: db_grants is for PostgreSQL; database 'default' is sqlite"
    with pytest.raises(CommandError, match="for PostgreSQL"):
        call_command("db_grants", "--role", "app", "--apply")


# --- the printed SQL (PostgreSQL) ----------------------------------------------------------------------


@requires_postgres
@pytest.mark.django_db
def test_printed_sql_grants_every_model_table_and_only_select_insert_on_the_audit_table():
    sql = grants("--role", "app")
    lines = sql.strip().splitlines()
    tables = granted(sql)
    assert set(tables) == model_tables()
    assert {"flags_flag", AUDIT, "auth_user_groups", "django_session"} <= set(tables)
    assert tables.pop(AUDIT) == {"SELECT", "INSERT"}
    assert all(privileges == {"SELECT", "INSERT", "UPDATE", "DELETE"} for privileges in tables.values())
    # Nothing that changes the schema, bypasses the trigger or hands over ownership.
    assert not re.search(r"TRUNCATE|REFERENCES|TRIGGER|OWNER|CREATE|GRANT ALL|WITH GRANT OPTION", sql)
    # Each grant follows a REVOKE ALL of the same object, so re-running starts from nothing.
    for i, line in enumerate(lines):
        if line.startswith("GRANT "):
            obj = line.split(" ON ", 1)[1].rsplit(" TO ", 1)[0]
            assert lines[i - 1] == f'REVOKE ALL ON {obj} FROM "app";'
    assert 'GRANT USAGE ON SEQUENCE "flags_auditentry_id_seq" TO "app";' in lines
    assert 'GRANT USAGE ON SCHEMA "public" TO "app";' in lines
    assert all(line.endswith(";") for line in lines)


@requires_postgres
@pytest.mark.django_db
def test_superuser_or_owner_roles_and_unknown_roles_with_apply_are_refused():
    with pytest.raises(CommandError, match="role 'nosuch_" + ".*does not exist"):
        grants("--role", f"nosuch_{uuid.uuid4().hex[:8]}", "--apply")
    assert "GRANT" in grants("--role", f"nosuch_{uuid.uuid4().hex[:8]}")  # printing needs no role yet
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        (owner,) = cursor.fetchone()
    with pytest.raises(CommandError, match="is a superuser"):
        grants("--role", owner, "--apply")


# --- the grants in force (PostgreSQL) ------------------------------------------------------------------


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


@pytest.fixture
def app_role(transactional_db):
    name = f"test_app_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {quote(name)} NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
    yield name
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
        cursor.execute(f"DROP OWNED BY {quote(name)}")
        cursor.execute(f"DROP ROLE {quote(name)}")


@contextlib.contextmanager
def acting_as(role: str):
    # A fresh session: a temporary table left by an earlier test as the superuser would not be the role's.
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {quote(role)}")
        cursor.execute("SELECT current_user")
        assert cursor.fetchone()[0] == role
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")


def refused(statement: str) -> str:
    with pytest.raises(DatabaseError) as info, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    return str(info.value)


def can(role: str, table: str, privilege: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT has_table_privilege(%s, %s, %s)", [role, quote(table), privilege])
        return cursor.fetchone()[0]


@pytest.fixture
def no_public_temp(transactional_db):
    """A hardened database: PUBLIC may not create temporary tables, so the role needs its own grant."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        database = quote(cursor.fetchone()[0])
        cursor.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC")
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT TEMPORARY ON DATABASE {database} TO PUBLIC")


@requires_postgres
def test_the_app_role_runs_the_app_but_cannot_rewrite_or_empty_the_audit_log(app_role, make_flag, no_public_temp):
    flag = make_flag("guarded")
    assert "applied" in grants("--role", app_role, "--apply")
    with acting_as(app_role):
        # What the app does: read, change an ordinary table, add audit entries, ingest through a temp table.
        changed = services.flag_set_rollout(flag="guarded", percentage=25, enabled=True, actor=Actor.system("t"),
                                            source=Source.CLI, reason="as the app role")
        assert changed.version == 2
        AuditEntry.objects.create(actor_kind="system", actor="t", source=Source.CLI, flag=flag, flag_key="guarded",
                                  action="note", flag_version=2, reason="direct insert")
        assert AuditEntry.objects.filter(flag=flag).count() == 3
        Flag.objects.filter(pk=flag.pk).update(description="updated as the app role")
        when = timezone.now() - timedelta(minutes=5)
        assert monitoring.ingest([record(id="g1", occurred_at=at(when))]).accepted == 1
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM django_session WHERE expire_date < now()")

        # What it must not do to the audit log: permission errors, not the trigger's "append-only".
        for statement in ("UPDATE flags_auditentry SET reason = 'rewritten'", "DELETE FROM flags_auditentry",
                          "TRUNCATE flags_auditentry", "TRUNCATE flags_auditentry CASCADE"):
            assert f"permission denied for table {AUDIT}" in refused(statement), statement
        for statement in (f"ALTER TABLE {AUDIT} DISABLE TRIGGER flags_auditentry_append_only",
                          f"ALTER TABLE {AUDIT} DISABLE TRIGGER ALL",
                          f"DROP TRIGGER flags_auditentry_append_only ON {AUDIT}",
                          f"ALTER TABLE {AUDIT} OWNER TO {quote(app_role)}"):
            assert re.search(f"must be owner of (table|relation) {AUDIT}", refused(statement)), statement
        assert "permission denied for table flags_flag" in refused("TRUNCATE flags_flag CASCADE")
        assert "permission denied for schema" in refused("CREATE TABLE grants_probe (i int)")
        assert "permission denied" in refused("SET session_replication_role = replica")

    flag.refresh_from_db()
    assert flag.description == "updated as the app role" and flag.rollout_percentage == 25
    assert ExecutionRecord.objects.filter(client_id="g1").count() == 1
    reasons = sorted(AuditEntry.objects.filter(flag=flag).values_list("reason", flat=True))
    assert reasons == ["", "as the app role", "direct insert"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'flags_auditentry_append_only'")
        assert cursor.fetchone()[0] == "O"  # still enabled


@requires_postgres
def test_reapplying_revokes_extra_privileges_granted_by_hand(app_role):
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT ALL ON {AUDIT} TO {quote(app_role)}")
        cursor.execute(f"GRANT TRUNCATE, TRIGGER ON flags_flag TO {quote(app_role)}")
    assert can(app_role, AUDIT, "TRUNCATE") and can(app_role, "flags_flag", "TRIGGER")

    first = grants("--role", app_role, "--apply")
    assert grants("--role", app_role, "--apply") == first
    for privilege in ("UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
        assert not can(app_role, AUDIT, privilege), privilege
    assert can(app_role, AUDIT, "INSERT") and can(app_role, AUDIT, "SELECT")
    assert not can(app_role, "flags_flag", "TRUNCATE") and not can(app_role, "flags_flag", "TRIGGER")
    assert can(app_role, "flags_flag", "UPDATE")
    with acting_as(app_role):
        assert f"permission denied for table {AUDIT}" in refused(f"TRUNCATE {AUDIT}")


@requires_postgres
def test_apply_refuses_and_changes_nothing_when_public_holds_more(app_role):
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT UPDATE ON {AUDIT} TO PUBLIC")
    try:
        with pytest.raises(CommandError, match=f"{AUDIT}: UPDATE held"):
            grants("--role", app_role, "--apply")
        assert not can(app_role, "flags_flag", "SELECT")  # rolled back: nothing granted
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"REVOKE UPDATE ON {AUDIT} FROM PUBLIC")


@requires_postgres
def test_apply_refuses_when_public_may_create_in_the_schema(app_role):
    # PostgreSQL before 15 let PUBLIC create tables in "public": the app role must not be able to.
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = quote(cursor.fetchone()[0])
        cursor.execute(f"GRANT CREATE ON SCHEMA {schema} TO PUBLIC")
    try:
        with pytest.raises(CommandError, match="schema public: CREATE held"):
            grants("--role", app_role, "--apply")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC")


@requires_postgres
def test_a_member_of_the_owner_role_is_refused(app_role):
    owner = f"test_owner_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {quote(owner)} NOLOGIN")
        cursor.execute(f"ALTER TABLE {AUDIT} OWNER TO {quote(owner)}")
        cursor.execute(f"GRANT {quote(owner)} TO {quote(app_role)}")
    try:
        with pytest.raises(CommandError, match=f"is, or is a member of, the tables' owner \\({owner}\\)"):
            grants("--role", app_role, "--apply")
        with pytest.raises(CommandError, match="the tables' owner"):
            grants("--role", owner, "--apply")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {AUDIT} OWNER TO CURRENT_USER")
            cursor.execute(f"DROP OWNED BY {quote(owner)}")
            cursor.execute(f"DROP ROLE {quote(owner)}")
