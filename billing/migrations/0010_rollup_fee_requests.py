"""The rollups count the requests that pay a request fee, so the month's close reads its
invoices from the rollups instead of the ledger (docs/billing.md, "Rollups").

The rollups built before this have no such count: their watermarks are dropped, so the next
run rebuilds every hour from the ledger (as a first run does), with the arrivals it then
knows. The close runs the rollups itself before it reads them.
"""

from django.db import migrations, models

FORWARD = "DELETE FROM billing_jobrun WHERE job IN ('rollups', 'rollups.arrivals')"


class Migration(migrations.Migration):
    dependencies = [("billing", "0009_credit_ledger_append_only"), ("metering", "0010_usage_revised_at")]

    operations = [
        migrations.AddField(
            model_name="usagerollup",
            name="fee_requests",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunSQL(FORWARD, migrations.RunSQL.noop),
    ]
