"""The dashboard's two groups: viewers see everything, managers also change rollouts, switches and lists."""

from django.db import migrations

VIEW = ["view_flag", "view_useroverride", "view_auditentry"]
MANAGE = [*VIEW, "change_flag", "add_useroverride", "change_useroverride", "delete_useroverride"]


def create_groups(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in (("Rollout viewers", VIEW), ("Rollout managers", MANAGE)):
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="flags", codename__in=codenames))


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["Rollout viewers", "Rollout managers"]).delete()


class Migration(migrations.Migration):
    dependencies = [("flags", "0004_config_stamp_row"), ("auth", "0012_alter_user_first_name_max_length"),
                    ("contenttypes", "0002_remove_content_type_name")]

    operations = [migrations.RunPython(create_groups, remove_groups)]
