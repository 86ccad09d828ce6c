"""The rollups' (grain, bucket) index goes: the unique constraint's index begins with the same
two columns and serves the same scans, and every rollup row written paid for both (a month's
rebuild writes 1.6M rows at 10M records)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("billing", "0011_lines_sealed_per_statement")]

    operations = [
        migrations.RemoveIndex(model_name="usagerollup", name="billing_usa_grain_1f0cd5_idx"),
    ]
