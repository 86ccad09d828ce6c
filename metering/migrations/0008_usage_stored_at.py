"""When each record reached the ledger: billing bills usage by arrival (docs/billing.md, "Late
usage"), so a record stored after its month was closed goes on the next invoice.

The column is added without a default first, so the partitions are not rewritten and the
records already stored keep null ("arrived before billing looked at arrivals"); then new rows
get `clock_timestamp()`, read when the row is inserted (not when its transaction began), so a
writer that waited for billing's lock on the ledger stores a time after billing's cutoff. The
meter inserts in arrival order, so a BRIN index finds the records stored since any instant.
"""

from django.db import migrations, models

FORWARD = """
ALTER TABLE metering_usagerecord ADD COLUMN stored_at timestamp with time zone NULL;
ALTER TABLE metering_usagerecord ALTER COLUMN stored_at SET DEFAULT clock_timestamp();
CREATE INDEX metering_usagerecord_stored_brin ON metering_usagerecord
    USING brin (stored_at) WITH (autosummarize = on);
"""
REVERSE = """
DROP INDEX metering_usagerecord_stored_brin;
ALTER TABLE metering_usagerecord DROP COLUMN stored_at;
"""


class Migration(migrations.Migration):
    dependencies = [("metering", "0007_usage_anomaly_quarantine")]

    operations = [
        migrations.RunSQL(
            FORWARD,
            REVERSE,
            state_operations=[
                migrations.AddField(
                    model_name="usagerecord",
                    name="stored_at",
                    field=models.DateTimeField(
                        db_default=models.Func(
                            function="clock_timestamp", output_field=models.DateTimeField()
                        ),
                        null=True,
                    ),
                )
            ],
        )
    ]
