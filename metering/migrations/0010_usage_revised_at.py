"""When a stored record was last replaced, and an index of energy intervals by when they were
attributed (billing's rollups find what changed since their last run by both).

A record's `revised_at`: a `gateway_lost` guess corrected by the request's
final record keeps the guess's arrival (`stored_at`), so billing's incremental rollups find
the hours whose records changed by this stamp (docs/billing.md, "Rollups").

Null for every record never corrected, and added without a default, so the partitions are not
rewritten; a partial index holds the few corrected records only. Stamped with
`clock_timestamp()` by the correcting INSERT ... ON CONFLICT, as `stored_at` is, so a correction
committed after billing's cutoff (metering.services.arrivals_cutoff) carries a later stamp.
"""

from django.db import migrations, models

FORWARD = """
ALTER TABLE metering_usagerecord ADD COLUMN revised_at timestamp with time zone NULL;
CREATE INDEX metering_usagerecord_revised ON metering_usagerecord (revised_at)
    WHERE revised_at IS NOT NULL;
"""
REVERSE = """
DROP INDEX metering_usagerecord_revised;
ALTER TABLE metering_usagerecord DROP COLUMN revised_at;
"""


class Migration(migrations.Migration):
    dependencies = [("metering", "0009_usage_project")]

    operations = [
        migrations.RunSQL(
            FORWARD,
            REVERSE,
            state_operations=[
                migrations.AddField(
                    model_name="usagerecord",
                    name="revised_at",
                    field=models.DateTimeField(null=True),
                )
            ],
        ),
        migrations.AddIndex(
            model_name="energyinterval",
            index=models.Index(fields=["attributed_at"], name="energyinterval_attributed"),
        ),
    ]
