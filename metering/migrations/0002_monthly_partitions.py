from django.db import migrations
from django.utils import timezone


def create_partitions(apps, schema_editor):
    from metering.services import usage_partitions_ensure

    usage_partitions_ensure(today=timezone.now().date())


class Migration(migrations.Migration):
    dependencies = [("metering", "0001_initial")]

    # Dropping the parent table (0001's reverse) drops these partitions with it.
    operations = [migrations.RunPython(create_partitions, migrations.RunPython.noop)]
