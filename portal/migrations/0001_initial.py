from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="SentMail",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("sent_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("from_email", models.CharField(max_length=254)),
                ("to", models.TextField()),
                ("subject", models.CharField(max_length=998)),
                ("body", models.TextField()),
            ],
            options={
                "verbose_name": "sent mail",
                "verbose_name_plural": "sent mail",
                "ordering": ["-sent_at", "-id"],
            },
        ),
    ]
