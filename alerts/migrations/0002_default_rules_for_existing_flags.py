from django.db import migrations


def add_rules(apps, schema_editor):
    from alerts.models import DEFAULT_RULES

    Flag = apps.get_model("flags", "Flag")
    AlertRule = apps.get_model("alerts", "AlertRule")
    for flag in Flag.objects.all():
        if not AlertRule.objects.filter(flag=flag).exists():
            AlertRule.objects.bulk_create([AlertRule(flag=flag, **rule) for rule in DEFAULT_RULES])


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial"), ("flags", "0005_rollout_groups")]

    operations = [migrations.RunPython(add_rules, migrations.RunPython.noop)]
