"""The project in billing: rollups keyed by project, margins along a project dimension, invoice
lines naming their project, and project budgets' alerts. Nothing is lost:

- Rollups get the project of their key, which is their records' project (a key's project never
  changes: metering/0009 filled the ledger the same way), so the rows equal a recompute.
- Margins are derived from the rollups: the margins' watermark goes back to the first rollup,
  so the next margins run rebuilds every month with its project rows.
- Invoice lines get a nullable column with no default: adding it rewrites no row and fires no
  trigger, so sealed invoices stay as they were (their lines name no project).
"""

import django.db.models.deletion
from django.db import migrations, models

ROLLUP_PROJECTS = """
UPDATE billing_usagerollup r SET project_id = k.project_id
FROM customers_apikey k WHERE k.id = r.api_key_id AND r.account_id <> 0;
"""
MARGINS_REDO = """
UPDATE billing_jobrun SET watermark = (SELECT min(bucket) FROM billing_usagerollup)
WHERE job = 'margins' AND EXISTS (SELECT FROM billing_usagerollup);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_seal"),
        ("catalogue", "0003_seal"),
        ("customers", "0002_projects_members"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectBudgetAlert",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("period_start", models.DateTimeField()),
                ("percent", models.PositiveSmallIntegerField()),
                ("spent", models.DecimalField(decimal_places=12, max_digits=28)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.RemoveConstraint(
            model_name="usagerollup",
            name="usagerollup_one_per_bucket",
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="project",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="customers.project",
            ),
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="project_id",
            field=models.BigIntegerField(null=True),
        ),
        migrations.RunSQL(ROLLUP_PROJECTS, migrations.RunSQL.noop),
        migrations.RunSQL(MARGINS_REDO, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="margin",
            name="dimension",
            field=models.CharField(
                choices=[
                    ("tier", "Tier"),
                    ("model", "Model"),
                    ("backend", "Backend"),
                    ("account", "Account"),
                    ("project", "Project"),
                ],
                max_length=8,
            ),
        ),
        migrations.AddIndex(
            model_name="usagerollup",
            index=models.Index(
                fields=["project_id", "grain", "bucket"], name="billing_usa_project_feae1e_idx"
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerollup",
            constraint=models.UniqueConstraint(
                fields=(
                    "grain",
                    "bucket",
                    "account_id",
                    "project_id",
                    "api_key_id",
                    "tier",
                    "model",
                    "backend",
                    "price_book",
                ),
                name="usagerollup_one_per_bucket",
                nulls_distinct=False,
            ),
        ),
        migrations.AddField(
            model_name="projectbudgetalert",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="budget_alerts",
                to="customers.project",
            ),
        ),
        migrations.AddConstraint(
            model_name="projectbudgetalert",
            constraint=models.UniqueConstraint(
                fields=("project", "period_start", "percent"), name="projectbudgetalert_once"
            ),
        ),
    ]
