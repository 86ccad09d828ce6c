"""Staff tokens get scopes. Tokens issued before could do everything their user could, so
they keep every scope (their user's model permissions now bound them); new ones are read-only
unless issued with others."""

import django.contrib.postgres.fields
from django.db import migrations, models

import console.models


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="stafftoken",
            name="scopes",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.CharField(
                    choices=[
                        ("read", "read: every GET of the management API"),
                        ("keys", "keys: issue, rotate and revoke API keys"),
                        ("billing", "billing: accounts, price books and prices, invoices"),
                        ("fleet", "fleet: tiers and backends"),
                    ],
                    max_length=16,
                ),
                blank=True,
                default=console.models.scopes_all,
                size=None,
            ),
        ),
        migrations.AlterField(
            model_name="stafftoken",
            name="scopes",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.CharField(
                    choices=[
                        ("read", "read: every GET of the management API"),
                        ("keys", "keys: issue, rotate and revoke API keys"),
                        ("billing", "billing: accounts, price books and prices, invoices"),
                        ("fleet", "fleet: tiers and backends"),
                    ],
                    max_length=16,
                ),
                blank=True,
                default=console.models.scopes_read_only,
                size=None,
            ),
        ),
    ]
