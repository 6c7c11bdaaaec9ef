from django.db import migrations


def create_row(apps, schema_editor):
    apps.get_model("flags", "ConfigStamp").objects.get_or_create(pk=1, defaults={"version": 1})


class Migration(migrations.Migration):
    dependencies = [("flags", "0003_config_stamp")]

    operations = [migrations.RunPython(create_row, migrations.RunPython.noop)]
