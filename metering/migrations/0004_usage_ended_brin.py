from django.db import migrations

# Energy attribution looks for the requests that ended after an interval began. The meter
# inserts records as requests end, so ended_at follows the physical order within each
# partition and a BRIN index narrows that search to the last few block ranges.
CREATE_SQL = (
    "CREATE INDEX metering_usagerecord_ended_brin ON metering_usagerecord "
    "USING brin (ended_at) WITH (autosummarize = on)"
)
DROP_SQL = "DROP INDEX metering_usagerecord_ended_brin"


class Migration(migrations.Migration):
    dependencies = [("metering", "0003_energy")]

    operations = [migrations.RunSQL(CREATE_SQL, DROP_SQL)]
