"""Which project each request was made in: the project of its key, carried by the gateway from
now on and filled in here for the records already stored.

A key's project never changes, so a stored record's project is its key's. Records whose key
was deleted before projects existed keep null (their account's usage still counts them).
"""

from django.db import migrations, models

FORWARD = """
ALTER TABLE metering_usagerecord ADD COLUMN project_id bigint NULL;
UPDATE metering_usagerecord u SET project_id = k.project_id
FROM customers_apikey k WHERE k.id = u.api_key_id;
"""
REVERSE = "ALTER TABLE metering_usagerecord DROP COLUMN project_id;"


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0008_usage_stored_at"),
        ("customers", "0002_projects_members"),
    ]

    operations = [
        migrations.RunSQL(
            FORWARD,
            REVERSE,
            state_operations=[
                migrations.AddField(
                    model_name="usagerecord",
                    name="project_id",
                    field=models.BigIntegerField(null=True),
                )
            ],
        )
    ]
