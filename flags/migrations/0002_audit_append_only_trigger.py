"""On PostgreSQL, the database itself refuses UPDATE and DELETE of audit rows.

The model refuses them too, but raw SQL, a shell or another program would not go through the model.
TRUNCATE (what test runs use to empty tables) is a separate statement and stays possible for the
database owner. SQLite gets no trigger: Django's test flush empties tables with DELETE there.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION flags_auditentry_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'flags_auditentry is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS flags_auditentry_append_only ON flags_auditentry;
CREATE TRIGGER flags_auditentry_append_only
    BEFORE UPDATE OR DELETE ON flags_auditentry
    FOR EACH ROW EXECUTE FUNCTION flags_auditentry_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS flags_auditentry_append_only ON flags_auditentry;
DROP FUNCTION IF EXISTS flags_auditentry_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("flags", "0001_initial")]

    operations = [migrations.RunPython(forwards, backwards)]
