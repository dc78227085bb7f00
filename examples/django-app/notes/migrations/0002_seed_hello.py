"""Seed the first note. As a data migration it runs exactly once per database, however
often the container restarts and runs `migrate`."""
from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

SEED_TITLE = "Hello from pybuild"


def seed(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Insert the greeting unless a note with that title already exists."""
    Note = apps.get_model("notes", "Note")
    Note.objects.get_or_create(title=SEED_TITLE)


def unseed(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Reverse of `seed`, so `migrate notes 0001` works."""
    apps.get_model("notes", "Note").objects.filter(title=SEED_TITLE).delete()


class Migration(migrations.Migration):

    dependencies = [("notes", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
