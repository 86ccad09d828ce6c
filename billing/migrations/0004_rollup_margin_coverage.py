"""Coverage beside the rollups and margins: measured and costed tokens, unpriced usage.

Ratios to energy and cost (tokens per kWh, cost per 1M tokens) are computed over the usage
whose energy was measured and whose backend had a cost model, and the usage without a price
is shown as unpriced (docs/billing.md, "Coverage"). Rows made before this migration count 0
measured tokens, so their ratios read n/a until `billing.services.rollups_rebuild` and the
next margins run redo their hours.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0003_invoice_lines_insertable'),
    ]

    operations = [
        migrations.AddField(
            model_name='margin',
            name='costed_measured_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='margin',
            name='costed_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='margin',
            name='measured_requests',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='margin',
            name='measured_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='margin',
            name='requests',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='margin',
            name='unpriced_cost',
            field=models.DecimalField(decimal_places=12, default=0, max_digits=28),
        ),
        migrations.AddField(
            model_name='margin',
            name='unpriced_requests',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='margin',
            name='unpriced_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerollup',
            name='costed_measured_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerollup',
            name='costed_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerollup',
            name='measured_requests',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerollup',
            name='measured_tokens',
            field=models.BigIntegerField(default=0),
        ),
    ]
